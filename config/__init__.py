"""Tollway's Django project package.

It is called ``config`` and not ``platform``: a top-level ``platform`` package would
shadow Python's standard-library module of that name, which ``uuid`` imports, and
Django would crash at start.
"""

# Celery's app, loaded whenever Django is, so that a task sent from a web process
# (``shared_task.delay``) goes to the configured broker, not to Celery's default one.
from config.celery import app as celery_app

__all__ = ["celery_app"]

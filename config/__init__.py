"""Tollway's Django project package.

It is called ``config`` and not ``platform``: a top-level ``platform`` package would
shadow Python's standard-library module of that name, which ``uuid`` imports, and
Django would crash at start.
"""

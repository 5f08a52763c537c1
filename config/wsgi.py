"""WSGI entry point: ``gunicorn -c config/gunicorn.py config.wsgi``.

Two Django handlers share the process and the URLconf. A call to the API that carries a
key (an ``Authorization`` header) never uses a session, a login, messages or a CSRF
cookie, so it runs through ``API_MIDDLEWARE``, a short chain. Everything else, the pages,
the admin and the playground's cookie-authenticated calls, gets the full ``MIDDLEWARE``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

import django
from django.conf import settings
from django.core.handlers.wsgi import WSGIHandler

from config import lifecycle

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django.setup(set_prefix=False)

API_PREFIXES = ("/v1/", "/api/v1/")


class KeyedApiHandler(WSGIHandler):
    """Django's handler with ``settings.API_MIDDLEWARE`` in place of ``MIDDLEWARE``."""

    def load_middleware(self, is_async: bool = False) -> None:
        # BaseHandler reads settings.MIDDLEWARE; swap it only while the chain is built,
        # once, at import, before any request.
        full = settings.MIDDLEWARE
        settings.MIDDLEWARE = settings.API_MIDDLEWARE
        try:
            super().load_middleware(is_async)
        finally:
            settings.MIDDLEWARE = full


pages = WSGIHandler()
keyed_api = KeyedApiHandler()


def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "")
    if lifecycle.draining() and path.startswith(API_PREFIXES):
        return lifecycle.draining_refusal(start_response)  # SIGTERM: no new calls here
    keyed = "HTTP_AUTHORIZATION" in environ and path.startswith(API_PREFIXES)
    return (keyed_api if keyed else pages)(environ, start_response)

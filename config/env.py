"""The one place Tollway reads its environment.

Every setting that comes from outside goes through :class:`Env`, so a missing or
malformed value fails at start with a message that names the variable and the fix,
never later on a request.
"""

from __future__ import annotations

import builtins
import os
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class Env:
    """Typed reads of environment variables.

    ``secret()`` is for values that must never have a built-in default in production:
    with DEBUG off, a missing secret stops the process at start.
    """

    def __init__(self, environ: Mapping[builtins.str, builtins.str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ

    def has(self, name: builtins.str) -> bool:
        return bool(self._environ.get(name, "").strip())

    def str(self, name: builtins.str, default: builtins.str = "") -> str:
        value = self._environ.get(name)
        return default if value is None or value.strip() == "" else value.strip()

    def bool(self, name: builtins.str, default: builtins.bool = False) -> bool:
        raw = self._environ.get(name)
        if raw is None:
            return default
        value = raw.strip().lower()
        if value in _TRUE:
            return True
        if value in _FALSE:
            return False
        raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean: use 1 or 0.")

    def int(self, name: builtins.str, default: builtins.int) -> int:
        raw = self._environ.get(name)
        if raw is None or raw.strip() == "":
            return default
        try:
            return int(raw)
        except ValueError:
            raise ImproperlyConfigured(f"{name}={raw!r} is not a whole number.") from None

    def float(self, name: builtins.str, default: builtins.float) -> float:
        raw = self._environ.get(name)
        if raw is None or raw.strip() == "":
            return default
        try:
            return float(raw)
        except ValueError:
            raise ImproperlyConfigured(f"{name}={raw!r} is not a number.") from None

    def decimal(self, name: builtins.str, default: Decimal | None = None) -> Decimal | None:
        raw = self._environ.get(name)
        if raw is None or raw.strip() == "":
            return default
        try:
            return Decimal(raw.strip())
        except InvalidOperation:
            raise ImproperlyConfigured(f"{name}={raw!r} is not a decimal number.") from None

    def list(
        self, name: builtins.str, default: builtins.list[builtins.str] | None = None
    ) -> builtins.list[builtins.str]:
        raw = self._environ.get(name)
        if raw is None or raw.strip() == "":
            return list(default or [])
        return [item.strip() for item in raw.split(",") if item.strip()]

    def secret(self, name: builtins.str, *, debug: builtins.bool, dev_default: builtins.str) -> builtins.str:
        """A secret: required when DEBUG is off, ``dev_default`` only in DEBUG."""
        value = self.str(name)
        if value:
            return value
        if debug:
            return dev_default
        raise ImproperlyConfigured(
            f"{name} is not set. It has no default when DEBUG is off: "
            f"set {name} in the environment, or DEBUG=1 for local development."
        )


env = Env()

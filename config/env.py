"""The one place Tollway reads its environment.

Every setting that comes from outside goes through :class:`Env`, so a missing or
malformed value fails at start with a message that names the variable and the fix,
never later on a request.

Values come from the process environment, then from the checkout's local development
file, ``var/local.env`` (written by ``make run``; see :mod:`config.localenv`). That file
is skipped when the environment sets ``DEBUG`` off, so production never reads it.
"""

from __future__ import annotations

import builtins
import os
from collections import ChainMap
from collections.abc import Iterable, Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from config.localenv import local_env_path, local_env_read

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class SettingError(ImproperlyConfigured):
    """A setting from the environment is missing or malformed. ``manage.py`` prints its
    message, which names the variable and the fix, without a traceback."""


class Env:
    """Typed reads of environment variables.

    ``secret()`` is for values that must never have a built-in default in production:
    with DEBUG off, a missing secret stops the process at start.

    ``local_file`` names a dotenv file whose values stand under the environment's; it is
    ignored when the environment itself turns DEBUG off.
    """

    def __init__(
        self, environ: Mapping[builtins.str, builtins.str] | None = None, *, local_file: Path | None = None
    ) -> None:
        base = os.environ if environ is None else environ
        self.local_file: Path | None = None
        local = local_env_read(local_file) if local_file is not None else {}
        debug = base.get("DEBUG", "").strip().lower()
        if local and not (debug and debug in _FALSE):
            self._environ: Mapping[builtins.str, builtins.str] = ChainMap(dict(base), local)
            self.local_file = local_file
        else:
            self._environ = base

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
        raise SettingError(f"{name}={raw!r} is not a boolean: use 1 or 0.")

    def int(self, name: builtins.str, default: builtins.int, *, minimum: builtins.int | None = None) -> int:
        """A whole number; below ``minimum`` (a size or a count that cannot be 0) it stops
        the process at start rather than failing every call later."""
        raw = self._environ.get(name)
        if raw is None or raw.strip() == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            raise SettingError(f"{name}={raw!r} is not a whole number.") from None
        if minimum is not None and value < minimum:
            raise SettingError(f"{name}={raw!r} is below its minimum, {minimum}.")
        return value

    def float(self, name: builtins.str, default: builtins.float) -> float:
        raw = self._environ.get(name)
        if raw is None or raw.strip() == "":
            return default
        try:
            return float(raw)
        except ValueError:
            raise SettingError(f"{name}={raw!r} is not a number.") from None

    def decimal(self, name: builtins.str, default: Decimal | None = None) -> Decimal | None:
        raw = self._environ.get(name)
        if raw is None or raw.strip() == "":
            return default
        try:
            return Decimal(raw.strip())
        except InvalidOperation:
            raise SettingError(f"{name}={raw!r} is not a decimal number.") from None

    def list(
        self, name: builtins.str, default: builtins.list[builtins.str] | None = None
    ) -> builtins.list[builtins.str]:
        raw = self._environ.get(name)
        if raw is None or raw.strip() == "":
            return list(default or [])
        return [item.strip() for item in raw.split(",") if item.strip()]

    def choice(self, name: builtins.str, default: builtins.str, choices: Iterable[builtins.str]) -> builtins.str:
        """One of ``choices``, matched without regard to case (``LOG_LEVEL=info`` is
        ``INFO``); returned spelt as in ``choices``. Anything else stops the process."""
        options = list(choices)
        raw = self._environ.get(name)
        if raw is None or raw.strip() == "":
            return default
        for option in options:
            if raw.strip().lower() == option.lower():
                return option
        raise SettingError(f"{name}={raw!r} is not one of: {', '.join(options)}.")

    def file(self, name: builtins.str) -> builtins.str:
        """The path of a file that must exist, or "" when unset: a mistyped path stops the
        process at start, not at the first call that needs the file."""
        value = self.str(name)
        if value and not (os.path.isfile(value) and os.access(value, os.R_OK)):
            raise SettingError(f"{name}={value!r} is not a readable file.")
        return value

    def secret(self, name: builtins.str, *, debug: builtins.bool, dev_default: builtins.str) -> builtins.str:
        """A secret: required when DEBUG is off, ``dev_default`` only in DEBUG."""
        value = self.str(name)
        if value:
            return value
        if debug:
            return dev_default
        raise SettingError(
            f"{name} is not set. It has no default when DEBUG is off: set {name} in the environment. "
            "For local development, run `make run` once: it writes var/local.env (DEBUG=1 and a "
            "generated SECRET_KEY), which every command run from this checkout then reads."
        )


env = Env(local_file=local_env_path())

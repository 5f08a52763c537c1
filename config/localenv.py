"""A checkout's local development settings: ``var/local.env``.

``make run`` writes it once (``python -m config.localenv``), with a generated
``SECRET_KEY`` and ``DEBUG=1``, so that every later command run from the same checkout
(``manage.py createsuperuser``, ``closemonth``, gunicorn, the Celery worker) finds the
same settings ``make run`` used, without exporting anything.

It is read by :mod:`config.env`, under the real environment (a variable set there wins),
and only while the environment does not turn ``DEBUG`` off: a production deployment sets
``DEBUG=0`` or has no such file, and then still needs a real ``SECRET_KEY``. The file
lives under ``var/``, which git and the Docker build both ignore.

Kept free of Django, so it can run before the settings can load.
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from dotenv import dotenv_values

BASE_DIR = Path(__file__).resolve().parent.parent
FILE_NAME = "local.env"

HEADER = """\
# Tollway's local development settings for this checkout, written by `make run`
# (python -m config.localenv). manage.py, gunicorn and Celery started from this checkout
# read them, under the real environment (which wins), unless it sets DEBUG=0.
# Never deploy this file: production sets its own SECRET_KEY and leaves DEBUG off.
"""

# Each setting: the comment written above it, and how its value is made (once).
SETTINGS: dict[str, tuple[str, Callable[[], str]]] = {
    "DEBUG": ("Django's debug mode: local development only.", lambda: "1"),
    "SECRET_KEY": (
        "Signs sessions and password-reset links. Made for this checkout only.",
        lambda: secrets.token_urlsafe(50),
    ),
    "TOLLWAY_LOCAL_WORKER": (
        "`make run` starts a Celery worker and beat beside gunicorn; without Redis their broker is "
        "files under var/celery/.",
        lambda: "1",
    ),
    "EMAIL_BACKEND": ("Mails (password resets) are written to var/mail/, one file per message.", lambda: "file"),
}


def local_env_path(environ: Mapping[str, str] | None = None) -> Path:
    """Where the file lives: ``$TOLLWAY_VAR_DIR/local.env``, by default ``var/local.env``."""
    environ = os.environ if environ is None else environ
    return Path(environ.get("TOLLWAY_VAR_DIR") or BASE_DIR / "var") / FILE_NAME


def local_env_read(path: Path) -> dict[str, str]:
    """The file's settings (empty when there is no file)."""
    if not path.is_file():
        return {}
    return {name: value for name, value in dotenv_values(path, interpolate=False).items() if value is not None}


def local_env_ensure(*, path: Path) -> list[str]:
    """Create the file, or add the settings it lacks. A value already there is never
    changed, so the secret key stays the same across runs. Returns the names added."""
    present = local_env_read(path)
    missing = [name for name in SETTINGS if name not in present]
    if not missing:
        return []
    path.parent.mkdir(parents=True, exist_ok=True)
    text = path.read_text() if path.exists() else HEADER
    if text and not text.endswith("\n"):
        text += "\n"
    for name in missing:
        comment, make = SETTINGS[name]
        text += f"# {comment}\n{name}={make()}\n"
    # Written whole and private: it holds a secret.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    path.chmod(0o600)
    return missing


def main() -> int:
    path = local_env_path()
    added = local_env_ensure(path=path)
    if added:
        print(f"Wrote {', '.join(added)} to {path} (local development settings; see config/localenv.py).")
    return 0


if __name__ == "__main__":
    sys.exit(main())

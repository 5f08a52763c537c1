"""Test settings: the production profile (Postgres and Redis), pointed at local servers.

The URLs come from the environment and default to the local servers, so ``make test``
works on a fresh machine and CI can point elsewhere.
"""

import os

os.environ.setdefault("DATABASE_URL", "postgres://postgres:postgres@127.0.0.1:5432/tollway")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/15")
os.environ.setdefault("SECRET_KEY", "tests-only-secret-key")
os.environ.setdefault("DEBUG", "0")
os.environ.setdefault("TOLLWAY_SECRETS_KEY", "JanixPV2avOcbg0wWyfWMgG59MBN2gr6cYDJJrqrnDk=")  # tests only

from config.settings import *  # noqa: F403

ALLOWED_HOSTS = ["testserver", "127.0.0.1", "localhost"]
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast; tests only
SESSION_COOKIE_SECURE = False
CSRF_COOKIE_SECURE = False
# The shared test Redis serves several test runs on a loaded machine: a 50 ms answer
# timeout would back off Redis (and loosen rate limits) at random. Tests that hang Redis
# on purpose run their own server.
TOLLWAY = {**TOLLWAY, "REDIS_SOCKET_TIMEOUT": 1.0, "REDIS_CONNECT_TIMEOUT": 1.0}  # noqa: F405
# Tests flush Redis before each test; a rebuild after a flush waits this long for other
# workers to re-register their calls in flight. The test process is the only worker.
TOLLWAY = {**TOLLWAY, "REDIS_REREGISTER_SECONDS": 0.1}

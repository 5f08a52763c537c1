"""Django settings for Tollway, read from the environment through ``config.env``.

Two profiles, chosen by what is set:

* **Embedded default** (nothing set): SQLite under ``var/``, Django's local-memory
  cache and eager Celery. ``make run`` uses it with the checkout's ``var/local.env``
  (``config.localenv``): DEBUG, a generated secret key, and a Celery broker on files, for
  the worker and beat it starts beside gunicorn.
* **Production profile**: ``DATABASE_URL`` selects Postgres with Django's psycopg 3
  connection pool; ``REDIS_URL`` selects Redis for the cache, the counters and the
  Celery broker.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dj_database_url
from corsheaders.defaults import default_headers as cors_default_headers

from config.env import SettingError, env
from config.logs import DEFAULT_FLUSH_SECONDS

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env.str("TOLLWAY_VAR_DIR", str(BASE_DIR / "var")))

DEBUG = env.bool("DEBUG", default=False)
SECRET_KEY = env.secret("SECRET_KEY", debug=DEBUG, dev_default="dev-only-insecure-secret-key-do-not-use-in-production")
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"] if DEBUG else [])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "axes",
    "tenants",
    "billing",
    "proxy",
    "batches",
]

MIDDLEWARE = [
    "config.middleware.RequestIdMiddleware",
    "config.middleware.RefuseNulMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: answers a locked-out login with the lockout page.
    "axes.middleware.AxesMiddleware",
]
# Calls to /v1/ that carry a key skip the session, login, CSRF, messages and framing
# layers: they use none of them (config/wsgi.py). CommonMiddleware sets Content-Length.
API_MIDDLEWARE = [
    "config.middleware.RequestIdMiddleware",
    "config.middleware.RefuseNulApiMiddleware",
    "config.middleware.RefuseNulMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
]

# CORS, for browser clients (openai-node or the AI SDK in a page): off unless
# TOLLWAY_CORS_ALLOWED_ORIGINS lists origins ("*" for any). Only the API answers it, and
# only then is django-cors-headers in either middleware chain, so it costs nothing when off.
CORS_ALLOWED_ORIGINS = env.list("TOLLWAY_CORS_ALLOWED_ORIGINS")
CORS_ALLOW_ALL_ORIGINS = CORS_ALLOWED_ORIGINS == ["*"]
if CORS_ALLOW_ALL_ORIGINS:
    CORS_ALLOWED_ORIGINS = []
CORS_URLS_REGEX = r"^/(api/)?v1/"
# The openai SDKs send their x-stainless-* headers from a browser too; the preflight must allow them.
CORS_ALLOW_HEADERS = (
    *cors_default_headers,
    "openai-organization",
    "openai-project",
    "openai-beta",
    "x-tollway-cache",
    "x-stainless-arch",
    "x-stainless-lang",
    "x-stainless-os",
    "x-stainless-package-version",
    "x-stainless-retry-count",
    "x-stainless-runtime",
    "x-stainless-runtime-version",
    "x-stainless-timeout",
    "x-stainless-helper-method",
    "x-stainless-poll-helper",
    "x-stainless-custom-poll-interval",
)
# What a page may read from an answer: the request id, cost, provider, limits and retry advice.
CORS_EXPOSE_HEADERS = (
    "x-request-id",
    "x-tollway-cost",
    "x-tollway-provider",
    "x-tollway-attempts",
    "x-tollway-cache",
    "retry-after",
    "x-should-retry",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
)
CORS_PREFLIGHT_MAX_AGE = 600
if CORS_ALLOWED_ORIGINS or CORS_ALLOW_ALL_ORIGINS:
    INSTALLED_APPS.append("corsheaders")  # its system checks validate the origins at start
    # After the request id (every answer carries one), before anything that may answer.
    MIDDLEWARE.insert(1, "corsheaders.middleware.CorsMiddleware")
    API_MIDDLEWARE.insert(1, "corsheaders.middleware.CorsMiddleware")

ROOT_URLCONF = "config.urls"
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/dashboard/"
LOGOUT_REDIRECT_URL = "/accounts/login/"
# Password-reset mails for dashboard users (Django's own views send them), invoices and
# alerts: over SMTP in
# production; in DEBUG, to files under var/mail/ (one per message), so a local reset works
# with no mail server.
_EMAIL_BACKENDS = {
    "smtp": "django.core.mail.backends.smtp.EmailBackend",
    "file": "django.core.mail.backends.filebased.EmailBackend",
    "console": "django.core.mail.backends.console.EmailBackend",
}
EMAIL_BACKEND = _EMAIL_BACKENDS[env.choice("EMAIL_BACKEND", "file" if DEBUG else "smtp", _EMAIL_BACKENDS)]
EMAIL_FILE_PATH = env.str("EMAIL_FILE_PATH", str(VAR_DIR / "mail"))
EMAIL_HOST = env.str("EMAIL_HOST", "localhost")
EMAIL_PORT = env.int("EMAIL_PORT", 25)
EMAIL_HOST_USER = env.str("EMAIL_HOST_USER")
EMAIL_HOST_PASSWORD = env.str("EMAIL_HOST_PASSWORD")
EMAIL_USE_TLS = env.bool("EMAIL_USE_TLS", False)
EMAIL_TIMEOUT = env.float("EMAIL_TIMEOUT", 10.0)  # a hung mail server costs one short timeout
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", "tollway@localhost")
WSGI_APPLICATION = "config.wsgi.application"
APPEND_SLASH = False

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "config" / "templates"],  # the admin's header and list styles
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -----------------------------------------------------------------------
# Postgres goes through Django's psycopg 3 pool with CONN_MAX_AGE = 0: under gevent
# every greenlet would otherwise open its own server connection (docs/architecture.md, "Worker model").
if env.has("DATABASE_URL"):
    _db: dict[str, Any] = dict(dj_database_url.parse(env.str("DATABASE_URL")))
    if _db["ENGINE"] == "django.db.backends.postgresql":
        _db["CONN_MAX_AGE"] = 0
        _db.setdefault("OPTIONS", {})["pool"] = {
            "min_size": env.int("DB_POOL_MIN_SIZE", 1),
            "max_size": env.int("DB_POOL_MAX_SIZE", 10, minimum=1),
            "timeout": env.float("DB_POOL_TIMEOUT", 10.0),
        }
        # Django turns psycopg's prepared statements off. Its own cursors bind on the
        # client and never prepare; the ledger insert binds on the server, and with this
        # Postgres parses and plans it once per pooled connection, not once per call.
        # Off (DB_PREPARED_STATEMENTS=0) behind a pooler that cannot keep them.
        if env.bool("DB_PREPARED_STATEMENTS", True):
            _db["OPTIONS"]["prepare_threshold"] = 1
        # A transaction pooler (PgBouncer) hands each transaction any server connection,
        # so a cursor cannot outlive its transaction: Django's .iterator() would DECLARE
        # a cursor WITH HOLD on one and FETCH from another. Off, it reads in one go.
        _db["DISABLE_SERVER_SIDE_CURSORS"] = not env.bool("DB_SERVER_SIDE_CURSORS", True)
    DATABASES = {"default": _db}
else:
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(VAR_DIR / "tollway.sqlite3"),
            # gevent greenlets share a worker; wait for SQLite's lock instead of failing.
            "OPTIONS": {"timeout": 20, "transaction_mode": "IMMEDIATE"},
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Cache and Redis ------------------------------------------------------------------
# One Redis client per process (config/redis.py), shared by Django's cache and every
# other Redis user, with short timeouts and one back-off after an outage error.
# Three topologies (docs/deploying/redis.md): one server (REDIS_URL); Sentinel
# (REDIS_SENTINELS, the sentinels' host:port list, and REDIS_SENTINEL_MASTER; REDIS_URL
# then gives only the database number and password); Cluster (REDIS_CLUSTER=1, REDIS_URL
# naming any node).
REDIS_SENTINELS: list[tuple[str, int]] = []
for _sentinel in env.list("REDIS_SENTINELS"):
    _host, _, _port = _sentinel.rpartition(":")
    if not _host or not _port.isdigit():
        raise SettingError(f"REDIS_SENTINELS: {_sentinel!r} is not host:port (e.g. sentinel-1:26379).")
    REDIS_SENTINELS.append((_host, int(_port)))
REDIS_SENTINEL_MASTER = env.str("REDIS_SENTINEL_MASTER", "mymaster")
REDIS_CLUSTER = env.bool("REDIS_CLUSTER", False)
REDIS_URL = env.str("REDIS_URL", f"redis://{REDIS_SENTINEL_MASTER}/0" if REDIS_SENTINELS else "")
if REDIS_SENTINELS and REDIS_CLUSTER:
    raise SettingError("REDIS_SENTINELS and REDIS_CLUSTER are both set: Tollway uses one or the other.")
if REDIS_CLUSTER and not REDIS_URL:
    raise SettingError("REDIS_CLUSTER=1 needs REDIS_URL naming one node of the cluster (redis://node-1:6379/0).")
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "tw:cache",
            "OPTIONS": {
                # The cache answers with config.redis.client(): its pool, timeouts and health.
                "CLIENT_CLASS": "config.redis.CacheClient",
                # A Redis outage degrades the cache to misses (reads go to Postgres), never to a 500.
                "IGNORE_EXCEPTIONS": True,
            },
        }
    }
    DJANGO_REDIS_LOG_IGNORED_EXCEPTIONS = True
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# --- Celery ----------------------------------------------------------------------------
# `make run` starts a Celery worker (with beat) beside gunicorn (config/supervisord.conf);
# var/local.env says so. Without Redis its broker is then a folder of message files that
# gunicorn writes and the worker reads, so scheduled work runs with no server at all.
# Without a worker and without a broker, tasks run eagerly, inside the call that sends them.
_LOCAL_WORKER = env.bool("TOLLWAY_LOCAL_WORKER", False)
if REDIS_CLUSTER and not env.has("CELERY_BROKER_URL"):
    raise SettingError(
        "REDIS_CLUSTER=1: Celery cannot use a Redis Cluster as its broker. Set CELERY_BROKER_URL "
        "to a plain Redis, a Sentinel set (sentinel://host:26379;sentinel://host2:26379) or RabbitMQ."
    )
_redis_broker = REDIS_URL
if REDIS_SENTINELS:
    # Kombu's Sentinel transport: one sentinel:// URL per sentinel, the master's name aside.
    _master = urlsplit(REDIS_URL)
    _auth = _master.netloc.rpartition("@")[0] + "@" if "@" in _master.netloc else ""  # as written: still quoted
    _redis_broker = ";".join(
        f"sentinel://{_auth}{host}:{port}/{_master.path.strip('/') or 0}" for host, port in REDIS_SENTINELS
    )
CELERY_BROKER_URL = env.str(
    "CELERY_BROKER_URL", _redis_broker or ("filesystem://localhost/" if _LOCAL_WORKER else "memory://")
)
CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, Any] = {}
if CELERY_BROKER_URL.startswith("sentinel://"):
    CELERY_BROKER_TRANSPORT_OPTIONS = {"master_name": REDIS_SENTINEL_MASTER}
    if env.has("REDIS_SENTINEL_PASSWORD"):
        CELERY_BROKER_TRANSPORT_OPTIONS["sentinel_kwargs"] = {"password": env.str("REDIS_SENTINEL_PASSWORD")}
CELERY_RESULT_BACKEND = None
CELERY_TASK_ALWAYS_EAGER = not bool(REDIS_URL) and not env.has("CELERY_BROKER_URL") and not _LOCAL_WORKER
if CELERY_BROKER_URL.startswith("filesystem://"):
    _queue = VAR_DIR / "celery" / "queue"
    _queue.mkdir(parents=True, exist_ok=True)
    (VAR_DIR / "celery" / "control").mkdir(exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_queue),
        "data_folder_out": str(_queue),
        "control_folder": str(VAR_DIR / "celery" / "control"),
        "store_processed": False,
    }
CELERY_TASK_EAGER_PROPAGATES = True
# Batch API work has its own queue, so a large batch never holds up the scheduled work;
# `make run`'s worker and `make stack`'s batch worker consume it (batches/tasks.py).
CELERY_TASK_ROUTES = {"batches.*": {"queue": "batches"}}
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULE: dict[str, dict[str, Any]] = {
    "flush-key-last-used": {"task": "tenants.flush_last_used", "schedule": 60.0},
    "sweep-reservations": {"task": "billing.sweep_reservations", "schedule": 60.0},
    "check-deployments": {
        "task": "proxy.check_deployments",
        "schedule": env.float("TOLLWAY_HEALTH_CHECK_SECONDS", 60.0),
    },
    # Billing: each run is idempotent and bounded, so a missed or doubled beat is harmless.
    "usage-rollups": {"task": "billing.rollups", "schedule": 600.0},
    "close-months": {"task": "billing.close_months", "schedule": 3600.0},
    "sweep-invoices": {"task": "billing.sweep_invoices", "schedule": 900.0},
    "monthly-reports": {"task": "billing.monthly_reports", "schedule": 6 * 3600.0},
    # Batches: expire those past their window, and resume those whose worker died.
    "batches-tick": {"task": "batches.tick", "schedule": env.float("TOLLWAY_BATCH_TICK_SECONDS", 30.0)},
    # The ledger's monthly partitions made ahead; old months archived (billing.partitions).
    "ledger-partitions": {"task": "billing.ledger_partitions", "schedule": 3600.0},
    # The Responses API's stored responses past their retention (proxy.responses).
    "expire-responses": {"task": "proxy.expire_responses", "schedule": 3600.0},
}

# --- Auth, i18n, static ---------------------------------------------------------------
# Login throttling (django-axes) for the admin and /accounts/login/: after
# TOLLWAY_LOGIN_FAILURE_LIMIT failed passwords for one user name from one address, that
# login is locked for TOLLWAY_LOGIN_LOCKOUT_MINUTES (429 and a page that says so), the
# right password included. Failures are kept in the database (axes' AccessAttempt); the
# /v1/ API-key path never consults them. The client address is tenants.auth.client_ip's,
# which believes X-Forwarded-For only from TOLLWAY_TRUSTED_PROXIES.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env.int("TOLLWAY_LOGIN_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = timedelta(minutes=env.float("TOLLWAY_LOGIN_LOCKOUT_MINUTES", 15.0))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_CLIENT_IP_CALLABLE = "tenants.auth.client_ip"
AXES_LOCKOUT_TEMPLATE = "tollway/locked_out.html"
AXES_VERBOSE = False
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "/static/"
STATIC_ROOT = Path(env.str("STATIC_ROOT", str(VAR_DIR / "static")))

# --- Batch API files (/v1/files) ----------------------------------------------------------
# Stored through Django's storage API: on the local filesystem under var/files by default,
# in S3-compatible object storage (django-storages) with TOLLWAY_FILES_STORAGE=s3.
_FILES_STORAGE = env.choice("TOLLWAY_FILES_STORAGE", "filesystem", ["filesystem", "s3"])
if _FILES_STORAGE == "s3":
    _batch_files: dict[str, Any] = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": env.str("TOLLWAY_FILES_S3_BUCKET"),
            "endpoint_url": env.str("TOLLWAY_FILES_S3_ENDPOINT_URL") or None,
            "region_name": env.str("TOLLWAY_FILES_S3_REGION") or None,
            "access_key": env.str("TOLLWAY_FILES_S3_ACCESS_KEY_ID") or None,
            "secret_key": env.str("TOLLWAY_FILES_S3_SECRET_ACCESS_KEY") or None,
            "location": env.str("TOLLWAY_FILES_S3_PREFIX", "tollway-files"),
            "default_acl": None,
            "file_overwrite": False,
        },
    }
else:
    _batch_files = {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": env.str("TOLLWAY_FILES_DIR", str(VAR_DIR / "files"))},
    }

# The largest request body the app accepts; nginx's client_max_body_size matches it.
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("TOLLWAY_MAX_BODY_BYTES", 10 * 1024 * 1024)

# --- Security when served over TLS behind nginx ---------------------------------------
if not DEBUG:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", True)
    CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", True)
SECURE_CONTENT_TYPE_NOSNIFF = True

# --- DRF -------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "EXCEPTION_HANDLER": "config.errors.drf_exception_handler",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "UNAUTHENTICATED_USER": None,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Tollway management API",
    "DESCRIPTION": "Manage a tenant's API keys and read its settings. "
    "The inference endpoints follow OpenAI's API reference.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
}

# --- Tollway's own knobs (read through tenants.conf / proxy.conf) ----------------------
TOLLWAY: dict[str, Any] = {
    # Seconds a worker trusts its in-process copy of a key or model before asking the
    # shared cache again: the bound on how long a revocation takes to reach a replica.
    "LOCAL_CACHE_SECONDS": env.float("TOLLWAY_LOCAL_CACHE_SECONDS", 1.0),
    # Seconds the shared (Redis) tier keeps a key or model; writes delete it at once.
    "SHARED_CACHE_SECONDS": env.int("TOLLWAY_SHARED_CACHE_SECONDS", 300),
    # Upstream timeouts (seconds), the defaults for providers that set none of their own:
    # connecting, the first byte of the answer, the idle gap between streamed chunks, and
    # the whole call.
    "UPSTREAM_CONNECT_TIMEOUT": env.float("TOLLWAY_UPSTREAM_CONNECT_TIMEOUT", 5.0),
    "UPSTREAM_FIRST_BYTE_TIMEOUT": env.float("TOLLWAY_UPSTREAM_FIRST_BYTE_TIMEOUT", 120.0),
    "UPSTREAM_IDLE_TIMEOUT": env.float("TOLLWAY_UPSTREAM_IDLE_TIMEOUT", 60.0),
    "UPSTREAM_TOTAL_TIMEOUT": env.float("TOLLWAY_UPSTREAM_TOTAL_TIMEOUT", 600.0),
    # The largest upstream answer, or one event of a stream, a worker reads into memory
    # (decoded); past it the call fails with upstream_bad_response.
    "UPSTREAM_MAX_RESPONSE_BYTES": env.int("TOLLWAY_UPSTREAM_MAX_RESPONSE_BYTES", 256 * 1024 * 1024, minimum=64 * 1024),
    # After a streaming client disconnects, how long to keep reading the upstream for its
    # usage report, so the call is billed from the provider's count, not an estimate.
    "DISCONNECT_DRAIN_SECONDS": env.float("TOLLWAY_DISCONNECT_DRAIN_SECONDS", 30.0),
    # A PEM bundle of CAs trusted for https upstreams beside the public ones (an internal
    # vLLM behind a private CA). Unset: the public CAs only; the system's are never read.
    "UPSTREAM_CA_BUNDLE": env.file("TOLLWAY_UPSTREAM_CA_BUNDLE"),
    "UPSTREAM_MAX_CONNECTIONS": env.int("TOLLWAY_UPSTREAM_MAX_CONNECTIONS", 1000, minimum=1),
    "UPSTREAM_MAX_KEEPALIVE": env.int("TOLLWAY_UPSTREAM_MAX_KEEPALIVE", 1000),
    # Peers whose X-Forwarded-For is believed (nginx). Anyone else's is ignored.
    "TRUSTED_PROXIES": env.list("TOLLWAY_TRUSTED_PROXIES", ["127.0.0.1/32", "::1/128"]),
    # A worker notes a key's last use at most this often (no DB write per request).
    "LAST_USED_THROTTLE_SECONDS": env.float("TOLLWAY_LAST_USED_THROTTLE_SECONDS", 60.0),
    # When Redis is unreachable: "open" lets rate limits pass (logged) and holds budgets
    # through Postgres row locks; "closed" refuses requests with 503 instead.
    "LIMITS_ON_REDIS_ERROR": env.choice("TOLLWAY_LIMITS_ON_REDIS_ERROR", "open", ["open", "closed"]),
    # Redis on the hot path (config/redis.py): how long a command waits for its answer and
    # for a connection, then how long a worker stops asking Redis after a connection error
    # or a timeout (its users take their fallbacks meanwhile); the connection pool per
    # process, and how long a greenlet waits for a free connection in it.
    "REDIS_SOCKET_TIMEOUT": env.float("REDIS_SOCKET_TIMEOUT", 0.25),
    "REDIS_CONNECT_TIMEOUT": env.float("REDIS_CONNECT_TIMEOUT", 0.25),
    "REDIS_BACKOFF_SECONDS": env.float("REDIS_BACKOFF_SECONDS", 1.0),
    "REDIS_MAX_CONNECTIONS": env.int("REDIS_MAX_CONNECTIONS", 100, minimum=1),
    "REDIS_POOL_TIMEOUT": env.float("REDIS_POOL_TIMEOUT", 10.0),
    # The sentinels' own password (Sentinel's requirepass), if they have one.
    "REDIS_SENTINEL_PASSWORD": env.str("REDIS_SENTINEL_PASSWORD"),
    # After Redis loses its memory, how long counter rebuilds wait for every worker to put
    # its calls in flight back (billing.admission.inflight); each worker checks 4 times as often.
    "REDIS_REREGISTER_SECONDS": env.float("TOLLWAY_REDIS_REREGISTER_SECONDS", 1.0),
    # A reservation older than this is taken for a dead worker's and billed by the sweeper.
    "RESERVATION_SECONDS": env.int("TOLLWAY_RESERVATION_SECONDS", 1800),
    # Output reserved for a request without max_tokens, on a model with no cap of its own.
    "DEFAULT_MAX_OUTPUT_TOKENS": env.int("TOLLWAY_DEFAULT_MAX_OUTPUT_TOKENS", 4096),
    # Bounds on what a client controls (proxy.parse, proxy.params, proxy.admit): the most
    # max_tokens a request may ask of a model with no output cap of its own; the most
    # tokens one request may reserve (its prompt estimate plus n x max_tokens); the deepest
    # JSON nesting of a body; the most dimensions an embedding may ask for.
    "MAX_OUTPUT_TOKENS": env.int("TOLLWAY_MAX_OUTPUT_TOKENS", 131072),
    "MAX_REQUEST_TOKENS": env.int("TOLLWAY_MAX_REQUEST_TOKENS", 4 * 1024 * 1024),
    "MAX_JSON_DEPTH": env.int("TOLLWAY_MAX_JSON_DEPTH", 128),
    "MAX_EMBEDDING_DIMENSIONS": env.int("TOLLWAY_MAX_EMBEDDING_DIMENSIONS", 8192),
    # Where each worker spools the ledger rows Postgres could not take (billing.spool), to
    # write them once it answers. Keep it on a volume that outlives the container.
    "SPOOL_DIR": env.str("TOLLWAY_SPOOL_DIR", str(VAR_DIR / "spool")),
    # Who may read /metrics (nginx restricts it too).
    "METRICS_ALLOWED_NETWORKS": env.list(
        "TOLLWAY_METRICS_ALLOWED_NETWORKS", ["127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]
    ),
    # Hours after a billing month ends during which late usage still lands on its draft
    # invoice; then the draft is finalised (numbered, immutable).
    "INVOICE_GRACE_HOURS": env.int("TOLLWAY_INVOICE_GRACE_HOURS", 72),
    # Who issues the invoices: only the first default of the issuer (legal name, then address
    # lines), which finance then sets in the admin (Billing > Issuer).
    "INVOICE_ISSUER": env.list("TOLLWAY_INVOICE_ISSUER", ["Tollway", "AI API gateway"]),
    # Invoice e-mails and billing webhooks: attempts in all, the backoff between them
    # (exponential from the base, with jitter, capped), and each webhook POST's timeout.
    "DELIVERY_MAX_ATTEMPTS": env.int("TOLLWAY_DELIVERY_MAX_ATTEMPTS", 8),
    "DELIVERY_RETRY_BASE_SECONDS": env.float("TOLLWAY_DELIVERY_RETRY_BASE_SECONDS", 30.0),
    "DELIVERY_RETRY_MAX_SECONDS": env.float("TOLLWAY_DELIVERY_RETRY_MAX_SECONDS", 3600.0),
    "WEBHOOK_TIMEOUT_SECONDS": env.float("TOLLWAY_WEBHOOK_TIMEOUT_SECONDS", 10.0),
    # A tenant's webhook URL may not resolve to a private or loopback address (SSRF) unless this is on.
    "WEBHOOK_ALLOW_PRIVATE": env.bool("TOLLWAY_WEBHOOK_ALLOW_PRIVATE", False),
    # Spend alerts: the default thresholds, in percent of the monthly budget.
    "SPEND_ALERT_THRESHOLDS": [int(x) for x in env.list("TOLLWAY_SPEND_ALERT_THRESHOLDS", ["50", "80", "100"])],
    # The built-in mock provider's pacing (milliseconds).
    "MOCK_LATENCY_MS": env.int("TOLLWAY_MOCK_LATENCY_MS", 0),
    "MOCK_CHUNK_DELAY_MS": env.int("TOLLWAY_MOCK_CHUNK_DELAY_MS", 0),
    # Retries before the first byte (proxy.attempts): at most this many upstream attempts
    # per client request, all within this many seconds; full-jitter exponential backoff
    # from the base, capped; an upstream Retry-After is waited, up to its cap.
    "RETRY_MAX_ATTEMPTS": env.int("TOLLWAY_RETRY_MAX_ATTEMPTS", 3, minimum=1),
    "RETRY_BUDGET_SECONDS": env.float("TOLLWAY_RETRY_BUDGET_SECONDS", 30.0),
    "RETRY_BACKOFF_BASE_SECONDS": env.float("TOLLWAY_RETRY_BACKOFF_BASE_SECONDS", 0.25),
    "RETRY_BACKOFF_MAX_SECONDS": env.float("TOLLWAY_RETRY_BACKOFF_MAX_SECONDS", 4.0),
    "RETRY_AFTER_MAX_SECONDS": env.float("TOLLWAY_RETRY_AFTER_MAX_SECONDS", 10.0),
    # Circuit breaker (proxy.circuit): this many consecutive failures eject a deployment
    # for the base time multiplied by its ejection count (up to the max); then one probe.
    "CIRCUIT_FAILURES": env.int("TOLLWAY_CIRCUIT_FAILURES", 5),
    "CIRCUIT_EJECT_SECONDS": env.float("TOLLWAY_CIRCUIT_EJECT_SECONDS", 30.0),
    "CIRCUIT_EJECT_MAX_SECONDS": env.float("TOLLWAY_CIRCUIT_EJECT_MAX_SECONDS", 600.0),
    # How long a deployment read as clean is trusted without asking Redis again.
    "CIRCUIT_READ_CACHE_SECONDS": env.float("TOLLWAY_CIRCUIT_READ_CACHE_SECONDS", 1.0),
    # Response cache (proxy.respcache): seconds an answer is kept, and the share of its
    # price a hit is billed at (0 = free). Per tenant this belongs on the billing Plan.
    "RESPONSE_CACHE_SECONDS": env.int("TOLLWAY_RESPONSE_CACHE_SECONDS", 3600),
    # The Responses API's stored responses (proxy.responses.store): days kept, as at OpenAI.
    "RESPONSES_RETENTION_DAYS": env.int("TOLLWAY_RESPONSES_RETENTION_DAYS", 30),
    "CACHE_HIT_PRICE_FACTOR": env.str("TOLLWAY_CACHE_HIT_PRICE_FACTOR", "0"),
    # The Batch API (batches/): the largest file and the most requests in one, as OpenAI's;
    # how many lines of one tenant run at once, and how many on one deployment, across every
    # worker; lines a task runs before it hands the worker back (and re-enqueues itself);
    # seconds a worker's claim on a batch lasts without renewal (then another resumes it).
    "BATCH_MAX_FILE_BYTES": env.int("TOLLWAY_BATCH_MAX_FILE_BYTES", 200 * 1024 * 1024),
    "BATCH_MAX_REQUESTS": env.int("TOLLWAY_BATCH_MAX_REQUESTS", 50_000),
    "BATCH_TENANT_CONCURRENCY": env.int("TOLLWAY_BATCH_TENANT_CONCURRENCY", 4, minimum=1),
    "BATCH_DEPLOYMENT_CONCURRENCY": env.int("TOLLWAY_BATCH_DEPLOYMENT_CONCURRENCY", 8, minimum=1),
    "BATCH_CHUNK_LINES": env.int("TOLLWAY_BATCH_CHUNK_LINES", 200, minimum=1),
    "BATCH_LEASE_SECONDS": env.float("TOLLWAY_BATCH_LEASE_SECONDS", 120.0),
    # Active health checks (proxy.tasks.check_deployments): the beat interval, and the
    # timeout of each check request.
    "HEALTH_CHECK_SECONDS": env.float("TOLLWAY_HEALTH_CHECK_SECONDS", 60.0),
    "HEALTH_CHECK_TIMEOUT": env.float("TOLLWAY_HEALTH_CHECK_TIMEOUT", 10.0),
    # The ledger's monthly partitions (Postgres; billing.partitions): months made ahead of
    # the current one, and how many months of rows to keep in Postgres (0: all). Older
    # months are archived to the ledger_archive storage (below), then their partitions dropped.
    "LEDGER_PARTITIONS_AHEAD": env.int("TOLLWAY_LEDGER_PARTITIONS_AHEAD", 3),
    "LEDGER_RETENTION_MONTHS": env.int("TOLLWAY_LEDGER_RETENTION_MONTHS", 0),
}

# --- Storage ---------------------------------------------------------------------------
# ledger_archive: where archived ledger months go (gzip-compressed CSV). A folder by
# default; any Django storage backend otherwise, e.g. django-storages' S3 with
# TOLLWAY_LEDGER_ARCHIVE_BACKEND=storages.backends.s3.S3Storage and its options as JSON in
# TOLLWAY_LEDGER_ARCHIVE_OPTIONS ({"bucket_name": "...", "endpoint_url": "..."}).
_ARCHIVE_BACKEND = env.str("TOLLWAY_LEDGER_ARCHIVE_BACKEND", "django.core.files.storage.FileSystemStorage")
_archive_options: dict[str, Any] = {}
if env.has("TOLLWAY_LEDGER_ARCHIVE_OPTIONS"):
    _archive_options = json.loads(env.str("TOLLWAY_LEDGER_ARCHIVE_OPTIONS"))
elif _ARCHIVE_BACKEND.endswith(".FileSystemStorage"):
    _archive_options = {"location": str(VAR_DIR / "ledger-archive")}
STORAGES: dict[str, dict[str, Any]] = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    "ledger_archive": {"BACKEND": _ARCHIVE_BACKEND, "OPTIONS": _archive_options},
    "batch_files": _batch_files,
}

# --- Logging ---------------------------------------------------------------------------
# JSON lines in production (one object per line, for a log shipper); plain text in DEBUG.
LOG_FORMAT = env.choice("LOG_FORMAT", "plain" if DEBUG else "json", ["plain", "json"])
LOG_LEVEL = env.choice("LOG_LEVEL", "INFO", ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"])
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {
            "()": "pythonjsonlogger.orjson.OrjsonFormatter",  # orjson: one line per request is hot
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
        },
    },
    "handlers": {
        "console": {
            "class": "config.logs.BatchedStreamHandler",  # a write per batch of lines, not per line
            "formatter": LOG_FORMAT,
            "flush_seconds": env.float("TOLLWAY_LOG_FLUSH_SECONDS", DEFAULT_FLUSH_SECONDS),
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django": {"handlers": ["console"], "level": "INFO", "propagate": False},
        # 4xx answers are the client's business and already in the access log.
        "django.request": {"handlers": ["console"], "level": "ERROR", "propagate": False},
        # One line per request (proxy/observe.py); TOLLWAY_REQUEST_LOG=0 silences it.
        "tollway.request": {
            "handlers": ["console"],
            "level": "INFO" if env.bool("TOLLWAY_REQUEST_LOG", True) else "WARNING",
            "propagate": False,
        },
        "httpx": {"level": "WARNING"},
    },
}

# Fernet keys (comma-separated, newest first, for rotation) that encrypt provider
# credentials pasted into the admin. Without one, DEBUG derives a dev key from SECRET_KEY;
# production then refuses to store such credentials (api_key_env still works).
TOLLWAY_SECRETS_KEYS = env.list("TOLLWAY_SECRETS_KEY")

# nginx overwrites X-Request-ID with its own unique $request_id; trust it only there.
TOLLWAY_TRUST_REQUEST_ID = env.bool("TOLLWAY_TRUST_REQUEST_ID", False)

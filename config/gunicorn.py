"""gunicorn configuration, shared by ``make run`` and production.

gunicorn's gevent worker monkey-patches the process before it loads the app, so this
file must not import the app, httpx or psycopg at module level (ARCHITECTURE.md §1).
"""

import multiprocessing
import os

bind = os.environ.get("GUNICORN_BIND") or f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8000')}"
worker_class = "gevent"
workers = int(os.environ.get("WEB_CONCURRENCY") or multiprocessing.cpu_count())
# Concurrent connections (greenlets) per worker: an LLM call holds one for seconds.
worker_connections = int(os.environ.get("GUNICORN_WORKER_CONNECTIONS", "1000"))
# gevent workers heartbeat from their own loop; a long stream does not trip this.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "60"))
# Streams can last minutes: give them time to finish on a graceful restart.
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "120"))
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", "75"))
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", "20000"))
max_requests_jitter = int(os.environ.get("GUNICORN_MAX_REQUESTS_JITTER", "2000"))
wsgi_app = "config.wsgi:application"

accesslog = os.environ.get("GUNICORN_ACCESSLOG", "-") or None
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
access_log_format = (
    '{"time":"%(t)s","request_id":"%({x-request-id}o)s","remote":"%(h)s",'
    '"method":"%(m)s","path":"%(U)s","status":%(s)s,"bytes":%(B)s,'
    '"duration_ms":%(M)s,"user_agent":"%(a)s"}'
)

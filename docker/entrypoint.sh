#!/bin/sh
# The container's roles, one image for all (docker/compose.yaml):
#   migrate  apply migrations and collect static files, then exit; compose runs it once,
#            before any web replica starts, so replicas never race to migrate
#   web      gunicorn with gevent workers (config/gunicorn.py)
#   worker   a Celery worker
#   beat     Celery beat: run exactly one
# Anything else is run as given (e.g. `python manage.py createtenant acme`).
set -eu
role="${1:-web}"
case "$role" in
  migrate)
    python manage.py migrate --noinput
    python manage.py collectstatic --noinput -v 0
    ;;
  web)
    exec gunicorn -c config/gunicorn.py
    ;;
  worker)
    # CELERY_QUEUES: "celery" is the scheduled work, "batches" the Batch API's lines; a
    # deployment may give batches workers of their own (CELERY_QUEUES=batches).
    exec celery -A config worker --loglevel "${LOG_LEVEL:-INFO}" --concurrency "${CELERY_CONCURRENCY:-2}" \
      -Q "${CELERY_QUEUES:-celery,batches}"
    ;;
  beat)
    # The schedule file lives in /tmp: beat keeps no state that must survive a restart.
    # No pidfile: as PID 1 after a restart, beat would find its own pid in a stale one
    # and refuse to start. compose runs exactly one beat instead.
    exec celery -A config beat --loglevel "${LOG_LEVEL:-INFO}" --schedule /tmp/celerybeat-schedule
    ;;
  *)
    exec "$@"
    ;;
esac

"""The database settings behind a real PgBouncer in transaction mode (tests/pgbouncer.py).

A transaction pooler gives each transaction whichever server connection is free. Whatever
a client leaves on a server connection between transactions (a held cursor, a prepared
statement, a setting) is gone when its next transaction lands on another one. Each test
forces that switch: a second client takes the server connection the first just used.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from django.db import connection

from tests import pgbouncer
from tests.conftest import ROOT

# Run as the app runs, with settings from the environment. steal() makes the app's next
# statement land on a server connection it has not used before.
SCRIPT = """
import json, os, sys, django
import psycopg
django.setup()
from django.db import connection

admin = psycopg.connect(os.environ["PGBOUNCER_ADMIN_URL"], autocommit=True)
held = []

def idle_servers():
    cursor = admin.cursor()
    rows = cursor.execute("SHOW SERVERS", prepare=False).fetchall()
    names = [c.name for c in cursor.description]
    return [r for r in rows if dict(zip(names, r))["state"] in ("idle", "used")]

def steal():
    # Other clients' transactions, left open, take every idle server connection: the
    # app's next statement gets a new one, as it may at any time under load.
    for conn in held:
        conn.close()
    held.clear()
    while idle_servers():
        other = psycopg.connect(os.environ["DATABASE_URL"])
        other.execute("SELECT 1")
        held.append(other)

out = {}
try:
    exec(sys.argv[1])
    out["ok"] = True
except Exception as exc:
    out["ok"] = False
    out["error"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(out))
"""

ITERATE = """
from django.contrib.contenttypes.models import ContentType
rows = ContentType.objects.order_by("pk").iterator(chunk_size=1)
first = next(rows)
steal()
out["rows"] = 1 + sum(1 for _ in rows)
"""

# The ledger's cursor (billing/ledger.py): it binds on the server, so psycopg prepares a
# statement it has run before when prepare_threshold is set (DB_PREPARED_STATEMENTS).
PREPARE = """
connection.ensure_connection()
for n in range(4):
    with connection._prepare_cursor(psycopg.Cursor(connection.connection)) as cursor:
        cursor.execute("SELECT %s::int + 1", [n])
    steal()
"""

TIME_ZONE = """
from django.utils import timezone
with connection.cursor() as cursor:
    cursor.execute("SHOW TimeZone")
    zones = [cursor.fetchone()[0]]
    steal()
    cursor.execute("SHOW TimeZone")
    zones.append(cursor.fetchone()[0])
    cursor.execute("SELECT now()")
    out["offset"] = cursor.fetchone()[0].utcoffset().total_seconds()
out["zones"] = zones
"""


@pytest.fixture
def bouncer(transactional_db: None) -> Iterator[pgbouncer.PgBouncer]:
    db = connection.settings_dict
    started = pgbouncer.start(
        host=db["HOST"], port=int(db["PORT"]), user=db["USER"], password=db["PASSWORD"], timezone="America/New_York"
    )
    try:
        yield started
    finally:
        started.stop()


def run(bouncer: pgbouncer.PgBouncer, code: str, **env: str) -> dict[str, object]:
    """``code`` in a fresh process with the production settings, through ``bouncer``."""
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, code],
        cwd=ROOT,
        env={
            "PATH": os.environ["PATH"],
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "SECRET_KEY": "pooler-test",
            **bouncer.app_env(str(connection.settings_dict["NAME"])),
            "PGBOUNCER_ADMIN_URL": bouncer.url("pgbouncer"),
            **env,
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    found: dict[str, object] = json.loads(result.stdout.splitlines()[-1])
    return found


def test_server_side_cursors_break_under_transaction_pooling_and_the_setting_turns_them_off(
    bouncer: pgbouncer.PgBouncer,
) -> None:
    from django.contrib.contenttypes.models import ContentType

    total = ContentType.objects.count()
    # Django's default: .iterator() declares a cursor WITH HOLD, then fetches on another
    # server connection, which has no such cursor.
    broken = run(bouncer, ITERATE, DB_SERVER_SIDE_CURSORS="1")
    assert broken["ok"] is False
    assert "does not exist" in str(broken["error"])
    # DB_SERVER_SIDE_CURSORS=0 (what the docs and deploy/k8s set): every row arrives.
    assert run(bouncer, ITERATE) == {"ok": True, "rows": total}


def test_prepared_statements_need_pgbouncer_1_21_or_the_setting_off(bouncer: pgbouncer.PgBouncer) -> None:
    with_prepared = run(bouncer, PREPARE, DB_PREPARED_STATEMENTS="1")
    if pgbouncer.keeps_prepared_statements():
        # PgBouncer >= 1.21 with max_prepared_statements carries them across connections.
        assert with_prepared == {"ok": True}
    else:
        assert with_prepared["ok"] is False
        assert "prepared statement" in str(with_prepared["error"])
    assert run(bouncer, PREPARE, DB_PREPARED_STATEMENTS="0") == {"ok": True}


def test_the_session_time_zone_survives_a_change_of_server_connection(bouncer: pgbouncer.PgBouncer) -> None:
    # The server connections default to New York; Django sets UTC once per client
    # connection, and PgBouncer re-applies it on every server connection it hands over.
    assert run(bouncer, TIME_ZONE) == {"ok": True, "zones": ["UTC", "UTC"], "offset": 0.0}

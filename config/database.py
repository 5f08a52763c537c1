"""Why the database cannot be reached, in words an operator can act on.

Django's psycopg pool retries a failed connection until its timeout and then raises
``PoolTimeout``; the cause (a database that does not exist, a wrong password, nothing
listening) is only in the warnings logged before. :func:`database_problem` connects once
more, directly and briefly, and names the cause and the fix. ``manage.py`` calls it when
a command fails on the database; nothing on the request path does.
"""

from __future__ import annotations

import psycopg
from django.db import connections


def database_problem(alias: str = "default") -> str | None:
    """What stops a connection to the ``alias`` database, or None when a direct connection
    works (or it is not Postgres): then the failure was something else.

    libpq reports connection failures as text without an SQLSTATE, so a missing database
    is told apart by asking the server's ``postgres`` database whether it exists."""
    db = connections[alias].settings_dict
    if db["ENGINE"] != "django.db.backends.postgresql":
        return None
    name, user = db.get("NAME") or "", db.get("USER") or ""
    host, port = db.get("HOST") or "localhost", str(db.get("PORT") or 5432)
    password = db.get("PASSWORD") or ""

    def connect(dbname: str) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(dbname=dbname, user=user, password=password, host=host, port=port, connect_timeout=3)

    try:
        with connect(name):
            return None
    except psycopg.OperationalError as exc:
        failure = str(exc).strip()
    try:
        with connect("postgres") as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
    except psycopg.Error:
        return (
            f"Cannot connect to Postgres at {host}:{port} as {user!r}: {failure}\n"
            "Is it running, and are the host, user and password in DATABASE_URL right? "
            "(`make services` starts a local PostgreSQL that is installed but stopped.)"
        )
    if exists is None:
        return (
            f'The database "{name}" does not exist on {host}:{port}. Create it, then run the command again:\n'
            f"    createdb -h {host} -p {port} -U {user} {name}"
        )
    return f'Cannot connect to the database "{name}" on {host}:{port}: {failure}'

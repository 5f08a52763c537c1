"""A database that cannot be reached is named, with the fix, instead of the pool's timeout."""

from __future__ import annotations

from pathlib import Path

from django.db import connection

from tests.config.test_localenv import manage


def test_a_database_that_does_not_exist_is_named_with_the_createdb_command(tmp_path: Path) -> None:
    db = connection.settings_dict
    missing = "tollway_no_such_database"
    url = f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST']}:{db['PORT']}/{missing}"
    result = manage(tmp_path, "migrate", DATABASE_URL=url, SECRET_KEY="x" * 50, DB_POOL_TIMEOUT="1", LOG_LEVEL="ERROR")
    assert result.returncode == 1
    assert f'The database "{missing}" does not exist on {db["HOST"]}:{db["PORT"]}.' in result.stderr
    assert f"createdb -h {db['HOST']} -p {db['PORT']} -U {db['USER']} {missing}" in result.stderr
    assert "Traceback" not in result.stderr
    # nothing listening gets its own message
    url = f"postgres://{db['USER']}:{db['PASSWORD']}@127.0.0.1:1/{missing}"
    result = manage(tmp_path, "migrate", DATABASE_URL=url, SECRET_KEY="x" * 50, DB_POOL_TIMEOUT="1", LOG_LEVEL="ERROR")
    assert result.returncode == 1 and "Cannot connect to Postgres at 127.0.0.1:1" in result.stderr
    assert "Traceback" not in result.stderr

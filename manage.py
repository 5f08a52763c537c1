#!/usr/bin/env python
"""Django's command-line utility for administrative tasks."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    from django.core.management import execute_from_command_line
    from django.db.utils import OperationalError

    from config.env import SettingError

    try:
        execute_from_command_line(sys.argv)
    except SettingError as exc:
        # A missing or malformed setting: its message names the variable and the fix.
        sys.exit(f"manage.py: {exc}")
    except OperationalError as exc:
        # Say why the database could not be reached (a database that does not exist, say)
        # instead of the pool's timeout; anything else keeps its traceback.
        from config.database import database_problem

        problem = database_problem()
        if problem is None:
            raise
        sys.exit(f"manage.py: {problem}\n({type(exc).__name__}: {exc})")


if __name__ == "__main__":
    main()

"""Render nginx/nginx.conf.template: fill its ``${TOLLWAY_*}`` placeholders.

    python nginx/render.py [--template PATH] [--out PATH]     # values from the environment

It substitutes the way the official nginx image's envsubst step does with
``NGINX_ENVSUBST_FILTER=^TOLLWAY_``, so the local stack and Docker share one template.
Unlike envsubst it refuses to leave a placeholder empty by accident: a missing value
stops it with the variable's name. nginx's own ``$variables`` are left alone. Stdlib only.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parent / "nginx.conf.template"
PLACEHOLDER = re.compile(r"\$\{(TOLLWAY_[A-Z0-9_]+)\}")


def placeholders(template: str) -> set[str]:
    """The names the template needs."""
    return set(PLACEHOLDER.findall(template))


def render(template: str, values: Mapping[str, str]) -> str:
    """``template`` with every placeholder replaced; ``KeyError`` names what is missing."""
    missing = sorted(name for name in placeholders(template) if name not in values)
    if missing:
        raise KeyError(f"no value for {', '.join(missing)}: set it in the environment (see nginx/README.md)")
    return PLACEHOLDER.sub(lambda match: values[match.group(1)], template)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--template", type=Path, default=TEMPLATE)
    parser.add_argument("--out", type=Path, help="write here instead of stdout")
    args = parser.parse_args(argv)
    try:
        text = render(args.template.read_text(), os.environ)
    except KeyError as exc:
        print(f"render: {exc.args[0]}", file=sys.stderr)
        return 1
    if args.out:
        args.out.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The Lua scripts of admission, read once at import from ``lua/*.lua``, called by name.

Each script names its KEYS and ARGV at the top (``local tenant_spent = KEYS[7]``); this
module reads those names, and :meth:`Script.__call__` takes them as keyword dictionaries
and puts them in order, so no caller counts positions. A script that takes a variable
tail of keys or arguments says so in a comment (``-- KEYS[2..]``) and gets it as
``keys_tail`` / ``args_tail``.

Every value passed is checked first: an integer must be one Lua holds exactly and Redis
formats as an integer (below 10**14, :data:`LUA_INT_MAX`), so no number a client sends can
make a script fail half way (``docs/architecture.md``, "Invariants": bounded by the server).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from billing.admission import connection

LUA_DIR = Path(__file__).with_name("lua")
# Lua numbers are doubles, and Redis turns one into text with "%.14g": 10**14 would reach
# INCRBY as "1e+14" and fail. Every integer a script sees stays below this.
LUA_INT_MAX = 10**14 - 1
_NAMED = re.compile(r"^local (\w+) = (?:tonumber\()?(KEYS|ARGV)\[(\d+)\]", re.MULTILINE)


class ScriptArgumentError(ValueError):
    """A value out of the range a script can take: a bug in the caller, never sent."""


def checked(value: Any, name: str) -> str | int:
    """``value`` as a script argument, or ScriptArgumentError."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        if not -1 <= value <= LUA_INT_MAX:
            raise ScriptArgumentError(f"{name}={value} is outside [-1, {LUA_INT_MAX}]")
        return value
    if isinstance(value, str):
        return value
    raise ScriptArgumentError(f"{name} is a {type(value).__name__}, not an int or str")


class Script:
    """One ``.lua`` file, with the names of its KEYS and ARGV in order."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.source = (LUA_DIR / f"{name}.lua").read_text()
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()  # noqa: S324  # Redis's script id
        named: dict[str, list[tuple[int, str]]] = {"KEYS": [], "ARGV": []}
        for match in _NAMED.finditer(self.source):
            named[match.group(2)].append((int(match.group(3)), match.group(1)))
        self.keys = [n for _, n in sorted(named["KEYS"])]
        self.args = [n for _, n in sorted(named["ARGV"])]
        for kind, names in named.items():  # positions 1..n, each named once
            if sorted(i for i, _ in names) != list(range(1, len(names) + 1)):
                raise ValueError(f"{name}.lua: its {kind} are not named 1..n at the top")
        self._registered: dict[int, Any] = {}

    def __call__(
        self,
        *,
        keys: dict[str, str],
        args: dict[str, Any] | None = None,
        keys_tail: list[str] | None = None,
        args_tail: list[Any] | None = None,
    ) -> Any:
        args = args or {}
        try:  # each name present, and nothing else (same count): no sets built per call
            ordered = [keys[n] for n in self.keys]
            argv = [checked(args[n], n) for n in self.args]
            if len(keys) != len(self.keys) or len(args) != len(self.args):
                raise KeyError
        except KeyError:
            raise ScriptArgumentError(
                f"{self.name}.lua takes KEYS {self.keys} and ARGV {self.args}; got {sorted(keys)} and {sorted(args)}"
            ) from None
        if keys_tail:
            ordered += keys_tail
        if args_tail:
            argv += [checked(v, "tail") for v in args_tail]
        client = connection.client()
        lane = getattr(client, "lane", None)
        if lane is not None:  # one server: the hot path (config.redis.ScriptLane)
            return lane.evalsha(self.sha, self.source, ordered, argv)
        script = self._registered.get(id(client))
        if script is None:
            script = self._registered[id(client)] = client.register_script(self.source)
        return script(keys=ordered, args=argv)


ADMIT = Script("admit")
SETTLE = Script("settle")
REBUILD_BEGIN = Script("rebuild_begin")
REBUILD_END = Script("rebuild_end")
INVALIDATE = Script("invalidate")
REREGISTER = Script("reregister")
UNLOCK = Script("unlock")

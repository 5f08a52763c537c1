"""Validation shared by the models, the management API, the admin and the commands."""

from __future__ import annotations

import ipaddress
import re
import zoneinfo
from collections.abc import Iterable
from typing import Any

from django.core.exceptions import ValidationError

SCOPES = ("inference", "manage", "billing")
DEFAULT_SCOPES = ["inference"]
# A model glob: the characters model names use, plus * and ?. Brackets are refused:
# fnmatch would read them as character classes, which nobody means in a model name.
_GLOB = re.compile(r"^[A-Za-z0-9._:/@*?+-]{1,200}$")


def _as_list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list | tuple):
        raise ValidationError(f"{what} must be a list.")
    return list(value)


def validate_scopes(value: Any) -> None:
    scopes = _as_list(value, "Scopes")
    if not scopes:
        raise ValidationError("A key needs at least one scope: " + ", ".join(SCOPES) + ".")
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown:
        raise ValidationError(f"Unknown scope(s) {', '.join(map(str, unknown))}; use {', '.join(SCOPES)}.")


def validate_model_globs(value: Any) -> None:
    for pattern in _as_list(value, "Allowed models"):
        if not isinstance(pattern, str) or not _GLOB.match(pattern):
            raise ValidationError(f"{pattern!r} is not a model pattern: use model names with * and ?, e.g. 'gpt-4.1*'.")


def validate_cidrs(value: Any) -> None:
    for cidr in _as_list(value, "Allowed IPs"):
        try:
            ipaddress.ip_network(str(cidr), strict=False)
        except ValueError:
            raise ValidationError(f"{cidr!r} is not an IP address or CIDR, e.g. 203.0.113.0/24.") from None


def validate_timezone(value: str) -> None:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValidationError(f"{value!r} is not an IANA time zone, e.g. Europe/Berlin.") from None


def normalise_cidrs(values: Iterable[str]) -> list[str]:
    return [str(ipaddress.ip_network(str(v), strict=False)) for v in values]

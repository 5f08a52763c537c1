"""The catalog as a file: providers, models, prices and deployments, imported idempotently.

``manage.py importcatalog FILE.yaml`` calls :func:`catalog_import`. The shape::

    providers:
      - {name: local-mock, kind: mock}
      - {name: openai, kind: openai, base_url: "https://api.openai.com/v1", api_key_env: OPENAI_API_KEY,
         timeouts: {connect: 5, first_byte: 60, idle: 30, total: 600},
         serves_responses: true}   # optional, default false: /v1/responses passes through
      - {name: anthropic, kind: anthropic, base_url: "https://api.anthropic.com/v1",
         api_key_env: ANTHROPIC_API_KEY, drop_unsupported_params: true}   # optional, default false
    models:
      - name: gpt-4.1-mini
        owned_by: openai                     # optional
        prices: {input_per_mtok: "2.00", output_per_mtok: "8.00",
                 cached_input_per_mtok: "0.50", cache_write_per_mtok: null,   # optional
                 effective_from: "2026-01-01T00:00:00Z"}                      # optional
        deployments:
          - {provider: local-mock, upstream_model: gpt-4.1-mini, weight: 1, priority: 0}

Re-importing updates in place: providers and models by name, deployments by (model,
provider, upstream model). A model's deployments missing from the file are deactivated,
not deleted (the ledger may point at them through the model). Prices are effective-dated:
a price with ``effective_from`` is set at that instant; one without it starts now, unless
the price in effect already has exactly those amounts, so a re-import changes nothing.
Secrets are never in the file: a provider names the environment variable holding its key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from billing.models import Model, Price
from proxy.models import Deployment, Provider

PROVIDER_KEYS = {
    "name",
    "kind",
    "base_url",
    "api_key_env",
    "is_active",
    "timeouts",
    "drop_unsupported_params",
    "serves_responses",
}
TIMEOUT_KEYS = {"connect", "first_byte", "idle", "total"}
SECRET_HINTS = ("key", "secret", "token", "password")
MODEL_KEYS = {"name", "owned_by", "is_active", "prices", "deployments"}
PRICE_KEYS = {"input_per_mtok", "output_per_mtok", "cached_input_per_mtok", "cache_write_per_mtok", "effective_from"}
DEPLOYMENT_KEYS = {"provider", "upstream_model", "weight", "priority", "is_active"}


class CatalogError(ValueError):
    """The file is not a valid catalog; the message names the entry and the fix."""


@dataclass
class ImportReport:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    def note(self, label: str, created: bool, changed: bool) -> None:
        (self.created if created else self.updated if changed else self.unchanged).append(label)


def _keys(entry: Any, allowed: set[str], where: str) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise CatalogError(f"{where} must be a mapping.")
    unknown = set(entry) - allowed
    for name in unknown:
        if name != "api_key_env" and any(hint in name.lower() for hint in SECRET_HINTS):
            raise CatalogError(
                f"{where}: '{name}' looks like an inline secret. Secrets never go in the catalog: "
                "put the key in an environment variable and name it in api_key_env."
            )
    if unknown:
        raise CatalogError(
            f"{where}: unknown field(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(allowed))}."
        )
    return entry


def _decimal(value: Any, where: str) -> Decimal | None:
    if value is None:
        return None
    if isinstance(value, float):
        # YAML 2.10 is a float already rounded in binary: money must be written as a string.
        raise CatalogError(f'{where}: write prices as strings, e.g. "2.10", so they stay exact.')
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise CatalogError(f"{where}: {value!r} is not a decimal amount.") from None
    if amount < 0:
        raise CatalogError(f"{where}: a price cannot be negative.")
    return amount


def _flag(value: Any, where: str, name: str = "drop_unsupported_params") -> bool:
    if not isinstance(value, bool):
        raise CatalogError(f"{where}: {name} must be true or false.")
    return value


def _save(obj: Any, fields: dict[str, Any], label: str, report: ImportReport, created: bool) -> None:
    changed = any(getattr(obj, name) != value for name, value in fields.items())
    for name, value in fields.items():
        setattr(obj, name, value)
    try:
        obj.full_clean(validate_unique=False)
    except ValidationError as exc:
        raise CatalogError(f"{label}: {'; '.join(f'{k}: {v[0]}' for k, v in exc.message_dict.items())}") from None
    if created or changed:
        obj.save()
    report.note(label, created, changed)


def _provider(entry: Any, index: int, report: ImportReport) -> None:
    entry = _keys(entry, PROVIDER_KEYS, f"providers[{index}]")
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise CatalogError(f"providers[{index}]: 'name' is required.")
    timeouts = _keys(entry.get("timeouts") or {}, TIMEOUT_KEYS, f"provider {name}: timeouts")
    fields = {
        "kind": entry.get("kind"),
        "base_url": entry.get("base_url") or "",
        "api_key_env": entry.get("api_key_env") or "",
        "is_active": entry.get("is_active", True),
        "drop_unsupported_params": _flag(entry.get("drop_unsupported_params", False), f"provider {name}"),
        "serves_responses": _flag(entry.get("serves_responses", False), f"provider {name}", "serves_responses"),
        **{f"{k}_timeout": float(timeouts[k]) if timeouts.get(k) is not None else None for k in TIMEOUT_KEYS},
    }
    obj = Provider.objects.filter(name=name).first()
    _save(obj or Provider(name=name), fields, f"provider {name}", report, obj is None)


def _price(model: Model, entry: Any, report: ImportReport) -> None:
    where = f"model {model.name}: prices"
    entry = _keys(entry, PRICE_KEYS, where)
    amounts = {name: _decimal(entry.get(name), f"{where}.{name}") for name in PRICE_KEYS - {"effective_from"}}
    for required in ("input_per_mtok", "output_per_mtok"):
        if amounts[required] is None:
            raise CatalogError(f"{where}: '{required}' is required.")
    start: datetime | None = None
    if entry.get("effective_from") is not None:
        raw = entry["effective_from"]
        start = raw if isinstance(raw, datetime) else parse_datetime(str(raw))
        if start is None or timezone.is_naive(start):
            raise CatalogError(f"{where}.effective_from: use an ISO 8601 time with a zone, e.g. 2026-01-01T00:00:00Z.")
    label = f"price of {model.name}"
    if start is not None:
        existing = Price.objects.filter(model=model, effective_from=start).first()
        _save(existing or Price(model=model, effective_from=start), amounts, label, report, existing is None)
        return
    current = model.prices.filter(effective_from__lte=timezone.now()).order_by("-effective_from").first()
    if current is not None and all(getattr(current, k) == v for k, v in amounts.items()):
        report.note(label, created=False, changed=False)
        return
    _save(Price(model=model, effective_from=timezone.now()), amounts, label, report, True)


def _deployments(model: Model, entries: Any, report: ImportReport) -> None:
    if not isinstance(entries, list):
        raise CatalogError(f"model {model.name}: 'deployments' must be a list.")
    keep: list[int] = []
    for index, entry in enumerate(entries):
        entry = _keys(entry, DEPLOYMENT_KEYS, f"model {model.name}: deployments[{index}]")
        provider = Provider.objects.filter(name=entry.get("provider")).first()
        if provider is None:
            raise CatalogError(
                f"model {model.name}: deployments[{index}] names provider {entry.get('provider')!r}, "
                "which is neither in this file nor in the database."
            )
        upstream_model = entry.get("upstream_model") or model.name
        existing = Deployment.objects.filter(model=model, provider=provider, upstream_model=upstream_model).first()
        obj = existing or Deployment(model=model, provider=provider, upstream_model=upstream_model)
        fields = {
            "weight": int(entry.get("weight", 1)),
            "priority": int(entry.get("priority", 0)),
            "is_active": bool(entry.get("is_active", True)),
        }
        _save(obj, fields, f"deployment {model.name} -> {provider.name}/{upstream_model}", report, existing is None)
        keep.append(obj.pk)
    for stale in Deployment.objects.filter(model=model, is_active=True).exclude(pk__in=keep):
        stale.is_active = False
        stale.save(update_fields=["is_active"])
        report.updated.append(f"deployment {stale} (deactivated: not in the file)")


@transaction.atomic
def catalog_import(*, data: Any) -> ImportReport:
    """Apply a catalog document; all or nothing."""
    if not isinstance(data, dict) or not set(data) <= {"providers", "models"}:
        raise CatalogError("A catalog is a mapping with 'providers' and 'models' lists.")
    report = ImportReport()
    for index, entry in enumerate(data.get("providers") or []):
        _provider(entry, index, report)
    for index, entry in enumerate(data.get("models") or []):
        entry = _keys(entry, MODEL_KEYS, f"models[{index}]")
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise CatalogError(f"models[{index}]: 'name' is required.")
        model = Model.objects.filter(name=name).first()
        fields = {"owned_by": entry.get("owned_by", model.owned_by if model else "tollway")}
        fields["is_active"] = entry.get("is_active", True)
        obj = model or Model(name=name)
        _save(obj, fields, f"model {name}", report, model is None)
        if entry.get("prices") is not None:
            _price(obj, entry["prices"], report)
        if entry.get("deployments") is not None:
            _deployments(obj, entry["deployments"], report)
    return report

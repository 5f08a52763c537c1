"""Stage 4, route: resolve the public model to a price and an upstream deployment.

Resolution reads through a two-tier cache, so with warm caches it costs no database
query, and its cost does not grow with the number of models or prices.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings
from django.utils import timezone

from billing.models import Model
from billing.pricing import PriceSnapshot, price_at
from billing.selectors import price_snapshots
from config.cache import TieredCache
from config.errors import ErrorCode, NotFound, UpstreamError
from proxy.models import Deployment, Fallback, Provider


@dataclass(frozen=True)
class Timeouts:
    """Seconds: to connect, to the first byte, between streamed chunks, for the whole call."""

    connect: float
    first_byte: float
    idle: float
    total: float

    @classmethod
    def defaults(cls) -> Timeouts:
        conf = settings.TOLLWAY
        return cls(
            connect=conf["UPSTREAM_CONNECT_TIMEOUT"],
            first_byte=conf["UPSTREAM_FIRST_BYTE_TIMEOUT"],
            idle=conf["UPSTREAM_IDLE_TIMEOUT"],
            total=conf["UPSTREAM_TOTAL_TIMEOUT"],
        )


@dataclass(frozen=True)
class Target:
    """A deployment as the request path sees it: plain data, safe to cache."""

    deployment_pk: int
    provider_name: str
    kind: str
    base_url: str
    api_key_env: str
    upstream_model: str
    priority: int
    weight: int
    api_key_encrypted: str = ""
    timeouts: Timeouts | None = None
    drop_params: bool = False  # the provider's drop_unsupported_params
    serves_responses: bool = False  # the provider's serves_responses: /v1/responses passes through

    @property
    def limits(self) -> Timeouts:
        return self.timeouts or Timeouts.defaults()


def _timeouts(provider: Provider) -> Timeouts:
    default = Timeouts.defaults()
    return Timeouts(
        connect=provider.connect_timeout or default.connect,
        first_byte=provider.first_byte_timeout or default.first_byte,
        idle=provider.idle_timeout or default.idle,
        total=provider.total_timeout or default.total,
    )


def target_of(d: Deployment) -> Target:
    """A deployment (with its provider loaded) as plain data for the request path."""
    return Target(
        deployment_pk=d.pk,
        provider_name=d.provider.name,
        kind=d.provider.kind,
        base_url=d.provider.base_url,
        api_key_env=d.provider.api_key_env,
        upstream_model=d.upstream_model,
        priority=d.priority,
        weight=d.weight,
        api_key_encrypted=d.provider.api_key_encrypted,
        timeouts=_timeouts(d.provider),
        drop_params=d.provider.drop_unsupported_params,
        serves_responses=d.provider.serves_responses,
    )


@dataclass(frozen=True)
class RouteEntry:
    model_pk: int
    name: str
    max_output_tokens: int | None
    prices: tuple[PriceSnapshot, ...]
    targets: tuple[Target, ...]
    fallbacks: tuple[str, ...] = ()  # model names to serve instead, in order (proxy.Fallback)


@dataclass(frozen=True)
class ModelListing:
    name: str
    created: int
    owned_by: str


def _load_route(name: str) -> RouteEntry | None:
    model = Model.objects.filter(name=name, is_active=True).first()
    if model is None:
        return None
    deployments = (
        Deployment.objects.filter(model=model, is_active=True, provider__is_active=True)
        .select_related("provider")
        .order_by("priority", "pk")
    )
    return RouteEntry(
        model_pk=model.pk,
        name=model.name,
        max_output_tokens=model.max_output_tokens,
        prices=tuple(price_snapshots(model_id=model.pk)),
        targets=tuple(target_of(d) for d in deployments),
        fallbacks=tuple(
            Fallback.objects.filter(model=model, fallback__is_active=True)
            .order_by("position", "pk")
            .values_list("fallback__name", flat=True)
        ),
    )


def _load_listing(_: str) -> tuple[ModelListing, ...]:
    models = (
        Model.objects.filter(is_active=True, prices__isnull=False, deployments__is_active=True)
        .distinct()
        .order_by("name")
    )
    return tuple(ModelListing(m.name, int(m.created_at.timestamp()), m.owned_by) for m in models)


routes: TieredCache[RouteEntry] = TieredCache("tw:route", _load_route)
listings: TieredCache[tuple[ModelListing, ...]] = TieredCache("tw:models", _load_listing)


@dataclass(frozen=True)
class Route:
    entry: RouteEntry
    price: PriceSnapshot
    target: Target


def resolve(model_name: str, *, rng: random.Random | None = None) -> Route:
    """The price in effect now and one deployment to call, or an OpenAI-shaped error."""
    entry, price = priced(model_name)
    if not entry.targets:
        raise UpstreamError(
            f"The model `{model_name}` has no active deployment right now.",
            code=ErrorCode.NO_DEPLOYMENT,
            status=503,
        )
    return Route(entry=entry, price=price, target=pick_target(entry.targets, rng=rng))


def priced(model_name: str) -> tuple[RouteEntry, PriceSnapshot]:
    """The model's route entry and the price in effect now, or an OpenAI-shaped 404."""
    entry = routes.get(model_name)
    if entry is None:
        raise NotFound(
            f"The model `{model_name}` does not exist or you do not have access to it.",
            param="model",
            code=ErrorCode.MODEL_NOT_FOUND,
        )
    price = price_at(entry.prices, timezone.now())
    if price is None:
        # Never serve what we cannot price: a silent $0 is how gateways lose money.
        raise NotFound(
            f"The model `{model_name}` is not available: it has no price in effect.",
            param="model",
            code=ErrorCode.MODEL_NOT_FOUND,
        )
    return entry, price


def plan(model_name: str, *, allows: Callable[[str], bool]) -> list[tuple[RouteEntry, PriceSnapshot]]:
    """The model, then its fallback models that the caller may use and that have a price,
    in the order to try them. Each is billed as itself, at its own price."""
    entry, price = priced(model_name)
    steps = [(entry, price)]
    for name in entry.fallbacks:
        if not allows(name):
            continue
        try:
            steps.append(priced(name))
        except NotFound:
            continue  # a fallback that cannot be priced is never served
    return steps


def pick_target(targets: tuple[Target, ...], *, rng: random.Random | None = None) -> Target:
    """Weighted random choice among the targets of the best (lowest) priority."""
    best = min(t.priority for t in targets)
    tier = [t for t in targets if t.priority == best]
    weights = [max(t.weight, 0) for t in tier]
    if sum(weights) == 0:
        weights = [1] * len(tier)
    return (rng or random).choices(tier, weights=weights, k=1)[0]


def catalog_invalidate() -> None:
    """Forget every cached route and the model listing, after any catalog change."""
    routes.invalidate(Model.objects.values_list("name", flat=True))
    listings.invalidate(["all"])

"""Stage 3, admit: rate limits and the budget reservation, in one Redis round trip.

The reservation is the most the request can cost: the prompt, estimated on the high
side, plus ``max_tokens`` (or the model's output cap) at the output price. The call's
``meter`` stage settles it to the actual cost; a failure before anything billable
releases it (``billing.admission``).
"""

from __future__ import annotations

import json

from django.conf import settings

from billing.admission import Admission, Ask, Limits, account_of
from billing.admission import admit as take
from billing.pricing import PriceSnapshot, TokenUsage, charge_of
from config.errors import InvalidRequest
from proxy import tokens
from proxy.meter import Call
from proxy.parse import EMBEDDINGS


def max_output(call: Call) -> int:
    """The output the request may produce; a ``max_tokens`` above the model's cap is refused."""
    cap = call.route.entry.max_output_tokens
    body = call.chat.body
    asked = body.get("max_completion_tokens", body.get("max_tokens"))
    if asked is not None and cap is not None and asked > cap:
        name = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
        raise InvalidRequest(f"'{name}' is {asked}, above this model's limit of {cap} output tokens.", param=name)
    if call.chat.endpoint == EMBEDDINGS:
        return 0  # embeddings produce no output tokens
    limit = asked or cap or settings.TOLLWAY["DEFAULT_MAX_OUTPUT_TOKENS"]
    choices = body.get("n") or 1
    return int(limit) * int(choices)


def prompt_estimate(call: Call) -> int:
    """High-side prompt estimate: our token count, or one token per three characters of
    the messages as JSON, whichever is more, so a real tokenizer rarely counts more."""
    return max(tokens.prompt_tokens(call.chat.messages), len(json.dumps(call.chat.messages)) // 3)


def reserve_price(prices: list[PriceSnapshot]) -> PriceSnapshot:
    """The dearest of the models a request may be served by (itself and its fallbacks),
    rate by rate, so a fallback that serves never costs more than was reserved."""
    first = prices[0]
    if len(prices) == 1:
        return first
    return PriceSnapshot(
        input_per_mtok=max(p.input_per_mtok for p in prices),
        output_per_mtok=max(p.output_per_mtok for p in prices),
        effective_from=first.effective_from,
        cached_input_per_mtok=max(p.cached_input_rate for p in prices),
        cache_write_per_mtok=max(p.cache_write_rate for p in prices),
        request_fee=max(p.request_fee for p in prices),
    )


def admit(call: Call) -> Admission:
    principal, route = call.principal, call.route
    price = call.reserve_price or route.price
    usage = TokenUsage(input_tokens=prompt_estimate(call), output_tokens=max_output(call))
    # Reserve the tenant's price: its plan's markup, the highest of any model that may serve.
    account = account_of(principal.tenant_pk)
    markup = max(account.markup_for(pk) for pk in call.plan_models or (route.entry.model_pk,))
    ask = Ask(
        request_id=call.request_id,
        tenant_id=principal.tenant_pk,
        api_key_id=principal.api_key_pk,
        tenant_limits=Limits(principal.tenant_rpm_limit, principal.tenant_tpm_limit, principal.tenant_max_concurrent),
        key_limits=Limits(principal.rpm_limit, principal.tpm_limit, principal.max_concurrent),
        tokens=usage.input_tokens + usage.output_tokens,
        amount=charge_of(usage, price, markup_percent=markup).cost,
        tenant_budget=principal.tenant_monthly_budget_usd,
        key_budget=principal.monthly_budget_usd,
        timezone=principal.tenant_timezone,
        record={
            "tenant_id": principal.tenant_pk,
            "api_key_id": principal.api_key_pk,
            "model_id": route.entry.model_pk,
            "provider": route.target.provider_name,
            "upstream_model": route.target.upstream_model,
            "input_price": str(price.input_per_mtok),
            "output_price": str(price.output_per_mtok),
            "price_from": price.effective_from.isoformat(),
            "request_fee": str(price.request_fee),
            "markup_percent": str(markup),
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "streamed": call.chat.stream,
            "api": call.chat.endpoint,
            "created_at": call.created_at.isoformat(),
            "timezone": principal.tenant_timezone,
        },
    )
    call.admission = take(ask)
    return call.admission

"""Stage 3, admit: rate limits and the budget reservation, in one Redis round trip.

The reservation is the most the request can cost: the prompt, estimated on the high
side, plus ``max_tokens`` (or the model's output cap) at the output price. The call's
``meter`` stage settles it to the actual cost; a failure before anything billable
releases it (``billing.admission``).
"""

from __future__ import annotations

import json

from django.conf import settings

from billing import admission
from billing.admission import Admission, Ask, Limits, ReservationRecord, account_of, month_bounds
from billing.admission import admit as take
from billing.alerts import quota_refused
from billing.pricing import PriceSnapshot, TokenUsage, charge_of
from config.errors import InvalidRequest, QuotaExceeded
from proxy import tokens
from proxy.meter import Call
from proxy.parse import COMPLETIONS, EMBEDDINGS


def max_output(call: Call) -> int:
    """The output the request may produce: ``max_tokens`` (or the model's cap, or the
    default) for each completion it asks for. A ``max_tokens`` above the model's cap, or
    above ``TOLLWAY_MAX_OUTPUT_TOKENS`` on a model without one, is refused."""
    cap = call.route.entry.max_output_tokens
    body = call.chat.body
    asked = body.get("max_completion_tokens", body.get("max_tokens"))
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    if asked is not None:
        if cap is not None and asked > cap:
            raise InvalidRequest(f"'{name}' is {asked}, above this model's limit of {cap} output tokens.", param=name)
        ceiling = int(settings.TOLLWAY["MAX_OUTPUT_TOKENS"])
        if cap is None and asked > ceiling:
            raise InvalidRequest(
                f"'{name}' is {asked}, above the limit of {ceiling} output tokens for this model.", param=name
            )
    if call.chat.endpoint == EMBEDDINGS:
        return 0  # embeddings produce no output tokens
    limit = asked if asked is not None else cap or settings.TOLLWAY["DEFAULT_MAX_OUTPUT_TOKENS"]
    return int(limit) * call.chat.outputs


def prompt_estimate(call: Call) -> int:
    """High-side prompt estimate: the exact count of token ids when the client sent ids;
    otherwise our token count, or one token per three characters of the messages as
    JSON, whichever is more, so a real tokenizer rarely counts more."""
    if call.chat.prompt_tokens is not None:
        return call.chat.prompt_tokens
    return max(tokens.prompt_tokens(call.chat.messages), len(json.dumps(call.chat.messages)) // 3)


def bounded_usage(call: Call) -> TokenUsage:
    """What the request may consume at most, refused with 400 when it is more than one
    request may reserve (``TOLLWAY_MAX_REQUEST_TOKENS``): every number that reaches the
    admission script stays small, and no single call can hold a tenant's whole budget."""
    usage = TokenUsage(input_tokens=prompt_estimate(call), output_tokens=max_output(call))
    limit = int(settings.TOLLWAY["MAX_REQUEST_TOKENS"])
    if usage.input_tokens + usage.output_tokens > limit:
        body = call.chat.body
        if usage.input_tokens > limit:
            param = {COMPLETIONS: "prompt", EMBEDDINGS: "input"}.get(call.chat.endpoint, "messages")
            what = f"its prompt is about {usage.input_tokens} tokens"
        else:
            param = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
            what = (
                f"its prompt (about {usage.input_tokens} tokens) and {call.chat.outputs} completion(s) of up to "
                f"{usage.output_tokens // max(call.chat.outputs, 1)} tokens"
            )
        raise InvalidRequest(
            f"This request could use more than the {limit} tokens one request may: {what}. "
            "Lower max_tokens or n, or send less.",
            param=param,
        )
    return usage


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
        factor=max(p.factor for p in prices),
    )


def admit(call: Call) -> Admission:
    principal, route = call.principal, call.route
    price = call.reserve_price or route.price
    usage = bounded_usage(call)
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
        record=ReservationRecord(
            tenant_id=principal.tenant_pk,
            api_key_id=principal.api_key_pk,
            model_id=route.entry.model_pk,
            provider=route.target.provider_name,
            upstream_model=route.target.upstream_model,
            input_price=price.input_per_mtok,
            output_price=price.output_per_mtok,
            price_from=price.effective_from,
            request_fee=price.request_fee,
            markup_percent=markup,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            streamed=call.chat.stream,
            api=call.chat.endpoint,
            created_at=call.created_at,
            timezone=principal.tenant_timezone,
            price_factor=price.factor,
            batch_id=call.batch_id,
        ),
    )
    try:
        call.admission = take(ask)
    except QuotaExceeded as exc:
        # Says who can raise the budget, and shows the dashboard's banner (billing.alerts).
        month, _, _ = month_bounds(principal.tenant_timezone, admission.clock())
        raise quota_refused(exc, tenant_id=principal.tenant_pk, month=month) from None
    return call.admission

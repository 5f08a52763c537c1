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
from billing.pricing import TokenUsage, charge_of
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


def admit(call: Call) -> Admission:
    principal, route = call.principal, call.route
    usage = TokenUsage(input_tokens=prompt_estimate(call), output_tokens=max_output(call))
    markup = account_of(principal.tenant_pk).markup_for(route.entry.model_pk)  # reserve the tenant's price
    ask = Ask(
        request_id=call.request_id,
        tenant_id=principal.tenant_pk,
        api_key_id=principal.api_key_pk,
        tenant_limits=Limits(principal.tenant_rpm_limit, principal.tenant_tpm_limit, principal.tenant_max_concurrent),
        key_limits=Limits(principal.rpm_limit, principal.tpm_limit, principal.max_concurrent),
        tokens=usage.input_tokens + usage.output_tokens,
        amount=charge_of(usage, route.price, markup_percent=markup).cost,
        tenant_budget=principal.tenant_monthly_budget_usd,
        key_budget=principal.monthly_budget_usd,
        timezone=principal.tenant_timezone,
        record={
            "tenant_id": principal.tenant_pk,
            "api_key_id": principal.api_key_pk,
            "model_id": route.entry.model_pk,
            "provider": route.target.provider_name,
            "upstream_model": route.target.upstream_model,
            "input_price": str(route.price.input_per_mtok),
            "output_price": str(route.price.output_per_mtok),
            "price_from": route.price.effective_from.isoformat(),
            "request_fee": str(route.price.request_fee),
            "markup_percent": str(markup),
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "streamed": call.chat.stream,
            "created_at": call.created_at.isoformat(),
            "timezone": principal.tenant_timezone,
        },
    )
    call.admission = take(ask)
    return call.admission

"""Stage 7, meter: price the call and write its one ledger row.

Usage comes from the provider's own count. When it never arrives (a stream cut before
its usage chunk), the call is still billed, from Tollway's count of the prompt and of
what was relayed, and the row says it was estimated.

When Postgres cannot be reached, the row goes to the worker's durable spool
(``billing.spool``) and is written once Postgres answers; the client is answered as usual,
with the same cost, and the reservation stays held until the row is in the ledger.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from django.utils import timezone

from billing import admission as limits
from billing import spool
from billing.admission import Admission
from billing.ledger import UsageEntry, usage_cost, usage_record_create
from billing.models import UsageRecord
from billing.pricing import PriceSnapshot, TokenUsage
from proxy import observe, tokens
from proxy.parse import COMPLETIONS, EMBEDDINGS, ChatRequest
from proxy.route import Route
from tenants.selectors import KeyPrincipal

log = logging.getLogger(__name__)


@dataclass
class Call:
    """One billable call, from admission to its ledger row."""

    request_id: str
    principal: KeyPrincipal
    route: Route
    chat: ChatRequest
    started: float = field(default_factory=time.monotonic)
    created_at: datetime = field(default_factory=timezone.now)
    cost: Decimal | None = None
    admission: Admission | None = None
    attempts: int = 1  # upstream attempts so far; 0 when served from the response cache
    cache_hit: bool = False
    cache_key: str | None = None  # set when the response cache may keep this call's answer
    answered: bool = False  # the provider answered: the call is billable, its reservation never released
    spooled: bool = False  # its row waits in the spool for Postgres
    reserve_price: PriceSnapshot | None = None  # with fallbacks: the dearest price it may be served at
    plan_models: tuple[int, ...] = ()  # the model and its fallbacks, for the reservation's markup
    batch_id: str = ""  # a Batch API line's batch (its route's prices carry the batch factor)
    # Monotonic timestamps for the metrics: overhead is the time not spent upstream.
    request_started: float = field(default_factory=time.monotonic)
    upstream_started: float | None = None
    upstream_done: float | None = None
    first_byte_at: float | None = None

    @property
    def metered(self) -> bool:
        return self.cost is not None


def estimate(chat: ChatRequest, completion_text: str) -> TokenUsage:
    """Tollway's own count, for when the provider reports none."""
    if chat.prompt_tokens is not None:  # the client sent token ids: their count is exact
        return TokenUsage(input_tokens=chat.prompt_tokens, output_tokens=tokens.count(completion_text))
    if chat.endpoint in (COMPLETIONS, EMBEDDINGS):
        # A bare prompt or embedding input: no chat framing to count.
        prompt = sum(tokens.count(tokens.content_text(m.get("content"))[0]) for m in chat.messages)
        return TokenUsage(input_tokens=prompt, output_tokens=tokens.count(completion_text))
    return TokenUsage(input_tokens=tokens.prompt_tokens(chat.messages), output_tokens=tokens.count(completion_text))


def usage_of_cut_stream(chat: ChatRequest, text: str, partial: TokenUsage | None) -> TokenUsage:
    """A stream that ended without the provider's usage: what the provider had counted so
    far (its input side is exact, cached tokens included), with the output no less than
    Tollway's own count of ``text``; Tollway's own estimate if it had counted nothing."""
    guess = estimate(chat, text)
    if partial is None:
        return guess
    return TokenUsage(
        input_tokens=partial.input_tokens,
        output_tokens=max(partial.output_tokens, guess.output_tokens),
        cached_input_tokens=partial.cached_input_tokens,
        cache_write_tokens=partial.cache_write_tokens,
    )


def _entry(call: Call, usage: TokenUsage, *, estimated: bool, outcome: str) -> UsageEntry:
    target = call.route.target
    return UsageEntry(
        request_id=call.request_id,
        created_at=call.created_at,
        tenant_id=call.principal.tenant_pk,
        api_key_id=call.principal.api_key_pk,
        model_id=call.route.entry.model_pk,
        provider=target.provider_name,
        upstream_model=target.upstream_model,
        usage=usage,
        price=call.route.price,
        usage_estimated=estimated,
        streamed=call.chat.stream,
        outcome=outcome,
        latency_ms=int((time.monotonic() - call.started) * 1000),
        attempts=call.attempts,
        # A fallback model serves at its own price; the row also says what was asked for.
        requested_model=call.chat.model if call.chat.model != call.route.entry.name else "",
        cache_hit=call.cache_hit,
        # The plan's markup, from the cached account snapshot (no query with warm caches).
        markup_percent=limits.account_of(call.principal.tenant_pk).markup_for(call.route.entry.model_pk),
        api=call.chat.endpoint,
        batch_id=call.batch_id,
    )


def record(
    call: Call,
    usage: TokenUsage,
    *,
    estimated: bool,
    outcome: UsageRecord.Outcome = UsageRecord.Outcome.COMPLETED,
) -> Decimal:
    """Write the ledger row once and settle the reservation; a second call for the same
    Call returns the first cost. If Postgres cannot be reached, the row is spooled."""
    if call.cost is not None:
        return call.cost
    call.answered = True
    entry = _entry(call, usage, estimated=estimated, outcome=outcome)
    tokens_used = usage.input_tokens + usage.output_tokens
    if not spool.ledger_down():
        try:
            cost, inserted = usage_record_create(entry=entry)
        except spool.UNREACHABLE as exc:
            log.warning("request %s: the ledger is unreachable (%r); spooling its row", call.request_id, exc)
            spool.mark_ledger_down()
        else:
            call.cost = cost
            if call.admission is not None:
                limits.settle(call.admission, cost=cost, tokens=tokens_used, counted=inserted)
            observe.call_finished(call, usage, cost, outcome=str(outcome), estimated=estimated)
            return cost
    call.cost = usage_cost(entry)
    try:
        spool.keep(entry, call.admission, tokens=tokens_used)
        call.spooled = True
    except Exception:
        # The disk failed too. The reservation stays held: the sweeper bills its estimate.
        log.exception("request %s: could not spool its row; its reservation will bill it", call.request_id)
    observe.call_finished(call, usage, call.cost, outcome=str(outcome), estimated=estimated)
    return call.cost


def release(call: Call) -> None:
    """The call failed before anything billable: give its reservation back. A call the
    provider answered keeps it (a failure after that, say in metering, is billed by the
    sweeper from the reservation, never given away)."""
    if call.admission is not None and not call.metered and not call.answered:
        limits.release(call.admission)

"""Tollway's response cache: an exact repeat of a request is answered without going upstream.

Opt-in, per request with the ``x-tollway-cache`` header, or per key or tenant
(``response_cache``; a key's setting wins over its tenant's):

* ``deterministic`` (the header's ``use``): only requests whose answer should not vary:
  ``temperature: 0`` with one choice, and every embeddings request;
* ``all`` (the header's ``force``): any repeat, sampling settings included;
* ``off`` (the header's ``skip``): never, whatever the key or tenant says.

The cache key is a SHA-256 of the tenant and the endpoint and the request body as sent
(model, messages and every parameter that can change the output), without ``stream`` and
``stream_options``, so a streamed request can be served from a plain answer and back. The
tenant is in the key: one tenant's cache never serves another's.

A hit answers ``x-tollway-cache: HIT`` (a miss that was looked up, ``MISS``), replayed as
SSE for a streamed request, and writes the call's one ledger row with ``cache_hit`` set,
``attempts`` 0 and provider ``cache``, priced at the model's price times
``CACHE_HIT_PRICE_FACTOR`` (0 by default: free). Entries live ``RESPONSE_CACHE_SECONDS``
in Django's cache (Redis; process memory in the embedded default). While Redis is backing
off after an outage (``config.redis``), every lookup is a miss and nothing is stored.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest

from billing.pricing import PriceSnapshot, TokenUsage
from config import redis
from proxy.adapters.base import Completion, usage_from_openai
from proxy.parse import CHAT, COMPLETIONS, EMBEDDINGS, ChatRequest
from proxy.route import Route
from proxy.translate.common import openai_usage
from tenants.selectors import KeyPrincipal

log = logging.getLogger(__name__)
RESPONSES = "responses"  # proxy.responses' endpoint, as the ledger's api column names it

HEADER = "x-tollway-cache"
PROVIDER = "cache"
_ASKED = {"use": "deterministic", "force": "all", "skip": "off", "off": "off"}


def mode(request: HttpRequest, principal: KeyPrincipal) -> str:
    """ "off", "deterministic" or "all": the request's header, else the key's or tenant's setting."""
    asked = request.headers.get(HEADER, "").strip().lower()
    if asked in _ASKED:
        if asked == "use" and principal.response_cache == "all":
            return "all"
        return _ASKED[asked]
    return principal.response_cache or "off"


def deterministic(chat: ChatRequest) -> bool:
    if chat.endpoint == EMBEDDINGS:
        return True
    temperature = chat.body.get("temperature")
    if isinstance(temperature, bool) or not isinstance(temperature, int | float):
        return False  # absent (the provider's default samples) or not a number
    return temperature == 0 and chat.body.get("n") in (None, 1)


def key_for(chat: ChatRequest, principal: KeyPrincipal, how: str) -> str | None:
    """The cache key for this request, or None if it is not to be cached. Only the
    OpenAI-shaped endpoints are cached: their answers are what an entry replays (a
    Responses call's entry is its chat answer, replayed through the Responses relay)."""
    if (
        chat.endpoint not in (CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES)
        or how == "off"
        or (how == "deterministic" and not deterministic(chat))
    ):
        return None
    body = {k: v for k, v in chat.body.items() if k not in ("stream", "stream_options")}
    blob = json.dumps([principal.tenant_pk, chat.endpoint, body], sort_keys=True, separators=(",", ":"), default=str)
    return f"tw:rc:{principal.tenant_pk}:{hashlib.sha256(blob.encode()).hexdigest()}"


def lookup(key: str) -> dict[str, Any] | None:
    if not redis.cache_ready():
        return None
    try:
        value = cache.get(key)
    except Exception as exc:  # a cache outage must not fail the request: it is a miss
        log.warning("response cache: lookup failed: %r", exc)
        return None
    return value if isinstance(value, dict) else None


def store(key: str | None, route: Route, body: dict[str, Any], usage: TokenUsage | None) -> None:
    """Keep an answer that ended well, with the provider's usage (never an estimate)."""
    if key is None or usage is None or not redis.cache_ready():
        return
    entry = {
        "body": json.loads(json.dumps(body)),  # a copy: the relay adds cost to the original
        "usage": openai_usage(usage),
        "upstream_model": route.target.upstream_model,
    }
    try:
        cache.set(key, entry, int(settings.TOLLWAY["RESPONSE_CACHE_SECONDS"]))
    except Exception as exc:
        log.warning("response cache: store failed: %r", exc)


def hit_route(route: Route, entry: dict[str, Any]) -> Route:
    """The route a hit is billed on: the requested model at its price times the hit factor,
    from the provider ``cache``."""
    factor = Decimal(str(settings.TOLLWAY["CACHE_HIT_PRICE_FACTOR"]))
    price = route.price

    def scaled(value: Decimal | None) -> Decimal | None:
        return None if value is None else value * factor

    hit_price = PriceSnapshot(
        input_per_mtok=price.input_per_mtok * factor,
        output_per_mtok=price.output_per_mtok * factor,
        effective_from=price.effective_from,
        cached_input_per_mtok=scaled(price.cached_input_per_mtok),
        cache_write_per_mtok=scaled(price.cache_write_per_mtok),
        request_fee=price.request_fee * factor,
    )
    target = dataclasses.replace(
        route.target, provider_name=PROVIDER, upstream_model=str(entry.get("upstream_model", ""))
    )
    return Route(entry=route.entry, price=hit_price, target=target)


def completion(entry: dict[str, Any]) -> Completion:
    return Completion(body=json.loads(json.dumps(entry["body"])), usage=usage_from_openai(entry["usage"]))


class Replay:
    """A cached answer as the chunks of a stream, for a streamed request's hit."""

    def __init__(self, entry: dict[str, Any], endpoint: str) -> None:
        self.entry = entry
        self.endpoint = endpoint

    def __iter__(self) -> Iterator[dict[str, Any]]:
        body = self.entry["body"]
        base = {"id": body.get("id", ""), "created": body.get("created", 0), "model": body.get("model", "")}
        if self.endpoint == CHAT:
            base["object"] = "chat.completion.chunk"
            for choice in body.get("choices") or []:
                message = dict(choice.get("message") or {})
                index = choice.get("index", 0)
                delta: dict[str, Any] = {"role": message.get("role", "assistant"), "content": message.get("content")}
                if message.get("tool_calls"):
                    delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(message["tool_calls"])]
                yield {**base, "choices": [{"index": index, "delta": delta, "finish_reason": None}]}
                yield {**base, "choices": [{"index": index, "delta": {}, "finish_reason": choice.get("finish_reason")}]}
        else:
            base["object"] = "text_completion"
            for choice in body.get("choices") or []:
                yield {**base, "choices": [dict(choice)]}
        yield {**base, "choices": [], "usage": self.entry["usage"]}

    def close(self) -> None:
        pass

    def partial_usage(self) -> TokenUsage | None:
        return None


class Collector:
    """Rebuilds a streamed answer as a plain one, so a streamed miss can fill the cache.

    Only simple answers are kept: text in one choice, no tool calls, no reasoning or
    logprobs (a plain answer rebuilt from them would lose what the client asked for).
    """

    def __init__(self) -> None:
        self.content: list[str] = []
        self.text: list[str] = []
        self.finish_reason: str | None = None
        self.first: dict[str, Any] = {}
        self.simple = True

    def take(self, chunk: dict[str, Any]) -> None:
        if not self.first:
            self.first = {k: chunk.get(k) for k in ("id", "created", "object")}
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                self.simple = False
                continue
            delta = choice.get("delta")
            if isinstance(delta, dict):
                if any(delta.get(k) for k in ("tool_calls", "function_call", "reasoning_content", "thinking_blocks")):
                    self.simple = False
                if isinstance(delta.get("content"), str):
                    self.content.append(delta["content"])
            if isinstance(choice.get("text"), str):
                self.text.append(choice["text"])
            if choice.get("logprobs"):
                self.simple = False
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]

    def body(self, endpoint: str) -> dict[str, Any] | None:
        if not self.simple or self.finish_reason is None:
            return None
        if endpoint == CHAT:
            message = {"role": "assistant", "content": "".join(self.content), "refusal": None}
            choice: dict[str, Any] = {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": self.finish_reason,
            }
            kind = "chat.completion"
        else:
            choice = {"index": 0, "text": "".join(self.text), "logprobs": None, "finish_reason": self.finish_reason}
            kind = "text_completion"
        return {"id": self.first.get("id"), "object": kind, "created": self.first.get("created"), "choices": [choice]}

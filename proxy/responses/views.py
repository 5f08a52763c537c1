"""The ``/v1/responses`` endpoints. Thin, like ``proxy.views``: the create call runs
chat's stages (``proxy.views._run``) with the Responses shapes at each end."""

from __future__ import annotations

import time
from typing import Any

from django.http import HttpRequest, HttpResponseBase, JsonResponse

from config.errors import InvalidRequest
from proxy import adapters, attempts, auth, meter, respcache, tokens
from proxy.adapters.openai import OpenAIAdapter
from proxy.parse import CHAT
from proxy.responses import relay, request, store
from proxy.route import Target
from proxy.translate import responses as translate
from proxy.views import _run, api_view


def _native_body(call: meter.Call, target: Target) -> dict[str, Any]:
    """What a provider serving the Responses API gets: the client's request with its model
    name and the stored conversation in ``input`` (Tollway's ids never leave Tollway)."""
    responses = relay._request(call)
    body = {k: v for k, v in responses.request_body.items() if k != "previous_response_id"}
    body["model"] = target.upstream_model
    if responses.history:
        current = body["input"]
        turn = [{"role": "user", "content": current}] if isinstance(current, str) else list(current)
        body["input"] = [*responses.history, *turn]
    return body


def _answer(call: meter.Call, adapter: adapters.Adapter, _: dict[str, Any]) -> HttpResponseBase:
    """One attempt on ``call.route``: passed through to a provider that serves the
    Responses API, else translated to chat completions through the provider's adapter."""
    responses = relay._request(call)
    target = call.route.target
    if target.serves_responses and isinstance(adapter, OpenAIAdapter):
        body = _native_body(call, target)
        if responses.stream:
            primed = attempts.primed(adapter.responses_stream(target, body))
            call.answered = True
            return relay.stream_response(call, relay.NativeSource(primed))
        completion = adapter.responses(target, body)
        call.upstream_done, call.answered = time.monotonic(), True
        return relay.json_response(call, completion, native=True)
    chat = translate.chat_body(responses.request_body, responses.conversation, stream=responses.stream)
    chat["model"] = target.upstream_model
    if responses.stream:
        primed = attempts.primed(adapter.stream(target, chat))
        call.answered = True
        return relay.stream_response(call, relay.ChatSource(primed, call.cache_key))
    completion = adapter.complete(target, chat)
    call.upstream_done, call.answered = time.monotonic(), True
    respcache.store(call.cache_key, call.route, completion.body, completion.usage)
    return relay.json_response(call, completion, native=False)


def _from_cache(call: meter.Call, entry: dict[str, Any]) -> HttpResponseBase:
    """A response-cache hit (kept from a translated answer): billed at the hit price."""
    call.route = respcache.hit_route(call.route, entry)
    call.attempts, call.cache_hit = 0, True
    if call.chat.stream:
        return relay.stream_response(call, relay.ChatSource(respcache.Replay(entry, CHAT)))
    return relay.json_response(call, respcache.completion(entry), native=False)


@api_view("POST")
def responses_create(http: HttpRequest) -> HttpResponseBase:
    principal = auth.authenticate(http)
    body, previous_id = request.responses_body(http)
    history: list[dict[str, Any]] = []
    previous_pk, root_id = None, ""
    if previous_id is not None:
        previous, history = store.conversation(tenant_pk=principal.tenant_pk, response_id=previous_id)
        previous_pk, root_id = previous.pk, previous.root_id
    call = request.responses_request(body, history=history, previous_pk=previous_pk, root_id=root_id)
    try:
        return _run(http, principal, call, _answer, cached=_from_cache)
    except InvalidRequest as exc:
        if exc.param == "max_completion_tokens":  # admission reads chat's name for it
            exc.param = "max_output_tokens"
            exc.message = exc.message.replace("'max_completion_tokens'", "'max_output_tokens'")
        raise


@api_view("GET", "DELETE")
def response_detail(http: HttpRequest, response_id: str) -> HttpResponseBase:
    principal = auth.authenticate(http)
    if http.method == "DELETE":
        store.stored_response_delete(tenant_pk=principal.tenant_pk, response_id=response_id)
        return JsonResponse({"id": response_id, "object": "response", "deleted": True})
    row = store.stored_response_get(tenant_pk=principal.tenant_pk, response_id=response_id)
    return JsonResponse(row.body)


def _limit(http: HttpRequest) -> int:
    raw = http.GET.get("limit", "20")
    if not raw.isdigit() or not 1 <= int(raw) <= 100:
        raise InvalidRequest("'limit' must be an integer from 1 to 100.", param="limit")
    return int(raw)


@api_view("GET")
def response_input_items(http: HttpRequest, response_id: str) -> HttpResponseBase:
    """This response's input items, newest first by default (``order=asc`` for oldest
    first), paged with ``limit`` and ``after`` as OpenAI does."""
    principal = auth.authenticate(http)
    row = store.stored_response_get(tenant_pk=principal.tenant_pk, response_id=response_id)
    items = list(row.input_items)
    if http.GET.get("order", "desc") != "asc":
        items.reverse()
    after = http.GET.get("after")
    if after:
        ids = [item.get("id") for item in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    limit = _limit(http)
    page = items[:limit]
    return JsonResponse(
        {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else "",
            "last_id": page[-1]["id"] if page else "",
            "has_more": len(items) > limit,
        }
    )


@api_view("POST")
def response_input_tokens(http: HttpRequest) -> HttpResponseBase:
    """How many input tokens a request would use, by Tollway's own count (not any
    provider's tokenizer); not billed. A ``previous_response_id`` counts its history."""
    principal = auth.authenticate(http)
    body = request.json_body(http)
    if body.get("input") is not None:
        request.check_input(body)
    history: list[dict[str, Any]] = []
    if isinstance(body.get("previous_response_id"), str):
        _, history = store.conversation(tenant_pk=principal.tenant_pk, response_id=body["previous_response_id"])
    given = body.get("input") if body.get("input") is not None else []
    counted = request.responses_request(
        {**body, "model": str(body.get("model") or ""), "input": given}, history=history
    )
    return JsonResponse({"object": "response.input_tokens", "input_tokens": tokens.prompt_tokens(counted.messages)})

"""The OpenAI-compatible endpoints. Thin: each runs the request-path stages in order.

Authentication comes first, before the body is read: a caller without a valid key gets
401 whatever it sends, and cannot make Tollway read, let alone parse, a large body.

The hot path uses plain Django views rather than DRF: DRF's per-request negotiation and
wrapping cost more than the rest of the path, and these endpoints need none of it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import wraps
from typing import Any

from django.core.cache import cache
from django.db import connection
from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from billing import spool
from billing.ledger import UNREACHABLE
from config import lifecycle, redis
from config.errors import ErrorCode, InternalError, MethodNotAllowed, NotFound, TollwayError, database_unavailable
from proxy import adapters, admit, attempts, auth, meter, observe, parse, relay, respcache, route
from proxy.adapters.base import ChunkStream
from proxy.errors import error_response
from tenants.selectors import KeyPrincipal

log = logging.getLogger(__name__)

View = Callable[..., HttpResponseBase]


Render = Callable[[TollwayError, HttpRequest], HttpResponse]


def openai_error(exc: TollwayError, request: HttpRequest) -> HttpResponse:
    return error_response(exc)


def api_view(*methods: str, render: Render = openai_error) -> Callable[[View], View]:
    """Allow ``methods``, and turn any TollwayError into an OpenAI-shaped response (or
    whatever shape ``render`` gives: the Messages endpoints answer in Anthropic's).

    The database being unreachable (an outage, for a key or model not yet cached) is 503
    ``service_unavailable``. Any other exception is a bug in Tollway: it is logged with its
    traceback and answered 500 ``internal_error`` naming the request id, never as the
    provider's failure.
    """

    def decorator(view: View) -> View:
        @csrf_exempt
        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            try:
                if request.method not in methods:
                    raise MethodNotAllowed(f"{request.method} is not allowed here; use {' or '.join(methods)}.")
                return view(request, *args, **kwargs)
            except TollwayError as exc:
                observe.call_refused(
                    request, exc.status, str(exc.code), provider=getattr(request, "tollway_provider", None)
                )
                response = render(exc, request)
                if isinstance(exc, MethodNotAllowed):
                    response["Allow"] = ", ".join(methods)
                return response
            except UNREACHABLE as exc:  # an outage, not a bug: retry shortly
                request_id = getattr(request, "request_id", None)
                log.warning("database unreachable on %s (request %s): %r", request.path, request_id, exc)
                unavailable = database_unavailable()
                observe.call_refused(request, unavailable.status, str(unavailable.code))
                return render(unavailable, request)
            except Exception:
                return internal_error(request, render)

        return wrapper

    return decorator


Answer = Callable[[meter.Call, adapters.Adapter, dict[str, Any]], HttpResponseBase]


PROVIDER_HEADER = "x-tollway-provider"
ATTEMPTS_HEADER = "x-tollway-attempts"


def internal_error(request: HttpRequest, render: Render = openai_error) -> HttpResponse:
    """Log the exception being handled and answer 500 ``internal_error`` with the request id."""
    request_id = getattr(request, "request_id", None)
    log.exception("internal error on %s %s (request %s)", request.method, request.path, request_id)
    exc = InternalError(request_id)
    observe.call_refused(request, exc.status, str(exc.code))
    return render(exc, request)


def _run(
    request: HttpRequest,
    principal: KeyPrincipal,
    chat: parse.ChatRequest,
    answer: Answer,
    cached: Callable[[meter.Call, dict[str, Any]], HttpResponseBase] | None = None,
) -> HttpResponseBase:
    """Stages 3 to 7 for an authenticated, parsed request; ``answer`` calls the adapter
    and relays, ``cached`` answers a response-cache hit (chat's shapes by default).

    Every attempt (``proxy.attempts``) runs under the one admission: a failure before
    anything billable releases it once, and the call that answers writes the one ledger row.
    """
    auth.require_model(principal, chat.model)
    picker = attempts.Picker(route.plan(chat.model, allows=principal.allows_model))
    first = picker.next()
    if first is None:
        raise picker.unavailable()
    call = meter.Call(
        request_id=request.request_id,  # type: ignore[attr-defined]
        principal=principal,
        route=first,
        chat=chat,
        request_started=getattr(request, "started_at", time.monotonic()),
    )
    call.reserve_price = admit.reserve_price([price for _, price in picker.steps])
    call.plan_models = tuple(entry.model_pk for entry, _ in picker.steps)
    admission = admit.admit(call)

    def attempt(call: meter.Call) -> HttpResponseBase:
        target = call.route.target
        request.tollway_provider = target.provider_name  # type: ignore[attr-defined]  # for error metrics
        call.upstream_started = time.monotonic()
        return answer(call, adapters.for_kind(target.kind), chat.upstream_body(target.upstream_model))

    call.cache_key = respcache.key_for(chat, principal, respcache.mode(request, principal))
    try:
        hit = respcache.lookup(call.cache_key) if call.cache_key else None
        response = (cached or _from_cache)(call, hit) if hit is not None else attempts.run(call, picker, attempt)
    except BaseException:
        meter.release(call)  # unless the provider answered, nothing billable happened
        raise
    for name, value in admission.headers.items():
        response[name] = value
    response[PROVIDER_HEADER] = call.route.target.provider_name
    response[ATTEMPTS_HEADER] = str(call.attempts)
    if call.cache_key:
        response[respcache.HEADER] = "HIT" if hit is not None else "MISS"
    return response


def _from_cache(call: meter.Call, entry: dict[str, Any]) -> HttpResponseBase:
    """A response-cache hit: no upstream attempt, billed at the hit price, one ledger row."""
    call.route = respcache.hit_route(call.route, entry)
    call.attempts, call.cache_hit = 0, True
    if call.chat.stream:
        return relay.stream_response(call, respcache.Replay(entry, call.chat.endpoint))
    return relay.json_response(call, respcache.completion(entry))


def _complete(call: meter.Call, completion: adapters.Completion) -> HttpResponseBase:
    call.upstream_done = time.monotonic()
    call.answered = True
    respcache.store(call.cache_key, call.route, completion.body, completion.usage)
    return relay.json_response(call, completion)


def _streamed(call: meter.Call, stream: ChunkStream) -> HttpResponseBase:
    primed = attempts.primed(stream)  # the provider is answering: from here the call is billable
    call.answered = True
    return relay.stream_response(call, primed)


def _chat(call: meter.Call, adapter: adapters.Adapter, body: dict[str, Any]) -> HttpResponseBase:
    if call.chat.stream:
        return _streamed(call, adapter.stream(call.route.target, body))
    return _complete(call, adapter.complete(call.route.target, body))


def _text(call: meter.Call, adapter: adapters.Adapter, body: dict[str, Any]) -> HttpResponseBase:
    if call.chat.stream:
        return _streamed(call, adapter.text_stream(call.route.target, body))
    return _complete(call, adapter.text_complete(call.route.target, body))


def _embed(call: meter.Call, adapter: adapters.Adapter, body: dict[str, Any]) -> HttpResponseBase:
    return _complete(call, adapter.embed(call.route.target, body))


@api_view("POST")
def chat_completions(request: HttpRequest) -> HttpResponseBase:
    principal = auth.authenticate(request)
    return _run(request, principal, parse.chat_request(request), _chat)


@api_view("POST")
def completions(request: HttpRequest) -> HttpResponseBase:
    """The legacy text completions endpoint."""
    principal = auth.authenticate(request)
    return _run(request, principal, parse.completion_request(request), _text)


@api_view("POST")
def embeddings(request: HttpRequest) -> HttpResponseBase:
    principal = auth.authenticate(request)
    return _run(request, principal, parse.embedding_request(request), _embed)


def _model_object(listing: route.ModelListing) -> dict[str, Any]:
    return {"id": listing.name, "object": "model", "created": listing.created, "owned_by": listing.owned_by}


def _anthropic_client(request: HttpRequest) -> bool:
    """The anthropic SDKs and Claude Code send ``anthropic-version``: they get Anthropic's shapes."""
    return "anthropic-version" in request.headers


def _anthropic_model(listing: route.ModelListing) -> dict[str, Any]:
    created = datetime.fromtimestamp(listing.created, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"type": "model", "id": listing.name, "display_name": listing.name, "created_at": created}


def models_error(exc: TollwayError, request: HttpRequest) -> HttpResponse:
    if _anthropic_client(request):
        from proxy.messages import errors as anthropic_errors

        return anthropic_errors.error_response(exc, getattr(request, "request_id", None))
    return error_response(exc)


@api_view("GET", render=models_error)
def models_list(request: HttpRequest) -> HttpResponseBase:
    principal = auth.authenticate(request)
    listings = [m for m in route.listings.get("all") or () if principal.allows_model(m.name)]
    if _anthropic_client(request):
        data = [_anthropic_model(m) for m in listings]
        first, last = (data[0]["id"], data[-1]["id"]) if data else (None, None)
        return JsonResponse({"data": data, "has_more": False, "first_id": first, "last_id": last})
    return JsonResponse({"object": "list", "data": [_model_object(m) for m in listings]})


@api_view("GET", render=models_error)
def model_detail(request: HttpRequest, model: str) -> HttpResponseBase:
    principal = auth.authenticate(request)
    for listing in route.listings.get("all") or ():
        if listing.name == model and principal.allows_model(model):
            return JsonResponse(_anthropic_model(listing) if _anthropic_client(request) else _model_object(listing))
    raise NotFound(
        f"The model `{model}` does not exist or you do not have access to it.",
        param="model",
        code=ErrorCode.MODEL_NOT_FOUND,
    )


def health(request: HttpRequest) -> HttpResponse:
    """Liveness: the process answers. Checks nothing else, so a database outage does not
    make an orchestrator restart every replica."""
    return JsonResponse({"status": "ok"})


def ready(request: HttpRequest) -> HttpResponse:
    """Readiness: whether this worker should get new calls. 503 only when it is draining
    (SIGTERM, ``config/lifecycle.py``), so whatever probes it stops sending it work while
    its streams finish, or when neither the database nor the cache answers (it cannot
    serve at all).

    A database or a cache that is down alone answers 200 ``degraded``: every replica
    shares them, so failing readiness would take every pod out at once, while each one
    still serves (the ledger spools, budgets fall back to Postgres, caches to the
    database). The body says which check failed, and how many ledger rows wait in this
    replica's spool (``spool_rows``)."""
    if lifecycle.draining():
        return JsonResponse({"status": "draining"}, status=503)
    checks: dict[str, str] = {}
    try:
        if spool.ledger_down():  # a recent insert failed: do not wait on the pool again
            raise ConnectionError("the ledger is unreachable")
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
    except Exception as exc:  # any failure means not ready; say which
        log.warning("ready: database check failed: %r", exc)
        checks["database"] = "unavailable"
    try:
        if not redis.cache_ready():  # backing off after an outage: do not wait on it again
            raise ConnectionError("Redis is unreachable")
        cache.set("tw:ready", "1", 5)
        checks["cache"] = "ok" if cache.get("tw:ready") == "1" else "unavailable"
    except Exception as exc:
        log.warning("ready: cache check failed: %r", exc)
        checks["cache"] = "unavailable"
    failed = [name for name, state in checks.items() if state != "ok"]
    status = "ok" if not failed else "unavailable" if len(failed) == len(checks) else "degraded"
    return JsonResponse(
        {"status": status, "checks": checks, "spool_rows": spool.depth()},
        status=503 if status == "unavailable" else 200,
    )


def json_not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return error_response(
        NotFound(f"No endpoint {request.method} {request.path}. See /v1/models and /v1/chat/completions.")
    )


def json_server_error(request: HttpRequest) -> HttpResponse:
    """Django's handler500 on the API's paths (the exception was logged by Django)."""
    return error_response(InternalError(getattr(request, "request_id", None)))


def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus metrics, for internal networks only (nginx also restricts it)."""
    if not internal_client(request):
        return json_not_found(request)
    data, content_type = observe.exposition()
    return HttpResponse(data, content_type=content_type)


def internal_client(request: HttpRequest) -> bool:
    import ipaddress

    from django.conf import settings

    from tenants.auth import client_ip

    try:
        address = ipaddress.ip_address(client_ip(request))
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(n) for n in settings.TOLLWAY["METRICS_ALLOWED_NETWORKS"])

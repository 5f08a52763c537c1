"""The Messages endpoints. Thin, like ``proxy.views``: the same stages, in the same order,
with every error in Anthropic's shape."""

from __future__ import annotations

import logging

from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse

from config.errors import TollwayError, UpstreamError
from proxy import auth, route, tokens
from proxy.messages import call, errors, parse
from proxy.views import _run, api_view

log = logging.getLogger(__name__)

COUNT_HEADER = "x-tollway-token-count"  # "provider" or "estimate"


def anthropic_error(exc: TollwayError, request: HttpRequest) -> HttpResponse:
    return errors.error_response(exc, getattr(request, "request_id", None))


@api_view("POST", render=anthropic_error)
def messages(request: HttpRequest) -> HttpResponseBase:
    principal = auth.authenticate(request)
    return _run(request, principal, parse.messages_request(request), call.answer)


@api_view("POST", render=anthropic_error)
def count_tokens(request: HttpRequest) -> HttpResponseBase:
    """The prompt's size: the provider's count for an Anthropic deployment, Tollway's own
    estimate otherwise (or when the provider cannot answer); ``counted_by`` says which.
    Not billed, and not admitted against the rate limits: it generates nothing."""
    principal = auth.authenticate(request)
    chat = parse.messages_request(request, count_only=True)
    auth.require_model(principal, chat.model)
    entry, _ = route.plan(chat.model, allows=principal.allows_model)[0]
    counted_by, count = "estimate", None
    if entry.targets:
        target = route.pick_target(entry.targets)
        if target.kind == call.ANTHROPIC:
            try:
                count, counted_by = call.count_tokens(target, chat), "provider"
            except UpstreamError as exc:  # the provider is away: the estimate still answers
                log.info("count_tokens on %s failed (%s); answering Tollway's estimate", target.provider_name, exc.code)
    if count is None:
        count = tokens.prompt_tokens(chat.messages)
    response = JsonResponse({"input_tokens": count, "counted_by": counted_by})
    response[COUNT_HEADER] = counted_by
    response[errors.REQUEST_ID_HEADER] = getattr(request, "request_id", "")
    return response

"""Adapter for OpenAI-compatible providers: OpenAI, DeepSeek, vLLM, Ollama, aggregators."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any

import httpx

from config.errors import ErrorCode, InvalidRequest, RateLimited, TollwayError, UpstreamError
from proxy.adapters.base import Completion, decode_chunk, sse_data, usage_from_openai
from proxy.route import Target
from proxy.upstream import client

log = logging.getLogger(__name__)


def _upstream_message(content: bytes) -> str:
    try:
        data = json.loads(content)
    except ValueError:
        return ""
    error = data.get("error") if isinstance(data, Mapping) else None
    message = error.get("message") if isinstance(error, Mapping) else error
    return str(message)[:500] if message else ""


def error_for_status(target: Target, status: int, content: bytes, headers: Mapping[str, str]) -> TollwayError:
    """Map a provider's non-200 answer to what the client should see."""
    message = _upstream_message(content)
    log.warning("upstream %s answered %s: %s", target.provider_name, status, message or content[:200])
    if status in (400, 413, 422):
        # The request itself was refused: the client can fix it, so pass the reason on.
        return InvalidRequest(
            f"The upstream provider rejected the request: {message or 'no reason given'}",
            code=ErrorCode.UPSTREAM_REJECTED,
            status=status,
        )
    if status in (401, 403):
        return UpstreamError("The upstream provider refused Tollway's credentials.", code=ErrorCode.UPSTREAM_AUTH)
    if status == 429:
        retry_after = headers.get("retry-after")
        return RateLimited(
            "The upstream provider is rate limiting requests; retry shortly.",
            headers={"Retry-After": retry_after} if retry_after else {},
        )
    return UpstreamError(f"The upstream provider failed with HTTP {status}.")


def _transport_error(target: Target, exc: httpx.HTTPError, when: str) -> UpstreamError:
    log.warning("upstream %s %s: %r", target.provider_name, when, exc)
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamError(f"The upstream provider timed out {when}.", status=504)
    return UpstreamError(f"The upstream provider could not be reached {when}.")


class _Stream:
    def __init__(self, target: Target, response: httpx.Response) -> None:
        self.target = target
        self.response = response

    def __iter__(self) -> Iterator[dict[str, Any]]:
        try:
            for payload in sse_data(self.response.iter_lines()):
                if payload.strip() == "[DONE]":
                    return
                yield decode_chunk(payload)
        except httpx.HTTPError as exc:
            raise _transport_error(self.target, exc, "mid-stream") from None
        finally:
            self.close()
        raise UpstreamError("The upstream stream ended before it finished.", code=ErrorCode.UPSTREAM_BAD_RESPONSE)

    def close(self) -> None:
        self.response.close()


class OpenAIAdapter:
    def _request(self, target: Target, body: dict[str, Any]) -> httpx.Request:
        headers = {"Content-Type": "application/json"}
        if target.api_key_env:
            secret = os.environ.get(target.api_key_env)
            if not secret:
                log.error("provider %s: environment variable %s is not set", target.provider_name, target.api_key_env)
                raise UpstreamError("The upstream provider is not configured.", code=ErrorCode.UPSTREAM_AUTH)
            headers["Authorization"] = f"Bearer {secret}"
        url = target.base_url.rstrip("/") + "/chat/completions"
        return client().build_request("POST", url, content=json.dumps(body).encode(), headers=headers)

    def _send(self, target: Target, request: httpx.Request, *, stream: bool) -> httpx.Response:
        try:
            response = client().send(request, stream=stream)
        except httpx.HTTPError as exc:
            raise _transport_error(target, exc, "before answering") from None
        if response.status_code != 200:
            try:
                content = response.read()
            except httpx.HTTPError:
                content = b""
            finally:
                response.close()
            raise error_for_status(target, response.status_code, content, response.headers)
        return response

    def complete(self, target: Target, body: dict[str, Any]) -> Completion:
        response = self._send(target, self._request(target, body), stream=False)
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
            log.warning("upstream %s sent a non-completion body: %r", target.provider_name, response.content[:200])
            raise UpstreamError(
                "The upstream provider sent a response Tollway could not read.", code=ErrorCode.UPSTREAM_BAD_RESPONSE
            )
        return Completion(body=data, usage=usage_from_openai(data.get("usage")))

    def stream(self, target: Target, body: dict[str, Any]) -> _Stream:
        response = self._send(target, self._request(target, body), stream=True)
        if "text/event-stream" not in response.headers.get("content-type", ""):
            response.close()
            raise UpstreamError(
                "The upstream provider did not answer with a stream.", code=ErrorCode.UPSTREAM_BAD_RESPONSE
            )
        return _Stream(target, response)

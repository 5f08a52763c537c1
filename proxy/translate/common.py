"""Small pieces every translation shares: usage, text, tool-call ids and arguments."""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from typing import Any

from billing.pricing import TokenUsage
from config.errors import InvalidRequest


def openai_usage(usage: TokenUsage, *, reasoning_tokens: int | None = None) -> dict[str, Any]:
    """TokenUsage as OpenAI's ``usage`` object (for translated providers).

    ``reasoning_tokens``, when the provider counts them apart (Gemini's
    ``thoughtsTokenCount``), goes to ``completion_tokens_details``; they are part of
    ``completion_tokens`` either way, as in OpenAI's own answers.
    """
    body: dict[str, Any] = {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
    }
    if usage.cached_input_tokens or usage.cache_write_tokens:
        body["prompt_tokens_details"] = {"cached_tokens": usage.cached_input_tokens}
        if usage.cache_write_tokens:
            body["prompt_tokens_details"]["cache_write_tokens"] = usage.cache_write_tokens
    if reasoning_tokens:
        body["completion_tokens_details"] = {"reasoning_tokens": reasoning_tokens}
    return body


def text_of(content: Any) -> str:
    """A message's text: the string, or its ``text`` parts joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, Mapping) and p.get("type") == "text")
    return ""


def new_tool_call_id() -> str:
    """A tool-call id unique to this call (OpenAI's ``call_`` + 24 characters)."""
    return "call_" + secrets.token_hex(12)


def arguments(raw: Any) -> Any:
    """A tool call's JSON-string ``arguments`` as a value; a clear 400 if it is not JSON."""
    try:
        return json.loads(raw) if isinstance(raw, str) and raw else {}
    except ValueError:
        raise InvalidRequest("A tool call's 'arguments' is not valid JSON.", param="messages") from None


def json_text(value: Any) -> str:
    """A value as compact JSON text, as OpenAI writes ``arguments``."""
    return json.dumps(value, ensure_ascii=False)

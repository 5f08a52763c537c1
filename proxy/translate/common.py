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


def usage_with_details(input_tokens: int, output_tokens: int, details: Any) -> TokenUsage:
    """Checked token counts with the provider's input details (``cached_tokens``,
    ``cache_write_tokens``): malformed details count as none, and neither can exceed the
    input it is part of. OpenAI's ``prompt_tokens_details`` and the Responses API's
    ``input_tokens_details`` share this shape."""
    cached = write = 0
    if isinstance(details, Mapping):
        cached = details.get("cached_tokens") or 0
        write = details.get("cache_write_tokens") or 0
        if not isinstance(cached, int) or not isinstance(write, int) or cached < 0 or write < 0:
            cached = write = 0
    return TokenUsage(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cached_input_tokens=min(cached, input_tokens),
        cache_write_tokens=min(write, max(input_tokens - cached, 0)),
    )


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


def functions(tools: Any) -> list[Mapping[str, Any]]:
    """The ``function`` of each tool in ``tools``; a 400 naming the tool if one is malformed."""
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise InvalidRequest("'tools' must be an array of tool objects.", param="tools")
    out: list[Mapping[str, Any]] = []
    for index, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, Mapping) else None
        if not isinstance(function, Mapping) or not isinstance(function.get("name"), str) or not function["name"]:
            raise InvalidRequest(
                f'tools[{index}] must be {{"type": "function", "function": {{"name": ...}}}}.',
                param=f"tools[{index}]",
            )
        parameters = function.get("parameters")
        if parameters is not None and not isinstance(parameters, Mapping):
            raise InvalidRequest("A tool's 'parameters' must be a JSON Schema object.", param=f"tools[{index}]")
        out.append(function)
    return out


def tool_calls(message: Mapping[str, Any], index: int) -> list[Mapping[str, Any]]:
    """An assistant message's tool calls, each with a ``function`` object; a 400 otherwise."""
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list) or not all(
        isinstance(c, Mapping) and isinstance(c.get("function"), Mapping) for c in calls
    ):
        raise InvalidRequest(
            f'messages[{index}].tool_calls must be an array of {{"id", "type", "function"}} objects.',
            param=f"messages[{index}].tool_calls",
        )
    return calls


def json_schema_of(response_format: Any) -> Mapping[str, Any] | None:
    """The schema of a ``json_schema`` response format; a 400 if it is missing or not an object."""
    spec = response_format.get("json_schema") if isinstance(response_format, Mapping) else None
    schema = spec.get("schema") if isinstance(spec, Mapping) else None
    if (spec is not None and not isinstance(spec, Mapping)) or (schema is not None and not isinstance(schema, Mapping)):
        raise InvalidRequest(
            "'response_format.json_schema.schema' must be a JSON Schema object.", param="response_format"
        )
    return schema


def effort_of(body: Mapping[str, Any]) -> str | None:
    effort = body.get("reasoning_effort")
    if effort is not None and not isinstance(effort, str):
        raise InvalidRequest("'reasoning_effort' must be a string.", param="reasoning_effort")
    return effort


def stop_sequences(stop: Any) -> list[str]:
    if isinstance(stop, str):
        return [stop] if stop else []
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return list(stop)
    raise InvalidRequest("'stop' must be a string or an array of strings.", param="stop")

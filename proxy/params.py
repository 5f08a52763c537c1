"""The documented request parameters, type- and range-checked before anything else runs.

Part of stage 1 (``proxy.parse``). The types and ranges come from OpenAI's published
OpenAPI document (github.com/openai/openai-openapi, ``openapi.yaml`` version 2.3.0:
``CreateChatCompletionRequest``, ``CreateCompletionRequest``, ``CreateEmbeddingRequest``
and the schemas they reference). A wrong type or an out-of-range value is a 400 that names
the parameter, so ``temperature: "hot"`` no longer reaches a provider that may take it
for its default.

What is checked, and what is not, on purpose:

* types and numeric ranges, and the shape of the structured parameters (``tools``,
  ``tool_choice``, ``response_format``, ``stop``, ``stream_options``, ``metadata``…);
* ``null`` is accepted for every optional parameter (SDKs send it for "unset");
* the values of open-ended string enums (``reasoning_effort``, ``service_tier``,
  ``verbosity``, a ``response_format`` or tool ``type``) are not: providers add values
  faster than any table, and an OpenAI-compatible provider may take values OpenAI does
  not; a provider refuses what it does not know itself;
* parameters not in the table pass through untouched to OpenAI-compatible providers.

Tollway's own bounds sit beside OpenAI's where a client could otherwise make a request
as large as it likes: ``n`` and ``best_of`` (OpenAI's 128 and 20), ``dimensions``
(``TOLLWAY_MAX_EMBEDDING_DIMENSIONS``), ``max_tokens`` (``MAX_OUTPUT_TOKENS_CEILING``,
the model's own cap being checked at admission), ``stop`` (16 sequences), the inputs of
an embedding request (OpenAI's 2,048).

Each check is a plain function of (name, value): one dictionary lookup per parameter the
request carries, so a typical body costs a few microseconds (``bench/parse_bench.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from django.conf import settings

from config.errors import InvalidRequest

Check = Callable[[str, Any], None]

# No model outputs more than this in one call (the largest caps today are ~128k); a
# request above it is refused before the model's own cap (admission) is even looked up,
# so no caller can hand an unbounded number to the admission script.
MAX_OUTPUT_TOKENS_CEILING = 1 << 24
MAX_CHOICES = 128  # OpenAI's own limit on n
MAX_BEST_OF = 20
MAX_STOP_SEQUENCES = 16  # OpenAI takes 4; other OpenAI-compatible servers take more
MAX_EMBEDDING_INPUTS = 2048  # OpenAI's limit on the inputs of one request
MAX_TOKEN_ID = (1 << 32) - 1
SEED_RANGE = (-(1 << 63), (1 << 63) - 1)


def shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _refuse(name: str, expected: str, value: Any) -> InvalidRequest:
    return InvalidRequest(f"'{name}' must be {expected}; got {shown(value)}.", param=name)


def _is_int(value: Any) -> bool:
    return type(value) is int  # not bool, a subclass of int


def _is_number(value: Any) -> bool:
    return type(value) is int or type(value) is float


# --- building blocks --------------------------------------------------------------------


def number(low: float, high: float) -> Check:
    def check(name: str, value: Any) -> None:
        if value is not None and not ((type(value) is float or type(value) is int) and low <= value <= high):
            raise _refuse(name, f"a number from {low:g} to {high:g}", value)

    return check


def integer(low: int, high: int | Callable[[], int]) -> Check:
    """An integer in [low, high]; ``high`` may be read from the settings at check time."""

    def check(name: str, value: Any) -> None:
        if value is None:
            return
        if type(value) is not int or value < low:
            raise _refuse(name, f"an integer of at least {low}", value)
        top = high() if callable(high) else high
        if value > top:
            raise InvalidRequest(f"'{name}' is {value}, above the limit of {top}.", param=name)

    return check


def boolean(name: str, value: Any) -> None:
    if value is not None and type(value) is not bool:
        raise _refuse(name, "true or false", value)


def string(name: str, value: Any) -> None:
    if value is not None and type(value) is not str:
        raise _refuse(name, "a string", value)


def short_string(limit: int) -> Check:
    def check(name: str, value: Any) -> None:
        string(name, value)
        if isinstance(value, str) and len(value) > limit:
            raise InvalidRequest(f"'{name}' is longer than {limit} characters.", param=name)

    return check


def one_of(*choices: str) -> Check:
    def check(name: str, value: Any) -> None:
        if value is not None and value not in choices:
            raise _refuse(name, "one of " + ", ".join(repr(c) for c in choices), value)

    return check


def obj(name: str, value: Any) -> None:
    if value is not None and not isinstance(value, dict):
        raise _refuse(name, "an object", value)


def strings(name: str, value: Any) -> None:
    if value is not None and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        raise _refuse(name, "an array of strings", value)


def _field(owner: str, value: Mapping[str, Any], key: str, check: Check, *, required: bool = False) -> None:
    """Check ``value[key]`` as ``owner.key`` (the param the error names)."""
    name = f"{owner}.{key}"
    if key not in value:
        if required:
            raise InvalidRequest(f"Missing required parameter: '{name}'.", param=name)
        return
    check(name, value[key])


def _typed_object(name: str, value: Any) -> dict[str, Any]:
    """An object with a string ``type`` (tools, tool choices, response formats)."""
    if not isinstance(value, dict):
        raise _refuse(name, "an object", value)
    if not isinstance(value.get("type"), str):
        raise _refuse(f"{name}.type", "a string", value.get("type"))
    return value


def _named(owner: str, value: Any) -> None:
    """An object with a string ``name`` (a function, a custom tool, a forced choice)."""
    if not isinstance(value, dict):
        raise _refuse(owner, "an object", value)
    _field(owner, value, "name", _name_string, required=True)


def _name_string(name: str, value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise _refuse(name, "a non-empty string", value)


# --- the structured parameters ----------------------------------------------------------


def stop(name: str, value: Any) -> None:
    if value is None or isinstance(value, str):
        return
    if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        raise _refuse(name, "a string or an array of strings", value)
    if len(value) > MAX_STOP_SEQUENCES:
        raise InvalidRequest(f"'{name}' holds {len(value)} sequences; at most {MAX_STOP_SEQUENCES}.", param=name)


def stream_options(name: str, value: Any) -> None:
    if value is None:
        return
    obj(name, value)
    for key in ("include_usage", "include_obfuscation"):
        flag = value.get(key)
        if flag is not None and type(flag) is not bool:
            raise _refuse(f"{name}.{key}", "true or false", flag)


def string_map(name: str, value: Any) -> None:
    """``metadata``: string keys to string values."""
    if value is not None and not (isinstance(value, dict) and all(isinstance(v, str) for v in value.values())):
        raise _refuse(name, "an object whose values are strings", value)


def logit_bias(name: str, value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        raise _refuse(name, "an object of token ids to biases", value)
    for token, bias in value.items():
        if not (_is_number(bias) and -100 <= bias <= 100):
            raise _refuse(f"{name}.{token}", "a number from -100 to 100", bias)


def function(owner: str, value: Any) -> None:
    _named(owner, value)
    _field(owner, value, "description", string)
    _field(owner, value, "parameters", obj)
    _field(owner, value, "strict", boolean)


def _plain_function(tool: Any) -> bool:
    """The common case, checked in one expression: a function tool with a name, and
    parameters (if any) an object. Anything else goes through :func:`_tool`."""
    if type(tool) is not dict or tool.get("type") != "function":
        return False
    spec = tool.get("function")
    if type(spec) is not dict or type(spec.get("name")) is not str or not spec["name"]:
        return False
    parameters = spec.get("parameters")
    return parameters is None or type(parameters) is dict


def _tool(name: str, tool: Any) -> None:
    kind = _typed_object(name, tool)["type"]
    if kind == "function":
        _field(name, tool, "function", function, required=True)
    elif kind == "custom":
        _field(name, tool, "custom", _named, required=True)


def tools(name: str, value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, list):
        raise _refuse(name, "an array of tools", value)
    for index, tool in enumerate(value):
        if not _plain_function(tool):
            _tool(f"{name}[{index}]", tool)
        else:
            spec = tool["function"]
            if "description" in spec or "strict" in spec:
                _field(f"{name}[{index}].function", spec, "description", string)
                _field(f"{name}[{index}].function", spec, "strict", boolean)


def tool_choice(name: str, value: Any) -> None:
    if value is None or value in ("none", "auto", "required"):
        return
    if isinstance(value, str):
        raise _refuse(name, "'none', 'auto', 'required' or an object", value)
    kind = _typed_object(name, value)["type"]
    if kind == "function":
        _field(name, value, "function", _named, required=True)
    elif kind == "custom":
        _field(name, value, "custom", _named, required=True)
    elif kind == "allowed_tools":
        _field(name, value, "allowed_tools", obj, required=True)


def functions(name: str, value: Any) -> None:
    """The deprecated ``functions`` list."""
    if value is None:
        return
    if not isinstance(value, list) or not 1 <= len(value) <= 128:
        raise _refuse(name, "an array of 1 to 128 functions", value)
    for index, item in enumerate(value):
        function(f"{name}[{index}]", item)


def function_call(name: str, value: Any) -> None:
    if value is None or value in ("none", "auto"):
        return
    if isinstance(value, str):
        raise _refuse(name, "'none', 'auto' or an object", value)
    _named(name, value)


def response_format(name: str, value: Any) -> None:
    if value is None:
        return
    if _typed_object(name, value)["type"] == "json_schema":
        schema = value.get("json_schema")
        if not isinstance(schema, dict):
            raise _refuse(f"{name}.json_schema", "an object", schema)
        _field(f"{name}.json_schema", schema, "name", _name_string, required=True)
        _field(f"{name}.json_schema", schema, "schema", obj)
        _field(f"{name}.json_schema", schema, "strict", boolean)


def prediction(name: str, value: Any) -> None:
    if value is None:
        return
    _typed_object(name, value)
    content = value.get("content")
    if not isinstance(content, str | list):
        raise _refuse(f"{name}.content", "a string or an array of text parts", content)


def max_dimensions() -> int:
    return int(settings.TOLLWAY["MAX_EMBEDDING_DIMENSIONS"])


# --- the tables -------------------------------------------------------------------------

_OUTPUT = integer(1, MAX_OUTPUT_TOKENS_CEILING)
_PENALTY = number(-2, 2)

_SAMPLING: dict[str, Check] = {
    "temperature": number(0, 2),
    "top_p": number(0, 1),
    "frequency_penalty": _PENALTY,
    "presence_penalty": _PENALTY,
    "n": integer(1, MAX_CHOICES),
    "seed": integer(*SEED_RANGE),
    "stop": stop,
    "logit_bias": logit_bias,
    "stream_options": stream_options,
    "user": string,
}

CHAT: dict[str, Check] = {
    **_SAMPLING,
    "max_tokens": _OUTPUT,
    "max_completion_tokens": _OUTPUT,
    "logprobs": boolean,
    "top_logprobs": integer(0, 20),
    "tools": tools,
    "tool_choice": tool_choice,
    "parallel_tool_calls": boolean,
    "functions": functions,
    "function_call": function_call,
    "response_format": response_format,
    "reasoning_effort": string,
    "service_tier": string,
    "verbosity": string,
    "modalities": strings,
    "store": boolean,
    "metadata": string_map,
    "safety_identifier": short_string(64),
    "prompt_cache_key": string,
    "prompt_cache_retention": string,
    "prediction": prediction,
    "audio": obj,
    "web_search_options": obj,
    "moderation": obj,
    "prompt_cache_options": obj,
}

COMPLETIONS: dict[str, Check] = {
    **_SAMPLING,
    "max_tokens": integer(0, MAX_OUTPUT_TOKENS_CEILING),  # 0 with echo scores a prompt
    "logprobs": integer(0, 5),
    "best_of": integer(0, MAX_BEST_OF),
    "echo": boolean,
    "suffix": string,
}

EMBEDDINGS: dict[str, Check] = {
    "encoding_format": one_of("float", "base64"),
    "dimensions": integer(1, max_dimensions),
    "user": string,
}


def check(body: Mapping[str, Any], table: Mapping[str, Check]) -> None:
    """Raise InvalidRequest, naming the parameter, for the first documented parameter of
    ``body`` with a wrong type or value. Parameters not in ``table`` pass."""
    for name, value in body.items():
        checker = table.get(name)
        if checker is not None:
            checker(name, value)

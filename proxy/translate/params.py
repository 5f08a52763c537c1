"""What happens to each OpenAI chat parameter on a provider Tollway translates for.

An ``openai`` provider gets the body as sent. For ``anthropic`` and ``gemini``, every
top-level parameter has a :class:`Rule`:

* **translated**: the provider gets its own equivalent (``proxy.translate.<kind>``);
* **ignored**: dropped, for a documented reason that means the answer does not change
  in a way the client relies on (``store``: neither provider keeps transcripts for you);
* **refused**: a 400 that names the parameter, before any upstream call, because
  dropping it would change the answer silently (``logit_bias``, ``n > 1`` on Anthropic).

A value that means "not asked for" (``null``, ``n: 1``, ``logprobs: false``, a zero
penalty, ``logit_bias: {}``) is never refused. A parameter Tollway does not know is
refused too: it might matter. A provider with ``drop_unsupported_params`` set (its admin
page, or ``drop_unsupported_params: true`` in the catalog) drops what would be refused
instead, like LiteLLM's ``drop_params``.

The README's parameter table is this module in prose; ``tests/proxy/test_params.py``
checks that it names every parameter here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from config.errors import ErrorCode, InvalidRequest

log = logging.getLogger(__name__)


class Fate(StrEnum):
    TRANSLATED = "translated"
    IGNORED = "ignored"
    REFUSED = "refused"


def _unset(value: Any) -> bool:
    return value is None


def _falsy(value: Any) -> bool:
    return value is None or value is False or value == 0 or value == {} or value == []


@dataclass(frozen=True)
class Rule:
    fate: Fate
    why: str  # the reason, for an ignored or refused parameter; what it becomes, if translated
    neutral: Callable[[Any], bool] = _unset  # values that ask for nothing: never refused


def translated(becomes: str) -> Rule:
    return Rule(Fate.TRANSLATED, becomes)


def ignored(why: str) -> Rule:
    return Rule(Fate.IGNORED, why)


def refused(why: str, neutral: Callable[[Any], bool] = _unset) -> Rule:
    return Rule(Fate.REFUSED, why, neutral)


def _text_only(value: Any) -> bool:
    return value is None or value == ["text"]


# Parameters every translation carries.
_COMMON: dict[str, Rule] = {
    "model": translated("the deployment's upstream model"),
    "messages": translated("the provider's conversation shape"),
    "stream": translated("the provider's stream"),
    "stream_options": translated("usage is always requested; the usage chunk is sent if asked"),
    "max_tokens": translated("the provider's output limit"),
    "max_completion_tokens": translated("the provider's output limit"),
    "temperature": translated("the same"),
    "top_p": translated("the same"),
    "top_k": translated("the same (an extension both providers have)"),
    "stop": translated("stop sequences"),
    "tools": translated("the provider's tool declarations"),
    "tool_choice": translated("the provider's tool choice"),
    "response_format": translated("the provider's structured output"),
    "reasoning_effort": translated("a thinking budget"),
}
_NO_STORE = ignored("asks OpenAI to keep the completion for its dashboard; the provider keeps nothing for you")
_NO_METADATA = ignored("OpenAI's tags for stored completions; nothing is stored")
_NO_TIER = ignored(
    "picks an OpenAI processing tier; the provider serves at its standard tier, and Tollway bills its own price"
)
_NO_PREDICTION = ignored("a latency hint (predicted output); the answer does not depend on it")
_NO_CACHE_KEY = ignored("an OpenAI prompt-cache routing hint; the provider caches by its own rules")
_REFUSED_COMMON: dict[str, Rule] = {
    "logit_bias": refused("no token-level bias on this provider", _falsy),
    "audio": refused("no audio output through this translation"),
    "modalities": refused("text is the only output modality through this translation", _text_only),
    "web_search_options": refused("web search is not translated; use an OpenAI-compatible provider for it"),
    "functions": refused("the deprecated 'functions' is not translated; send 'tools'", _falsy),
    "function_call": refused("the deprecated 'function_call' is not translated; send 'tool_choice'"),
    "verbosity": refused("no verbosity control on this provider", lambda v: v is None or v == "medium"),
}

RULES: dict[str, dict[str, Rule]] = {
    "anthropic": {
        **_COMMON,
        **_REFUSED_COMMON,
        "n": refused("Anthropic returns one choice per call", lambda v: v is None or v == 1),
        "logprobs": refused("Anthropic returns no logprobs", _falsy),
        "top_logprobs": refused("Anthropic returns no logprobs", _falsy),
        "presence_penalty": refused("Anthropic has no penalties", _falsy),
        "frequency_penalty": refused("Anthropic has no penalties", _falsy),
        "seed": ignored("OpenAI documents seed as best effort; Anthropic has none, so the answer is as without it"),
        "user": translated("metadata.user_id"),
        "safety_identifier": translated("metadata.user_id (when 'user' is absent)"),
        "parallel_tool_calls": translated("tool_choice.disable_parallel_tool_use"),
        "service_tier": _NO_TIER,
        "store": _NO_STORE,
        "metadata": _NO_METADATA,
        "prediction": _NO_PREDICTION,
        "prompt_cache_key": _NO_CACHE_KEY,
        "prompt_cache_retention": _NO_CACHE_KEY,
    },
    "gemini": {
        **_COMMON,
        **_REFUSED_COMMON,
        "n": translated("generationConfig.candidateCount"),
        "logprobs": translated("generationConfig.responseLogprobs"),
        "top_logprobs": translated("generationConfig.logprobs"),
        "presence_penalty": translated("generationConfig.presencePenalty"),
        "frequency_penalty": translated("generationConfig.frequencyPenalty"),
        "seed": translated("generationConfig.seed"),
        "user": ignored("Gemini's API has no end-user id"),
        "safety_identifier": ignored("Gemini's API has no end-user id"),
        "parallel_tool_calls": ignored("Gemini has no switch for it; a turn may hold several calls either way"),
        "service_tier": _NO_TIER,
        "store": _NO_STORE,
        "metadata": _NO_METADATA,
        "prediction": _NO_PREDICTION,
        "prompt_cache_key": _NO_CACHE_KEY,
        "prompt_cache_retention": _NO_CACHE_KEY,
    },
}
NAMES = {"anthropic": "Anthropic", "gemini": "Gemini"}


def apply(body: Mapping[str, Any], *, kind: str, drop: bool) -> dict[str, Any]:
    """``body`` with only what ``kind``'s translation carries: ignored parameters left out,
    refused ones a 400 naming them (or, with ``drop``, left out too)."""
    rules = RULES[kind]
    out: dict[str, Any] = {}
    for name, value in body.items():
        rule = rules.get(name)
        if rule is not None and rule.fate == Fate.TRANSLATED:
            out[name] = value
        elif rule is not None and (rule.fate == Fate.IGNORED or rule.neutral(value)):
            continue
        elif drop:
            log.debug("dropping '%s' for a %s provider (drop_unsupported_params)", name, kind)
        elif rule is None:
            raise InvalidRequest(
                f"Unknown parameter '{name}' for this model's provider ({NAMES[kind]}). Remove it, or ask the "
                "operator to set drop_unsupported_params on the provider.",
                param=name,
                code=ErrorCode.UNSUPPORTED,
            )
        else:
            raise InvalidRequest(
                f"'{name}' is not supported by this model's provider ({NAMES[kind]}): {rule.why}.",
                param=name,
                code=ErrorCode.UNSUPPORTED,
            )
    return out

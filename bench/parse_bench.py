"""Parse benchmark: stage 1 (``proxy.parse``) on typical bodies, in a tight loop.

Every call runs the parse stage, so its validation must stay cheap. This times
``parse.chat_request`` / ``completion_request`` / ``embedding_request`` on a request built
once (the body is decoded and checked each time, as on every real call), and prints the
best and median microseconds per call over several rounds:

    DEBUG=1 .venv/bin/python bench/parse_bench.py [--loops 20000]

No database or Redis is needed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("DEBUG", "1")

import django

django.setup()

import orjson  # noqa: E402

from proxy import parse  # noqa: E402

# The benchmark's own body, what an SDK sends for a short chat turn, and a tool-using
# agent's longer one.
BODIES: dict[str, tuple[str, dict[str, Any]]] = {
    # bench/run.py's P1 body
    "chat, P1": (
        "chat",
        {"model": "bench-instant", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 16},
    ),
    "chat, short": (
        "chat",
        {
            "model": "gpt-4.1",
            "messages": [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "Say hello in three words."},
            ],
            "temperature": 0.2,
            "max_tokens": 64,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    ),
    "chat, tools": (
        "chat",
        {
            "model": "gpt-4.1",
            "messages": [
                {"role": "system", "content": "You are an agent. " * 40},
                {"role": "user", "content": [{"type": "text", "text": "What is the weather in Paris? " * 10}]},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21, "sky": "clear"}'},
            ]
            + [{"role": "user", "content": "and tomorrow? " * 5}, {"role": "assistant", "content": "Sunny. " * 20}] * 8,
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": f"tool_{i}",
                        "description": "Looks something up.",
                        "parameters": {
                            "type": "object",
                            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                            "required": ["city"],
                            "additionalProperties": False,
                        },
                    },
                }
                for i in range(8)
            ],
            "tool_choice": "auto",
            "temperature": 0.7,
            "top_p": 0.9,
            "max_completion_tokens": 1024,
            "user": "user-1234",
        },
    ),
    "completions": ("completions", {"model": "gpt-4.1", "prompt": "Once upon a time", "max_tokens": 32}),
    "embeddings": ("embeddings", {"model": "gpt-4.1", "input": ["first text", "second text"], "dimensions": 256}),
}

PARSERS = {"chat": parse.chat_request, "completions": parse.completion_request, "embeddings": parse.embedding_request}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loops", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    for label, (kind, body) in BODIES.items():
        raw = orjson.dumps(body)
        parse_one = PARSERS[kind]
        request: Any = SimpleNamespace(body=raw)  # the stage reads only the body
        rounds = []
        for _ in range(args.rounds):
            started = time.perf_counter()
            for _ in range(args.loops):
                parse_one(request)
            rounds.append((time.perf_counter() - started) / args.loops * 1e6)
        print(f"{label:14s} {len(raw):6d} bytes  {min(rounds):7.2f} us/parse  (median {statistics.median(rounds):.2f})")


if __name__ == "__main__":
    main()

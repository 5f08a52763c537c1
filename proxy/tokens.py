"""Tollway's own token count: used by the mock provider, and to estimate usage when an
upstream reports none (a stream cut before its usage chunk).

It is not any provider's tokenizer. A token is a run of word characters or one
punctuation character, which lands within a small factor of BPE counts for English.
Kept free of Django so the standalone mock upstream can import it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

TOKEN = re.compile(r"\w+|[^\w\s]")
# A token with the white space before it: the pieces a stream sends, one per chunk.
PIECE = re.compile(r"\s*(?:\w+|[^\w\s])")
PER_MESSAGE = 4  # role and separators, as OpenAI's chat format counts them
PER_REPLY = 3  # priming of the assistant's reply
PER_IMAGE = 85  # OpenAI's flat charge for a low-detail image


def count(text: str) -> int:
    return len(TOKEN.findall(text))


def pieces(text: str) -> list[str]:
    return PIECE.findall(text)


def content_text(content: Any) -> tuple[str, int]:
    """The text of a message's content (a string or a list of parts) and its image count."""
    if isinstance(content, str):
        return content, 0
    texts: list[str] = []
    images = 0
    if isinstance(content, list):
        for part in content:
            if not isinstance(part, Mapping):
                continue
            if part.get("type") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif part.get("type") in ("image_url", "input_image"):
                images += 1
    return " ".join(texts), images


def prompt_tokens(messages: Iterable[Mapping[str, Any]]) -> int:
    total = PER_REPLY
    for message in messages:
        text, images = content_text(message.get("content"))
        total += PER_MESSAGE + count(text) + images * PER_IMAGE
        if isinstance(message.get("name"), str):
            total += count(message["name"])
    return total

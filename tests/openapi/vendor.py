"""Cut the schemas Tollway's conformance tests use out of OpenAI's OpenAPI document.

    python tests/openapi/vendor.py path/to/openapi.json > tests/openapi/openai.json

The document is ``openapi.json`` of https://github.com/openai/openai-openapi (version and
commit recorded in the output). Only the named roots and what they reference are kept,
with ``$ref`` rewritten to ``#/$defs/<name>`` so ``jsonschema`` can resolve them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOTS = [
    "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse",
    "CreateCompletionResponse",
    "CreateEmbeddingResponse",
    "ListModelsResponse",
    "Model",
    "ErrorResponse",
    "Response",
    "ResponseStreamEvent",
    "ResponseItemList",
    "TokenCountsResource",
]


def _refs(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
            found.add(ref.rsplit("/", 1)[1])
        for value in node.values():
            found |= _refs(value)
    elif isinstance(node, list):
        for value in node:
            found |= _refs(value)
    return found


def _rewrite(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            k: (v.replace("#/components/schemas/", "#/$defs/") if k == "$ref" and isinstance(v, str) else _rewrite(v))
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_rewrite(v) for v in node]
    return node


def main(path: str, commit: str = "") -> None:
    document = json.loads(Path(path).read_text())
    schemas = document["components"]["schemas"]
    keep: set[str] = set()
    todo = list(ROOTS)
    while todo:
        name = todo.pop()
        if name in keep:
            continue
        keep.add(name)
        todo.extend(_refs(schemas[name]) - keep)
    out = {
        "source": "https://github.com/openai/openai-openapi/blob/master/openapi.json",
        "version": document["info"]["version"],
        "commit": commit,
        "roots": ROOTS,
        "$defs": {name: _rewrite(schemas[name]) for name in sorted(keep)},
    }
    json.dump(out, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(*sys.argv[1:])

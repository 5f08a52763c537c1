"""OpenAI's published response schemas (``openai.json``, cut from the OpenAPI document by
``vendor.py``; version and commit inside), as ``jsonschema`` validators.

The document is OpenAPI 3.1 but still writes some nullable fields the 3.0 way
(``type: string, nullable: true``); :func:`_nullable` turns those into JSON Schema's
``type: [string, "null"]`` (and a nullable ``$ref`` into ``anyOf`` with ``null``) so a
``null`` the document allows is not an error.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

DOCUMENT = json.loads((Path(__file__).parent / "openai.json").read_text())


def _nullable(node: Any) -> Any:
    if isinstance(node, dict):
        node = {k: _nullable(v) for k, v in node.items()}
        if node.pop("nullable", False) is True:
            if "$ref" in node:
                return {"anyOf": [{"$ref": node.pop("$ref")}, {"type": "null"}], **node}
            if isinstance(node.get("type"), str):
                node["type"] = [node["type"], "null"]
            if isinstance(node.get("enum"), list):
                node["enum"] = [*node["enum"], None]
        return node
    if isinstance(node, list):
        return [_nullable(v) for v in node]
    return node


@cache
def _validator(name: str) -> jsonschema.Draft202012Validator:
    schema = {"$defs": _nullable(DOCUMENT["$defs"]), "$ref": f"#/$defs/{name}"}
    return jsonschema.Draft202012Validator(schema)


def validate(name: str, instance: Any) -> None:
    """Raise ``jsonschema.ValidationError`` unless ``instance`` matches schema ``name``."""
    _validator(name).validate(instance)


def version() -> str:
    return f"{DOCUMENT['version']} ({DOCUMENT['commit'][:12]})"

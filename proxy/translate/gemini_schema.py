"""JSON Schema (as OpenAI tools carry it) to the subset Gemini takes in
``functionDeclarations[].parameters``.

Gemini's ``Schema`` is an OpenAPI 3.0 subset: ``type``, ``format``, ``title``,
``description``, ``nullable``, ``enum``, ``items``, ``minItems``/``maxItems``,
``properties``, ``required``, ``minProperties``/``maxProperties``, ``minimum``/``maximum``,
``minLength``/``maxLength``, ``pattern``, ``example``, ``anyOf``, ``propertyOrdering``,
``default``. It answers 400 to anything else, and clients send plenty else: the AI SDK
puts ``$schema`` and ``additionalProperties: false`` on every tool, Pydantic and Zod
emit ``$defs``/``$ref``, LangChain's strict mode ``additionalProperties``.

So: ``$ref`` is inlined from ``$defs``/``definitions`` (a recursive reference, which
Gemini cannot express, becomes a plain object with its description kept); ``type:
[x, "null"]`` and ``anyOf`` with a ``null`` branch become ``nullable``; ``const`` becomes a
one-value ``enum``; ``allOf`` of one schema is merged; ``enum`` is kept on strings only
(Gemini rejects it elsewhere); an array without ``items`` gets ``items: {}`` as an
object; and every other keyword is dropped. The input is never modified.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from config.errors import InvalidRequest

KEEP = frozenset(
    {
        "type",
        "format",
        "title",
        "description",
        "nullable",
        "enum",
        "items",
        "minItems",
        "maxItems",
        "properties",
        "required",
        "minProperties",
        "maxProperties",
        "minimum",
        "maximum",
        "minLength",
        "maxLength",
        "pattern",
        "example",
        "anyOf",
        "propertyOrdering",
        "default",
    }
)
# The string formats Gemini documents; others (uri, email…) are dropped, not refused.
FORMATS = frozenset({"enum", "date-time", "int32", "int64", "float", "double"})
MAX_DEPTH = 64


def to_gemini(schema: Any, *, param: str = "tools") -> dict[str, Any]:
    """``schema`` in Gemini's subset (a new dict); a 400 naming ``param`` if it is not a
    JSON Schema object or nests deeper than Gemini could take."""
    if not isinstance(schema, Mapping):
        raise InvalidRequest("A tool's 'parameters' must be a JSON Schema object.", param=param)
    defs: dict[str, Any] = {}
    for key in ("$defs", "definitions"):
        if isinstance(schema.get(key), Mapping):
            defs.update({f"#/{key}/{name}": value for name, value in schema[key].items()})
    out = _convert(schema, defs, (), 0, param)
    out.setdefault("type", "object")
    return out


def _resolve(
    node: Mapping[str, Any], defs: dict[str, Any], seen: tuple[str, ...]
) -> tuple[Mapping[str, Any], tuple[str, ...]]:
    ref = node.get("$ref")
    if not isinstance(ref, str):
        return node, seen
    if ref in seen or ref not in defs:
        # Recursive (or unresolvable): Gemini has no references, so the loop is cut here.
        keep = {k: node[k] for k in ("description", "title") if k in node}
        return {"type": "object", **keep}, seen
    target = defs[ref]
    merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}} if isinstance(target, Mapping) else {}
    return _resolve(merged, defs, (*seen, ref))


def _convert(node: Any, defs: dict[str, Any], seen: tuple[str, ...], depth: int, param: str) -> dict[str, Any]:
    if depth > MAX_DEPTH:
        raise InvalidRequest(f"A tool's JSON Schema nests deeper than {MAX_DEPTH} levels.", param=param)
    if not isinstance(node, Mapping):
        return {}
    node, seen = _resolve(node, defs, seen)
    node = dict(node)
    nullable = False
    all_of = node.pop("allOf", None)
    if isinstance(all_of, list) and len(all_of) == 1 and isinstance(all_of[0], Mapping):
        inner, seen = _resolve(all_of[0], defs, seen)
        node = {**inner, **node}
    any_of = node.pop("anyOf", None) or node.pop("oneOf", None)
    if isinstance(any_of, list):
        branches = [b for b in any_of if not (isinstance(b, Mapping) and b.get("type") == "null")]
        nullable = len(branches) < len(any_of)
        if len(branches) == 1:
            node = {**_resolve(branches[0], defs, seen)[0], **node} if isinstance(branches[0], Mapping) else node
        elif branches:
            node["anyOf"] = branches
    kind = node.get("type")
    if isinstance(kind, list):
        types = [t for t in kind if t != "null"]
        nullable = nullable or len(types) < len(kind)
        if len(types) == 1:
            node["type"] = types[0]
        else:
            del node["type"]
            node["anyOf"] = [{"type": t} for t in types]
    if "const" in node and "enum" not in node:
        node["enum"] = [node["const"]]
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key not in KEEP:
            continue
        if key == "properties" and isinstance(value, Mapping):
            out[key] = {name: _convert(sub, defs, seen, depth + 1, param) for name, sub in value.items()}
        elif key == "items":
            out[key] = _convert(value, defs, seen, depth + 1, param) if isinstance(value, Mapping) else {}
        elif key == "anyOf" and isinstance(value, list):
            out[key] = [_convert(sub, defs, seen, depth + 1, param) for sub in value]
        elif key == "format" and value not in FORMATS:
            continue
        else:
            out[key] = value
    if "enum" in out and (out.get("type", "string") != "string" or not isinstance(out["enum"], list)):
        del out["enum"]  # Gemini takes enums of strings only
    elif "enum" in out:
        out["enum"] = [str(v) for v in out["enum"] if v is not None]
        out["type"] = "string"
    if out.get("type") == "array" and not out.get("items"):
        out["items"] = {"type": "object"}
    if "properties" in out:
        out.setdefault("type", "object")
        if not out["properties"]:
            del out["properties"]
        if isinstance(out.get("required"), list):
            out["required"] = [r for r in out["required"] if r in out.get("properties", {})]
            if not out["required"]:
                del out["required"]
    elif "required" in out:
        del out["required"]
    if nullable:
        out["nullable"] = True
    if not out.get("type") and "anyOf" not in out:
        out["type"] = "object"  # Gemini needs a type; an unconstrained value is closest to an object
    return out

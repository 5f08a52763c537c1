"""One load client process of the fault suite: ``python -m tests.faults.load SPEC CLIENT OUT``.

It runs every lane of the spec (``harness.Lane``) in its own threads, each sending one
request after another, alternating the replicas, until the stop file appears. Every
request is tagged in the body's ``user`` field (the mock upstream counts calls by it) and
classified by what the client got:

* ``ok``: a complete JSON answer with its usage, or a stream that ended with ``[DONE]``;
* ``stream_error``: a stream that ended with an SSE error event (``{"error": …}``);
* ``error``: a non-200 answer with OpenAI's error shape (its ``code`` is kept);
* ``broken``: anything else: no answer, a body that is not OpenAI's, a stream cut short.

Results go to OUT as JSON lines, one per request, when the client stops.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ERROR_KEYS = {"message", "type", "param", "code"}


def _openai_error(data: Any) -> str | None:
    """The error's code if ``data`` has OpenAI's error shape, else None."""
    if isinstance(data, dict) and isinstance(data.get("error"), dict) and set(data["error"]) >= ERROR_KEYS:
        return str(data["error"]["code"])
    return None


def classify_json(response: httpx.Response) -> tuple[str, str | None, str]:
    try:
        data = response.json()
    except ValueError:
        return "broken", None, f"not JSON: {response.text[:200]!r}"
    if response.status_code == 200:
        ok = isinstance(data, dict) and isinstance(data.get("choices"), list) and isinstance(data.get("usage"), dict)
        return ("ok", None, "") if ok else ("broken", None, f"200 without choices or usage: {str(data)[:200]}")
    code = _openai_error(data)
    return ("error", code, "") if code is not None else ("broken", None, f"not OpenAI's error shape: {str(data)[:200]}")


def classify_stream(response: httpx.Response) -> tuple[str, str | None, str]:
    if response.status_code != 200:
        response.read()
        return classify_json(response)
    events: list[str] = []
    buffer = ""
    for text in response.iter_text():
        buffer += text
        while "\n\n" in buffer:
            block, buffer = buffer.split("\n\n", 1)
            for line in block.splitlines():
                if line.startswith("data: "):
                    events.append(line[len("data: ") :])
    if not events:
        return "broken", None, "a stream with no events"
    last = events[-1]
    if last == "[DONE]":
        return "ok", None, ""
    try:
        code = _openai_error(json.loads(last))
    except ValueError:
        code = None
    if code is not None:
        return "stream_error", code, ""
    return "broken", None, f"stream cut after {len(events)} events: {last[:120]!r}"


def run_lane(spec: dict[str, Any], client: str, lane: dict[str, Any], thread: int, out: list[dict[str, Any]]) -> None:
    bases: list[str] = spec["bases"]
    stop = Path(spec["stop_file"])
    deadline = time.monotonic() + float(spec["max_seconds"])
    headers = {"Authorization": f"Bearer {lane['key']}"}
    clients = [httpx.Client(base_url=base, timeout=60.0, headers=headers) for base in bases]
    i = 0
    try:
        while not stop.exists() and time.monotonic() < deadline:
            i += 1
            tag = f"{client}-{lane['name']}-{thread}-{i}"
            stream = bool(lane["stream_every"]) and i % int(lane["stream_every"]) == 0
            body = {**lane["body"], "user": tag}
            if stream:
                body.update(stream=True, stream_options={"include_usage": True})
            http = clients[(i + thread) % len(clients)]
            start = time.time()
            status, request_id = 0, None
            try:
                if stream:
                    with http.stream("POST", "/v1/chat/completions", json=body) as response:
                        status, request_id = response.status_code, response.headers.get("x-request-id")
                        kind, code, detail = classify_stream(response)
                else:
                    response = http.post("/v1/chat/completions", json=body)
                    status, request_id = response.status_code, response.headers.get("x-request-id")
                    kind, code, detail = classify_json(response)
            except httpx.HTTPError as exc:
                kind, code, detail = "broken", None, f"{type(exc).__name__}: {exc}"
            out.append(
                {
                    "client": client,
                    "lane": lane["name"],
                    "tag": tag,
                    "start": start,
                    "end": time.time(),
                    "status": status,
                    "kind": kind,
                    "code": code,
                    "request_id": request_id,
                    "detail": detail,
                }
            )
            if lane["pause"]:
                time.sleep(float(lane["pause"]))
    finally:
        for http in clients:
            http.close()


def main(argv: list[str]) -> None:
    spec_path, client, out_path = argv
    spec = json.loads(Path(spec_path).read_text())
    results: list[dict[str, Any]] = []
    threads = [
        threading.Thread(target=run_lane, args=(spec, client, lane, n, results), daemon=True)
        for lane in spec["lanes"]
        for n in range(int(lane["threads"]))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    Path(out_path).write_text("".join(json.dumps(r) + "\n" for r in results))


if __name__ == "__main__":
    main(sys.argv[1:])

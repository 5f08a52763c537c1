"""openai-node and the Vercel AI SDK (``tests/node/``, exact versions in its committed
``package-lock.json``, installed with ``npm ci`` into ``tests/node/node_modules``, never
globally) against live Tollway on gunicorn, with a loopback upstream of each kind."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from proxy.models import Provider
from tenants import services
from tests.conftest import ROOT, Catalog, Upstream, stop
from tests.e2e.conftest import serve

NODE = ROOT / "tests" / "node"
pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(
        shutil.which("node") is None or shutil.which("npm") is None,
        reason="Node.js 20+ and npm are needed (apt-get install nodejs npm; .ci/run installs them)",
    ),
]


def installed() -> None:
    """``npm ci`` when node_modules is missing or older than the lock file."""
    stamp = NODE / "node_modules" / ".package-lock.json"
    if stamp.exists() and stamp.stat().st_mtime >= (NODE / "package-lock.json").stat().st_mtime:
        return
    subprocess.run(["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund"], cwd=NODE, check=True, timeout=600)


@pytest.fixture
def gateway(
    production_env: dict[str, str],
    catalog: Catalog,
    mock_upstream: Upstream,
    anthropic_upstream: Upstream,
    gemini_upstream: Upstream,
) -> Iterator[str]:
    installed()
    add = catalog.add_http_model
    add("vllm-finish", mock_upstream, "mock-usage-on-finish")
    add("vllm-every", mock_upstream, "mock-usage-on-every")
    add("gpt-embed", mock_upstream, "text-embedding-3-small", ("0.02", "0"))
    add("claude", anthropic_upstream, "claude-sonnet-4-20250514", kind=Provider.Kind.ANTHROPIC)
    add("gemini", gemini_upstream, "gemini-2.5-flash", kind=Provider.Kind.GEMINI)
    add("gemini-embed", gemini_upstream, "gemini-embedding-001", ("0.15", "0"), kind=Provider.Kind.GEMINI)
    proc, base = serve(production_env)
    try:
        yield base
    finally:
        stop(proc)


def test_openai_node_and_the_ai_sdk(gateway: str, key: services.CreatedKey) -> None:
    env = {**os.environ, "TOLLWAY_BASE_URL": gateway, "TOLLWAY_API_KEY": key.plaintext}
    result = subprocess.run(
        ["node", "--test", "--test-reporter=spec", "clients.test.mjs"],
        cwd=NODE,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    # every test ran (a file that failed to load would report none)
    assert "ℹ pass 6" in result.stdout and "ℹ fail 0" in result.stdout, result.stdout[-3000:]

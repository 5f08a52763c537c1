"""The Kubernetes manifests (deploy/k8s), offline: kustomize renders the base and the
production overlay, every object validates against the API schema of pinned Kubernetes
versions (strict: an unknown field fails), and the objects say what the docs promise.

No cluster runs here. The graceful stop itself is tested with real gunicorn in
tests/e2e/test_graceful_stop.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]  # ships no type hints
import pytest
import yaml

from tests.conftest import ROOT

K8S = ROOT / "deploy" / "k8s"
OVERLAY = K8S / "overlays" / "production"
# The oldest Kubernetes the manifests claim to run on, and the newest schema we have.
K8S_VERSIONS = ("1.30", "1.37")
Doc = dict[str, Any]


def kustomize_command() -> list[str]:
    """kustomize itself, or kubectl's built-in copy (both v5 here). .ci/run installs a
    kubectl when the machine has neither (.ci/kubectl)."""
    if found := shutil.which("kustomize"):
        return [found, "build"]
    for kubectl in (shutil.which("kubectl"), str(ROOT / "var" / "tools" / "kubectl")):
        if kubectl and os.access(kubectl, os.X_OK):
            return [kubectl, "kustomize"]
    message = "neither kustomize nor kubectl is installed: run .ci/kubectl (CI does)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def render(tmp_path: Path, target: str) -> list[Doc]:
    """``kustomize build`` of deploy/k8s/<target>, from a copy in which the overlay's
    gitignored secrets.env is its committed example, as a fresh clone would fill it in."""
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy, ignore=shutil.ignore_patterns("secrets.env"))
    example = copy / "overlays" / "production" / "secrets.env.example"
    shutil.copy(example, example.with_name("secrets.env"))
    result = subprocess.run(
        [*kustomize_command(), str(copy / target)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> list[Doc]:
    return render(tmp_path_factory.mktemp("base"), "base")


@pytest.fixture(scope="module")
def production(tmp_path_factory: pytest.TempPathFactory) -> list[Doc]:
    return render(tmp_path_factory.mktemp("production"), "overlays/production")


def one(docs: list[Doc], kind: str, name: str) -> Doc:
    def named(doc: Doc) -> bool:  # generated ConfigMaps and Secrets carry a hash suffix
        actual = doc["metadata"]["name"]
        return actual == name or (kind in ("ConfigMap", "Secret") and actual.rsplit("-", 1)[0] == name)

    found = [d for d in docs if d["kind"] == kind and named(d)]
    assert len(found) == 1, f"{len(found)} {kind} named {name}"
    return found[0]


def pod_templates(docs: list[Doc]) -> Iterator[tuple[Doc, Doc]]:
    for doc in docs:
        if doc["kind"] in ("Deployment", "Job"):
            yield doc, doc["spec"]["template"]


def container(doc: Doc, name: str) -> Doc:
    return next(c for c in doc["spec"]["template"]["spec"]["containers"] if c["name"] == name)


def env_of(docs: list[Doc]) -> dict[str, str]:
    """What every Tollway container gets: the ConfigMap, then the Secret."""
    config = one(docs, "ConfigMap", "tollway-config")["data"]
    secrets = next((d for d in docs if d["kind"] == "Secret"), None)
    decoded = {}
    if secrets:
        import base64

        decoded = {k: base64.b64decode(v).decode() for k, v in secrets.get("data", {}).items()}
    return {**config, **decoded}


# --- Schemas ---------------------------------------------------------------------------


def validate_service_monitor(doc: Doc) -> None:
    """The Prometheus Operator's ServiceMonitor type (not a built-in Kubernetes kind, so
    kubernetes-validate has no schema for it): parse it with the operator's generated
    models, and fail on any field the models do not know, as the strict schemas do."""
    from cloudcoil.models.prometheus_operator.v1 import ServiceMonitor

    parsed = ServiceMonitor.model_validate(doc).model_dump(by_alias=True, exclude_unset=True, mode="json")

    def unknown(given: Any, kept: Any, path: str) -> list[str]:
        if isinstance(given, dict):
            return [
                p
                for key, value in given.items()
                for p in ([f"{path}.{key}"] if key not in kept else unknown(value, kept[key], f"{path}.{key}"))
            ]
        if isinstance(given, list):
            return [p for i, (g, k) in enumerate(zip(given, kept, strict=True)) for p in unknown(g, k, f"{path}[{i}]")]
        return []

    assert unknown(doc, parsed, "") == []


@pytest.mark.parametrize("target", ["base", "production"])
def test_every_object_validates_against_the_kubernetes_api_schema(target: str, request: pytest.FixtureRequest) -> None:
    docs: list[Doc] = request.getfixturevalue(target)
    assert len(docs) > 15
    for doc in docs:
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["apiVersion"] == "monitoring.coreos.com/v1":
            validate_service_monitor(doc)
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{where} against Kubernetes {version}: {'.'.join(map(str, exc.path))}: {exc.message}")
            except kubernetes_validate.SchemaNotFoundError as exc:
                pytest.fail(f"{where}: {exc.message}")  # never skipped silently


def test_the_validators_catch_a_mistake(production: list[Doc]) -> None:
    web = json.loads(json.dumps(one(production, "Deployment", "tollway-web")))
    web["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/ready"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(web, K8S_VERSIONS[0], strict=True)
    monitor = json.loads(json.dumps(one(production, "ServiceMonitor", "tollway-web")))
    monitor["spec"]["endpoints"][0]["intervall"] = "30s"
    with pytest.raises(AssertionError):
        validate_service_monitor(monitor)


def test_every_reference_resolves_and_every_pod_is_locked_down(production: list[Doc]) -> None:
    names = {(d["kind"], d["metadata"]["name"]) for d in production}
    assert all(d["metadata"].get("namespace") == "tollway" for d in production if d["kind"] != "Namespace")
    for doc, template in pod_templates(production):
        spec = template["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["automountServiceAccountToken"] is False
        assert ("ServiceAccount", spec["serviceAccountName"]) in names
        for c in spec.get("initContainers", []) + spec["containers"]:
            assert c["image"] == "registry.example.com/tollway:1.0.0", c["image"]
            assert c["securityContext"]["readOnlyRootFilesystem"] is True
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
            assert "memory" in c["resources"]["limits"]
            for source in c["envFrom"]:
                kind, ref = (
                    ("ConfigMap", source["configMapRef"])
                    if "configMapRef" in source
                    else ("Secret", source["secretRef"])
                )
                assert (kind, ref["name"]) in names, f"{doc['metadata']['name']} reads a missing {kind} {ref['name']}"


# --- What the objects promise -------------------------------------------------------------


def test_web_probes_and_graceful_stop_match_gunicorn(production: list[Doc]) -> None:
    web = one(production, "Deployment", "tollway-web")
    spec = web["spec"]["template"]["spec"]
    c = container(web, "web")
    assert c["args"] == ["web"]
    assert (c["readinessProbe"]["httpGet"]["path"], c["livenessProbe"]["httpGet"]["path"]) == ("/ready", "/health")
    assert c["readinessProbe"]["httpGet"]["port"] == c["livenessProbe"]["httpGet"]["port"] == c["ports"][0]["name"]
    # gunicorn as the container runs it, with the ConfigMap's environment
    env = env_of(production)
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json, runpy; c = runpy.run_path('config/gunicorn.py'); "
            "c['worker_class'] = [k.__name__ for k in c['worker_class'].__mro__]; "
            "print(json.dumps({k: c[k] for k in ('graceful_timeout', 'drain_seconds', 'workers', 'worker_class')}))",
        ],
        cwd=ROOT,
        env={"PATH": os.environ["PATH"], "TOLLWAY_VAR_DIR": "/tmp/tollway-k8s-test", **env},
        capture_output=True,
        text=True,
        check=True,
    )
    gunicorn = json.loads(loaded.stdout)
    assert "GeventWorker" in gunicorn["worker_class"]  # gunicorn's gevent worker (config/gunicorn.py's Worker)
    assert gunicorn["workers"] == 2  # production: one worker per requested CPU
    assert c["resources"]["requests"]["cpu"] == "2"
    pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    # The pod is killed only after the preStop sleep and gunicorn's whole graceful timeout
    # (which includes the drain), with a margin.
    assert 0 < gunicorn["drain_seconds"] < gunicorn["graceful_timeout"]
    assert spec["terminationGracePeriodSeconds"] >= int(pre_stop[1]) + gunicorn["graceful_timeout"] + 5
    # No replica count: the HPA owns it. Rollouts never lower capacity.
    assert "replicas" not in web["spec"]
    assert web["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    # Django accepts the pod's own address (probes, Prometheus) and the public name.
    hosts = {e["name"]: e for e in c["env"]}["ALLOWED_HOSTS"]["value"]
    assert hosts.split(",")[:2] == ["$(TOLLWAY_PUBLIC_HOST)", "$(POD_IP)"]


def test_hpa_scales_the_web_replicas_at_70_percent_cpu(production: list[Doc], base: list[Doc]) -> None:
    for docs in (base, production):
        hpa = one(docs, "HorizontalPodAutoscaler", "tollway-web")["spec"]
        assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "tollway-web"}
        (metric,) = hpa["metrics"]
        assert metric["resource"]["name"] == "cpu"
        assert metric["resource"]["target"] == {"type": "Utilization", "averageUtilization": 70}
        assert 2 <= hpa["minReplicas"] < hpa["maxReplicas"]
        assert hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300
    assert one(production, "HorizontalPodAutoscaler", "tollway-web")["spec"]["minReplicas"] == 3


def test_disruption_budgets_cover_the_web_and_worker_pods(production: list[Doc]) -> None:
    for component in ("web", "worker"):
        pdb = one(production, "PodDisruptionBudget", f"tollway-{component}")["spec"]
        deployment = one(production, "Deployment", f"tollway-{component}")
        assert selects(pdb["selector"], deployment["spec"]["template"]["metadata"]["labels"])
        assert pdb["maxUnavailable"] == 1


def test_beat_runs_exactly_once_and_the_worker_on_its_own(production: list[Doc]) -> None:
    beat = one(production, "Deployment", "tollway-beat")
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"] == {"type": "Recreate"}
    assert container(beat, "beat")["args"] == ["beat"]
    worker = one(production, "Deployment", "tollway-worker")
    assert container(worker, "worker")["args"] == ["worker"]
    assert worker["spec"]["replicas"] == 3


def test_migrations_run_as_a_job_that_new_pods_wait_for(production: list[Doc]) -> None:
    job = one(production, "Job", "tollway-migrate")
    assert container(job, "migrate")["args"] == ["python", "manage.py", "migrate", "--noinput"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert job["metadata"]["annotations"]["argocd.argoproj.io/hook"] == "PreSync"
    for name in ("tollway-web", "tollway-worker"):
        (gate,) = one(production, "Deployment", name)["spec"]["template"]["spec"]["initContainers"]
        assert "manage.py migrate --check" in gate["args"][-1]


# --- ingress-nginx carries nginx/nginx.conf.template's settings -----------------------------


def nginx_template() -> tuple[dict[str, str], dict[str, str]]:
    """The server-level proxy directives and the completions location's, from the template."""
    text = (ROOT / "nginx" / "nginx.conf.template").read_text()
    server = text[text.index("# --- To the replicas.") : text.index("location /v1/")]
    stream = re.search(r"location ~ \^/v1/\(chat/\)\?completions\$ \{(.*?)\n\s*\}", text, re.S)
    assert stream

    def directives(block: str) -> dict[str, str]:
        return dict(re.findall(r"^\s*(proxy_\w+|client_max_body_size)\s+([^;]+);", block, re.M))

    return directives(server), directives(stream.group(1))


def seconds(value: str) -> str:
    return str(int(value.removesuffix("s")))


def nginx_size(value: str) -> int:
    units = {"k": 1024, "m": 1024**2, "g": 1024**3}
    return int(value[:-1]) * units[value[-1].lower()] if value[-1].isalpha() else int(value)


def env_example() -> dict[str, str]:
    lines = (ROOT / "docker" / ".env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))


def test_the_ingress_streams_and_limits_as_the_nginx_template_does(production: list[Doc]) -> None:
    server, stream = nginx_template()
    defaults = env_example()
    body_bytes = int(env_of(production)["TOLLWAY_MAX_BODY_BYTES"])
    assert body_bytes == int(defaults["TOLLWAY_MAX_BODY_BYTES"])
    rate = defaults["TOLLWAY_NGINX_RATE"].removesuffix("r/s")
    main, streaming = one(production, "Ingress", "tollway")["metadata"], one(production, "Ingress", "tollway-stream")
    for ingress, read_timeout in (
        (main, server["proxy_read_timeout"]),
        (streaming["metadata"], defaults["TOLLWAY_NGINX_STREAM_TIMEOUT"]),
    ):
        a = {k.removeprefix("nginx.ingress.kubernetes.io/"): v for k, v in ingress["annotations"].items()}
        assert nginx_size(a["proxy-body-size"]) == body_bytes
        assert a["proxy-connect-timeout"] == seconds(server["proxy_connect_timeout"])
        assert a["proxy-read-timeout"] == a["proxy-send-timeout"] == seconds(read_timeout)
        # no re-sent POST: the same retry rule as the template, without non_idempotent
        assert a["proxy-next-upstream"] == server["proxy_next_upstream"] == "error timeout"
        assert a["proxy-next-upstream-tries"] == server["proxy_next_upstream_tries"]
        assert a["proxy-next-upstream-timeout"] == seconds(server["proxy_next_upstream_timeout"])
        assert a["limit-rps"] == rate
        assert int(a["limit-rps"]) * int(a["limit-burst-multiplier"]) == int(defaults["TOLLWAY_NGINX_BURST"])
        assert a["limit-connections"] == defaults["TOLLWAY_NGINX_CONN_LIMIT"]
    assert "${TOLLWAY_NGINX_STREAM_TIMEOUT}" in stream["proxy_read_timeout"]
    assert stream["proxy_buffering"] == "off"
    assert streaming["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    # exactly the paths the template streams: /v1/(chat/)?completions, and their /api aliases
    paths = {p["path"]: p["pathType"] for p in streaming["spec"]["rules"][0]["http"]["paths"]}
    assert paths == {
        f"{prefix}/{path}": "Exact" for prefix in ("/v1", "/api/v1") for path in ("chat/completions", "completions")
    }
    # /metrics is closed at the edge: Prometheus scrapes the pods
    closed = one(production, "Ingress", "tollway-metrics-closed")
    assert closed["spec"]["rules"][0]["http"]["paths"][0] | {"backend": None} == {
        "path": "/metrics",
        "pathType": "Exact",
        "backend": None,
    }
    assert closed["metadata"]["annotations"]["nginx.ingress.kubernetes.io/denylist-source-range"] == "0.0.0.0/0,::/0"
    for doc in production:
        if doc["kind"] == "Ingress":
            assert doc["spec"]["ingressClassName"] == "nginx"
            assert doc["spec"]["tls"][0]["secretName"] == "tollway-tls"


def test_the_service_monitor_scrapes_metrics_on_the_web_service(production: list[Doc]) -> None:
    monitor = one(production, "ServiceMonitor", "tollway-web")["spec"]
    service = one(production, "Service", "tollway-web")
    assert selects(monitor["selector"], service["metadata"]["labels"])
    (endpoint,) = monitor["endpoints"]
    assert endpoint["path"] == "/metrics"
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    web = one(production, "Deployment", "tollway-web")
    assert selects({"matchLabels": service["spec"]["selector"]}, web["spec"]["template"]["metadata"]["labels"])


# --- NetworkPolicies -------------------------------------------------------------------------


def selects(selector: Doc, labels: dict[str, str]) -> bool:
    """A Kubernetes label selector, evaluated as the API server does."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        value, op = labels.get(expr["key"]), expr["operator"]
        if (
            (op == "In" and value not in expr["values"])
            or (op == "NotIn" and value in expr["values"])
            or (op == "Exists" and value is None)
            or (op == "DoesNotExist" and value is not None)
        ):
            return False
    return True


def admitted(policies: list[Doc], target: dict[str, str], port: int, source: dict[str, str]) -> bool:
    """Whether a pod labelled ``source`` in the same namespace may open ``port`` on a pod
    labelled ``target``: allowed when no policy isolates the target, or one admits it."""
    isolating = [p for p in policies if selects(p["spec"]["podSelector"], target)]
    if not isolating:
        return True
    return any(
        selects(peer["podSelector"], source)
        for p in isolating
        for rule in p["spec"].get("ingress", [])
        if any(x["port"] == port for x in rule.get("ports", [{"port": port}]))
        for peer in rule.get("from", [])
        if "podSelector" in peer and "namespaceSelector" not in peer
    )


def test_only_the_web_and_worker_pods_reach_postgres_and_redis(production: list[Doc]) -> None:
    policies = [d for d in production if d["kind"] == "NetworkPolicy"]
    pods = {
        t["metadata"]["labels"]["app.kubernetes.io/component"]: t["metadata"]["labels"]
        for _, t in pod_templates(production)
    }
    assert set(pods) == {"web", "worker", "beat", "migrate"}
    stranger = {"app.kubernetes.io/name": "something-else"}
    postgres, redis = {"app.kubernetes.io/name": "postgresql"}, {"app.kubernetes.io/name": "redis"}
    may_reach_postgres = {c for c, labels in pods.items() if admitted(policies, postgres, 5432, labels)}
    may_reach_redis = {c for c, labels in pods.items() if admitted(policies, redis, 6379, labels)}
    assert may_reach_postgres == {"web", "worker", "migrate"}  # migrate: the schema; beat needs none
    assert may_reach_redis == {"web", "worker", "beat"}  # beat: the Celery broker
    assert not admitted(policies, postgres, 5432, stranger)
    assert not admitted(policies, redis, 6379, stranger)
    # nothing in the namespace reaches the web pods directly; worker and beat take nothing
    assert not admitted(policies, pods["web"], 8000, stranger)
    for component in ("worker", "beat", "migrate"):
        assert not admitted(policies, pods[component], 8000, pods["web"])
    web_policy = one(production, "NetworkPolicy", "tollway-web")["spec"]["ingress"][0]["from"]
    assert {peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for peer in web_policy} == {
        "ingress-nginx",
        "monitoring",
    }


# --- Configuration and secrets -------------------------------------------------------------


def test_no_secret_is_committed_and_the_example_fails_loudly(production: list[Doc], base: list[Doc]) -> None:
    assert not [d for d in base if d["kind"] == "Secret"]
    ignored = subprocess.run(["git", "check-ignore", "-q", str(OVERLAY / "secrets.env")], cwd=ROOT, check=False)
    assert ignored.returncode == 0, "secrets.env must be gitignored"
    # The pods, given the example as it is, refuse to start and say what is missing.
    env = env_of(production)
    assert env["SECRET_KEY"] == ""
    started = subprocess.run(
        [
            sys.executable,
            "-c",
            "import django, os; os.environ['DJANGO_SETTINGS_MODULE'] = 'config.settings'; django.setup()",
        ],
        cwd=ROOT,
        env={"PATH": os.environ["PATH"], "TOLLWAY_VAR_DIR": "/tmp/tollway-k8s-test", **env},
        capture_output=True,
        text=True,
        check=False,
    )
    assert started.returncode != 0
    assert "SECRET_KEY is not set" in started.stderr
    assert ".invalid" in env["DATABASE_URL"] and ".invalid" in env["REDIS_URL"]

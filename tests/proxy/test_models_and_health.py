"""GET /v1/models, /v1/models/{id}, /health and /ready."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.test import Client

from billing.models import Model, Price
from tests.conftest import Api, Catalog

pytestmark = pytest.mark.django_db


def test_models_lists_what_the_key_can_use(api: Api, catalog: Catalog) -> None:
    # an unpriced model and one without deployments are not offered
    Model.objects.create(name="unpriced")
    orphan = Model.objects.create(name="no-deployment")
    Price.objects.create(model=orphan, input_per_mtok=Decimal(1), output_per_mtok=Decimal(1))

    response = api.get("/v1/models")

    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["deepseek-v3", "gpt-4.1"]
    assert all(m["object"] == "model" and isinstance(m["created"], int) for m in body["data"])


def test_model_detail(api: Api, catalog: Catalog) -> None:
    response = api.get("/v1/models/gpt-4.1")
    assert response.status_code == 200
    assert response.json()["id"] == "gpt-4.1"
    missing = api.get("/v1/models/gpt-9")
    assert missing.status_code == 404
    # the same code chat answers for an unknown model, so a client branches once
    assert (missing.json()["error"]["param"], missing.json()["error"]["code"]) == ("model", "model_not_found")
    assert api.chat({"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]}).json()["error"]["code"] == (
        "model_not_found"
    )


def test_models_needs_a_key(client: Client, catalog: Catalog) -> None:
    response = client.get("/v1/models")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


def test_models_under_seed_prefix(api: Api, catalog: Catalog) -> None:
    assert api.get("/api/v1/models").json()["data"]


def test_new_model_appears_without_restart(api: Api, catalog: Catalog) -> None:
    assert [m["id"] for m in api.get("/v1/models").json()["data"]] == ["deepseek-v3", "gpt-4.1"]
    model = Model.objects.create(name="gpt-4.1-mini")
    Price.objects.create(model=model, input_per_mtok=Decimal(2), output_per_mtok=Decimal(8))
    model.deployments.create(provider=catalog.mock, upstream_model="gpt-4.1-mini")
    assert "gpt-4.1-mini" in [m["id"] for m in api.get("/v1/models").json()["data"]]


def test_health(client: Client) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_ready_checks_database_and_cache(client: Client, db: None) -> None:
    response = client.get("/ready")
    assert response.status_code == 200
    assert response.json()["checks"] == {"database": "ok", "cache": "ok"}


def test_ready_stays_200_when_only_redis_is_down(client: Client, db: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every replica shares Redis: if readiness failed on it, every pod would be taken out at
    once while each could still serve (caches fall back to the database)."""
    from django.core.cache import cache

    monkeypatch.setattr(cache, "get", lambda *args, **kwargs: None)
    response = client.get("/ready")
    assert response.status_code == 200
    assert response.json()["status"] == "degraded"
    assert response.json()["checks"] == {"database": "ok", "cache": "unavailable"}

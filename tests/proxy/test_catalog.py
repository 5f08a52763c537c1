"""importcatalog: the catalog as a YAML file, idempotent, secrets only by reference; and
credentials pasted into the admin, encrypted at rest and never shown again."""

from __future__ import annotations

from decimal import Decimal
from io import StringIO
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse

from billing.models import Model, Price, UsageRecord
from proxy import credentials
from proxy.models import Deployment, Provider
from tests.conftest import UPSTREAM_KEY, Api, Catalog, Upstream, user

pytestmark = pytest.mark.django_db

CATALOG = """
providers:
  - {name: local-mock, kind: mock}
  - name: openai
    kind: openai
    base_url: "https://api.openai.com/v1"
    api_key_env: OPENAI_API_KEY
    timeouts: {connect: 3, idle: 30}
  - {name: claude, kind: anthropic, base_url: "https://api.anthropic.com/v1", api_key_env: ANTHROPIC_API_KEY}
models:
  - name: gpt-4.1-mini
    prices: {input_per_mtok: "2.00", output_per_mtok: "8.00", cached_input_per_mtok: "0.50"}
    deployments:
      - {provider: local-mock, upstream_model: gpt-4.1-mini, weight: 1, priority: 0}
      - {provider: openai, upstream_model: gpt-4.1-mini, weight: 3, priority: 1}
"""


def run(tmp_path: Path, text: str) -> str:
    path = tmp_path / "catalog.yaml"
    path.write_text(text)
    out = StringIO()
    call_command("importcatalog", str(path), stdout=out)
    return out.getvalue()


def test_import_creates_then_changes_nothing_then_updates_in_place(tmp_path: Path, api: Api) -> None:
    first = run(tmp_path, CATALOG)
    assert "7 created" in first
    openai = Provider.objects.get(name="openai")
    assert (openai.api_key_env, openai.connect_timeout, openai.idle_timeout, openai.first_byte_timeout) == (
        "OPENAI_API_KEY",
        3.0,
        30.0,
        None,
    )
    price = Price.objects.get()
    assert (price.input_per_mtok, price.cached_input_per_mtok, price.cache_write_per_mtok) == (
        Decimal("2"),
        Decimal("0.5"),
        None,
    )
    # it is served at once, from the mock deployment (priority 0)
    assert api.chat({"model": "gpt-4.1-mini", "messages": user("hi")}).status_code == 200

    # the same file again changes nothing
    assert "0 created, 0 updated, 7 unchanged" in run(tmp_path, CATALOG)
    assert Price.objects.count() == 1

    # an edited file updates in place; a new price starts now and history is kept
    edited = CATALOG.replace("weight: 3", "weight: 5").replace('"8.00"', '"9.00"')
    edited = edited.replace(
        "      - {provider: local-mock, upstream_model: gpt-4.1-mini, weight: 1, priority: 0}\n", ""
    )
    run(tmp_path, edited)
    assert Deployment.objects.get(provider__name="openai").weight == 5
    assert not Deployment.objects.get(provider__name="local-mock").is_active  # dropped from the file
    assert sorted(Price.objects.values_list("output_per_mtok", flat=True)) == [Decimal("8"), Decimal("9")]
    assert Model.objects.count() == 1 and Provider.objects.count() == 3


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("providers:\n  - {name: x, kind: openai, base_url: 'https://x.test', api_key: sk-123}", "inline secret"),
        ("models:\n  - {name: m, prices: {input_per_mtok: 2.10, output_per_mtok: '1'}}", "as strings"),
        ("models:\n  - {name: m, deployments: [{provider: nope}]}", "neither in this file"),
        ("providers:\n  - {name: x, kind: openai}", "base_url"),
        ("nonsense: true", "'providers' and 'models'"),
    ],
)
def test_a_bad_file_imports_nothing_and_says_why(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(CommandError, match=message):
        run(tmp_path, text)
    assert not Provider.objects.exists() and not Model.objects.exists()


@pytest.fixture
def admin_client(client: Client) -> Client:
    client.force_login(User.objects.create_superuser("root", "root@example.com", "pw"))
    return client


def test_a_pasted_credential_is_encrypted_used_and_never_shown(
    admin_client: Client, catalog: Catalog, api: Api, mock_upstream: Upstream
) -> None:
    response = admin_client.post(
        reverse("admin:proxy_provider_add"),
        {
            "name": "pasted",
            "kind": "openai",
            "base_url": mock_upstream.base_url,
            "is_active": "on",
            "api_key": UPSTREAM_KEY,
        },
    )
    assert response.status_code == 302, response.content
    provider = Provider.objects.get(name="pasted")
    assert UPSTREAM_KEY not in provider.api_key_encrypted
    assert credentials.decrypt(provider.api_key_encrypted) == UPSTREAM_KEY

    # the admin never shows it again, only that one is stored
    page = admin_client.get(reverse("admin:proxy_provider_change", args=[provider.pk])).content.decode()
    assert UPSTREAM_KEY not in page and provider.api_key_encrypted not in page
    assert "stored, encrypted" in page

    # the upstream (which requires the key) accepts the call
    model = Model.objects.create(name="via-pasted")
    Price.objects.create(model=model, input_per_mtok=Decimal("1"), output_per_mtok=Decimal("1"))
    Deployment.objects.create(model=model, provider=provider, upstream_model="gpt-4.1")
    assert api.chat({"model": "via-pasted", "messages": user("hi")}).status_code == 200
    assert mock_upstream.last()["headers"]["authorization"] == f"Bearer {UPSTREAM_KEY}"

    # saving without retyping keeps it; "clear" forgets it
    form = {"name": "pasted", "kind": "openai", "base_url": mock_upstream.base_url, "is_active": "on"}
    admin_client.post(reverse("admin:proxy_provider_change", args=[provider.pk]), form)
    provider.refresh_from_db()
    assert credentials.decrypt(provider.api_key_encrypted) == UPSTREAM_KEY
    admin_client.post(reverse("admin:proxy_provider_change", args=[provider.pk]), {**form, "clear_api_key": "on"})
    provider.refresh_from_db()
    assert provider.api_key_encrypted == ""
    assert UsageRecord.objects.count() == 1


def test_without_a_secrets_key_production_refuses_to_store_a_credential(
    admin_client: Client, settings: object, mock_upstream: Upstream
) -> None:
    settings.TOLLWAY_SECRETS_KEYS = []  # type: ignore[attr-defined]
    settings.DEBUG = False  # type: ignore[attr-defined]
    response = admin_client.post(
        reverse("admin:proxy_provider_add"),
        {"name": "p", "kind": "openai", "base_url": mock_upstream.base_url, "api_key": "sk-x"},
    )
    assert response.status_code == 200 and "TOLLWAY_SECRETS_KEY is not set" in response.content.decode()
    assert not Provider.objects.exists()


def test_keys_rotate_with_multifernet(settings: object) -> None:
    from cryptography.fernet import Fernet

    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.TOLLWAY_SECRETS_KEYS = [old]  # type: ignore[attr-defined]
    token = credentials.encrypt("sk-rotate")
    settings.TOLLWAY_SECRETS_KEYS = [new, old]  # type: ignore[attr-defined]
    assert credentials.decrypt(token) == "sk-rotate"
    settings.TOLLWAY_SECRETS_KEYS = [new]  # type: ignore[attr-defined]
    assert credentials.decrypt(token) is None


def test_the_documented_catalog_example_imports(tmp_path: Path) -> None:
    page = (Path(__file__).resolve().parents[2] / "docs" / "operators" / "providers.md").read_text()
    example = page.split("```yaml\n", 1)[1].split("```", 1)[0]
    run(tmp_path, example)
    assert set(Provider.objects.values_list("kind", flat=True)) == {"mock", "openai", "anthropic", "gemini"}
    claude = Price.objects.get(model__name="claude-sonnet-4")
    assert (claude.cached_input_per_mtok, claude.cache_write_per_mtok) == (Decimal("0.3"), Decimal("3.75"))

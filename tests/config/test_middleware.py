"""NUL characters are refused at the door (400), on the API in OpenAI's shape, everywhere a
string could otherwise reach Postgres, which cannot store NUL in text (a 500 before)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from billing.models import Model
from tenants import services
from tenants.models import ApiKey, Tenant
from tests.config.test_wsgi import _keep_test_connection, call  # noqa: F401  # the fixture is autouse
from tests.pages import issued_invoice, member

pytestmark = pytest.mark.django_db

# Every management endpoint, with a NUL where the client controls a string.
API_NUL = [
    ("get", "/v1/keys/%00", "path"),
    ("patch", "/v1/keys/%00", "path"),
    ("delete", "/v1/keys/%00", "path"),
    ("post", "/v1/keys/%00/rotate", "path"),
    ("get", "/v1/keys?after=%00", "after"),
    ("get", "/v1/keys?limit=1%00", "limit"),
    ("get", "/v1/invoices/%00", "path"),
    ("get", "/v1/invoices/%00.pdf", "path"),
    ("get", "/v1/invoices/TW-%00.csv", "path"),
    ("get", "/v1/invoices?after=%00", "after"),
    ("get", "/v1/invoices?period=%00", "period"),
    ("get", "/v1/usage?start=%00", "start"),
    ("get", "/v1/usage?group_by=day%00", "group_by"),
    ("get", "/v1/tenant?x=%00", "x"),
    ("get", "/api/v1/keys/%00", "path"),
    ("get", "/v1/models/gpt%00", "path"),
    ("get", "/v1/schema?format=%00", "format"),
]


@pytest.fixture
def everything_key(tenant: Tenant, make_key: Any) -> services.CreatedKey:
    return make_key(tenant, "ops", scopes=["inference", "manage", "billing"])


def assert_nul_refused(status: int, content: bytes, param: str) -> None:
    assert status == 400, content
    error = json.loads(content)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "invalid_parameter"
    assert error["param"] == param
    assert "NUL" in error["message"]


@pytest.mark.parametrize(("method", "path", "param"), API_NUL)
def test_a_nul_on_the_management_api_is_a_400_on_the_full_chain(
    client: Client, everything_key: services.CreatedKey, method: str, path: str, param: str
) -> None:
    # The Django test client: the full middleware chain (cookie calls, keyless calls).
    response = getattr(client, method)(path, headers={"Authorization": f"Bearer {everything_key.plaintext}"})
    assert_nul_refused(response.status_code, response.content, param)


@pytest.mark.parametrize(("method", "path", "param"), API_NUL)
def test_a_nul_on_the_management_api_is_a_400_on_the_keyed_chain(
    everything_key: services.CreatedKey, method: str, path: str, param: str
) -> None:
    # Through config.wsgi, as gunicorn calls it: a keyed call takes the short chain.
    status, headers, content = call(method.upper(), path, {"Authorization": f"Bearer {everything_key.plaintext}"})
    assert_nul_refused(status, content, param)
    assert headers["x-request-id"]


def test_a_nul_in_a_keyless_api_call_is_a_400_too(client: Client) -> None:
    response = client.get("/v1/invoices/%00.pdf")
    assert_nul_refused(response.status_code, response.content, "path")


class TestPages:
    """The pages answer a plain 400 (they are HTML, not OpenAI's API)."""

    @pytest.fixture
    def owner(self, client: Client, tenant: Tenant) -> User:
        user = member(tenant, "olivia")
        client.force_login(user)
        return user

    @pytest.mark.usefixtures("owner")
    @pytest.mark.parametrize(
        ("method", "path"),
        [
            ("get", "/dashboard/invoices/%00.pdf"),
            ("post", "/dashboard/keys/%00/revoke"),
            ("get", "/dashboard/?days=%00"),
        ],
    )
    def test_a_nul_in_a_page_path_or_query(self, client: Client, method: str, path: str) -> None:
        response = getattr(client, method)(path)
        assert response.status_code == 400
        assert b"NUL" in response.content

    @pytest.mark.usefixtures("owner")
    def test_a_nul_in_a_form_field(self, client: Client, tenant: Tenant) -> None:
        response = client.post("/dashboard/keys/create", {"name": "ci\x00", "scopes": ["inference"]})
        assert response.status_code == 400
        assert b"name" in response.content
        assert not ApiKey.objects.filter(tenant=tenant, name__startswith="ci").exists()

    def test_a_nul_in_the_admin_search(self, admin_client: Client, tenant: Tenant, catalog: Any) -> None:
        for path in ("/admin/tenants/tenant/?q=%00", "/admin/billing/usagerecord/?q=a%00b"):
            assert admin_client.get(path).status_code == 400

    def test_a_nul_in_the_session_cookie(self, client: Client, db: None) -> None:
        # A quoted cookie value may spell NUL as \\000; Django decodes it, and the session
        # lookup would then send it to Postgres.
        client.cookies["sessionid"] = '"\\000\\000\\000\\000\\000\\000\\000\\000"'
        assert client.get("/dashboard/").status_code == 400

    def test_an_invoice_download_still_works(self, client: Client, tenant: Tenant, owner: User) -> None:
        invoice = issued_invoice(tenant, Model.objects.create(name="m"))
        response = client.get(f"/dashboard/invoices/{invoice.number}.pdf")
        assert response.status_code == 200

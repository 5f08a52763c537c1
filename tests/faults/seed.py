"""Seed the fault suite's template database: ``python -m tests.faults.seed`` (with DATABASE_URL).

One model served by an OpenAI-compatible loopback provider (its URL is set per test),
priced like gpt-4.1 ($8 / $32 per million tokens) and with no output cap of its own, as
``importcatalog`` makes them. Two tenants:

* ``open``: no budget (the throughput lane);
* ``capped``: an inference key with a monthly budget (the money lane; tests lower it
  through the management API while the load runs), and a manage key to do that with.

Prints the ids and keys as one JSON line.
"""

from __future__ import annotations

import json
import os
from decimal import Decimal

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django

django.setup()

from billing.models import Model, Price  # noqa: E402  # after django.setup()
from proxy.models import Deployment, Provider  # noqa: E402
from tenants import services  # noqa: E402

PROVIDER, MODEL = "loopback", "fault-model"


def main() -> None:
    provider = Provider.objects.create(
        name=PROVIDER,
        kind=Provider.Kind.OPENAI,
        base_url="http://127.0.0.1:9/v1",
        api_key_env="TOLLWAY_TEST_UPSTREAM_KEY",
    )
    model = Model.objects.create(name=MODEL)
    Price.objects.create(model=model, input_per_mtok=Decimal(8), output_per_mtok=Decimal(32))
    Deployment.objects.create(model=model, provider=provider, upstream_model="gpt-4.1")

    open_tenant = services.tenant_create(slug="open", name="Open")
    capped = services.tenant_create(slug="capped", name="Capped")
    open_key = services.api_key_create(tenant=open_tenant, name="load")
    capped_key = services.api_key_create(tenant=capped, name="load", monthly_budget_usd=Decimal("1000"))
    manager = services.api_key_create(tenant=capped, name="ops", scopes=["manage"])
    limited = services.api_key_create(tenant=open_tenant, name="limited", rpm_limit=3)
    print(
        json.dumps(
            {
                "provider": PROVIDER,
                "model": MODEL,
                "open_key": open_key.plaintext,
                "open_tenant": open_tenant.pk,
                "capped_key": capped_key.plaintext,
                "capped_key_id": capped_key.api_key.pk,
                "capped_key_public_id": capped_key.api_key.key_id,
                "capped_tenant": capped.pk,
                "manage_key": manager.plaintext,
                "limited_key": limited.plaintext,
            }
        )
    )


if __name__ == "__main__":
    main()

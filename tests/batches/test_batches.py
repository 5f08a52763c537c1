"""/v1/batches: validation first, lines at the batch price, budgets, cancel, expiry, and a
worker killed mid-batch; run in-process (the task's own code, eagerly or chunk by chunk)."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

from django.contrib.auth import get_user_model
from django.utils import timezone

from batches import runner
from batches.models import Batch, BatchLine
from billing.invoicing import invoice_draft
from billing.models import Price, UsageRecord
from billing.pricing import PriceSnapshot, TokenUsage, charge_of
from tests.batches.conftest import BatchApi, chat_line, jsonl
from tests.conftest import Catalog
from tests.pages import member


def _price(factor: str = "1") -> PriceSnapshot:
    return PriceSnapshot(Decimal(8), Decimal(32), timezone.now(), factor=Decimal(factor))


def _start(batch_api: BatchApi, lines: list[Any], endpoint: str = "/v1/chat/completions") -> dict[str, Any]:
    file_id = batch_api.upload(jsonl(lines)).json()["id"]
    created = batch_api.create(file_id, endpoint=endpoint, metadata={"job": "nightly"})
    assert created.status_code == 200, created.content
    return dict(created.json())


def test_a_chat_batch_answers_every_line_at_the_models_batch_price(
    batch_api: BatchApi, catalog: Catalog, eager: None
) -> None:
    # Given gpt-4.1 at a quarter of its price in batches (editable per model and price)
    Price.objects.filter(model=catalog.models["gpt-4.1"]).update(batch_factor=Decimal("0.25"))
    # When a batch of three runs
    batch = _start(batch_api, [chat_line("c"), chat_line("a", "Bonjour"), chat_line("b", model="deepseek-v3")])
    batch = batch_api.get(f"/v1/batches/{batch['id']}").json()
    # Then it completed, every line answered once, in the file's order
    assert batch["status"] == "completed" and batch["metadata"] == {"job": "nightly"}
    assert batch["request_counts"] == {"total": 3, "completed": 3, "failed": 0}
    assert batch["error_file_id"] is None
    output = batch_api.content(batch["output_file_id"])
    assert [line["custom_id"] for line in output] == ["c", "a", "b"]
    rows = {row.request_id: row for row in UsageRecord.objects.all()}
    assert len(rows) == 3
    total = Decimal(0)
    for line in output:
        row = rows[line["response"]["request_id"]]
        assert line["response"]["status_code"] == 200 and line["error"] is None
        assert line["response"]["body"]["choices"][0]["message"]["content"]
        # Each ledger row records its batch and the factor it paid, and the answer reports that cost.
        assert row.batch_id == batch["id"] and row.api == "chat"
        factor = Decimal("0.25") if row.model.name == "gpt-4.1" else Decimal("0.5")
        assert row.price_factor == factor
        snapshot = PriceSnapshot(row.input_price_per_mtok, row.output_price_per_mtok, row.created_at, factor=factor)
        usage = TokenUsage(row.input_tokens, row.output_tokens)
        assert row.cost == charge_of(usage, snapshot).cost
        assert row.upstream_cost == charge_of(usage, snapshot).upstream_cost  # the provider is paid list price
        assert row.cost < row.upstream_cost
        assert Decimal(line["response"]["body"]["usage"]["cost"]) == row.cost
        total += row.cost
    assert Decimal(batch["cost"]) == total


def test_an_embeddings_batch(batch_api: BatchApi, catalog: Catalog, eager: None) -> None:
    lines = [
        {"custom_id": f"e{n}", "method": "POST", "url": "/v1/embeddings", "body": {"model": "gpt-4.1", "input": "x"}}
        for n in range(2)
    ]
    batch = _start(batch_api, lines, endpoint="/v1/embeddings")
    batch = batch_api.get(f"/v1/batches/{batch['id']}").json()
    assert batch["status"] == "completed"
    for line in batch_api.content(batch["output_file_id"]):
        body = line["response"]["body"]
        assert body["object"] == "list" and body["data"][0]["embedding"]
        assert Decimal(body["usage"]["cost"]) > 0
    assert set(UsageRecord.objects.values_list("api", flat=True)) == {"embeddings"}


def test_a_file_with_bad_lines_fails_the_batch_with_their_numbers_and_costs_nothing(
    batch_api: BatchApi, catalog: Catalog, eager: None
) -> None:
    lines: list[Any] = [
        chat_line("ok"),
        b"{not json",
        chat_line("ok"),
        {**chat_line("url"), "url": "/v1/embeddings"},
        {**chat_line("get"), "method": "GET"},
        {"custom_id": "nobody", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "gpt-4.1"}},
        chat_line("unknown", model="no-such-model"),
        chat_line("stream", stream=True),
        chat_line("fine"),
    ]
    batch = _start(batch_api, lines)
    batch = batch_api.get(f"/v1/batches/{batch['id']}").json()
    assert batch["status"] == "failed" and batch["failed_at"] is not None
    errors = {error["line"]: error for error in batch["errors"]["data"]}
    assert sorted(errors) == [2, 3, 4, 5, 6, 7, 8]
    assert errors[2]["code"] == "invalid_json"
    assert errors[3]["code"] == "duplicate_custom_id" and "line 1" in errors[3]["message"]
    assert errors[4]["param"] == "url" and errors[5]["param"] == "method"
    assert errors[6]["param"] == "body.messages"
    assert errors[7]["code"] == "model_not_found"
    assert errors[8]["param"] == "body.stream"
    assert batch["output_file_id"] is None and batch["request_counts"]["completed"] == 0
    assert UsageRecord.objects.count() == 0 and BatchLine.objects.count() == 0


def test_bad_batch_requests_are_400s(batch_api: BatchApi, catalog: Catalog) -> None:
    file_id = batch_api.upload(jsonl([chat_line("a")])).json()["id"]
    cases: list[tuple[dict[str, Any], str]] = [
        ({"endpoint": "/v1/images"}, "endpoint"),
        ({"completion_window": "1h"}, "completion_window"),
        ({"metadata": {"k": 1}}, "metadata"),
        ({"input_file_id": None}, "input_file_id"),
    ]
    for change, param in cases:
        body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h", **change}
        response = batch_api.client.post(
            "/v1/batches", body, content_type="application/json", headers=batch_api.headers
        )
        assert response.status_code == 400, response.content
        assert response.json()["error"]["param"] == param
    assert Batch.objects.count() == 0


def test_a_line_over_budget_goes_to_the_error_file_and_the_batch_goes_on(
    batch_api: BatchApi, catalog: Catalog, tenant: Any, eager: None, settings: Any
) -> None:
    settings.TOLLWAY = {**settings.TOLLWAY, "BATCH_TENANT_CONCURRENCY": 1}
    # A budget that holds one line's reservation at the batch price (20 output tokens at
    # $250 per million, about $0.005), not two.
    Price.objects.filter(model=catalog.models["gpt-4.1"]).update(output_per_mtok=Decimal(500))
    tenant.monthly_budget_usd = Decimal("0.01")
    tenant.save()
    batch = _start(batch_api, [chat_line(str(n)) for n in range(4)])
    batch = batch_api.get(f"/v1/batches/{batch['id']}").json()
    assert batch["status"] == "completed"
    assert batch["request_counts"] == {"total": 4, "completed": 1, "failed": 3}
    refused = batch_api.content(batch["error_file_id"])
    assert [line["custom_id"] for line in refused] == ["1", "2", "3"]
    for line in refused:
        assert line["response"]["status_code"] == 429
        assert line["response"]["body"]["error"]["code"] == "insufficient_quota"
    assert UsageRecord.objects.count() == 1
    assert Decimal("0.005") < UsageRecord.objects.get().cost < Decimal("0.01")


def _batch_in_progress(batch_api: BatchApi, lines: int, settings: Any) -> Batch:
    """A batch validated and two lines run, as a worker's first chunk would leave it."""
    settings.TOLLWAY = {**settings.TOLLWAY, "BATCH_CHUNK_LINES": 2, "BATCH_TENANT_CONCURRENCY": 1}
    created = _start(batch_api, [chat_line(f"l{n}") for n in range(1, lines + 1)])
    batch = Batch.objects.get(public_id=created["id"])
    Batch.objects.filter(pk=batch.pk).update(lease_until=None)  # the enqueued task went to a broker nobody reads
    assert runner.batch_run(batch_id=batch.pk).more
    batch.refresh_from_db()
    assert batch.status == "in_progress" and batch.completed == 2
    return batch


def test_cancel_stops_new_lines_and_keeps_what_was_answered(
    batch_api: BatchApi, catalog: Catalog, settings: Any
) -> None:
    batch = _batch_in_progress(batch_api, 5, settings)
    cancelled = batch_api.post(f"/v1/batches/{batch.public_id}/cancel").json()
    assert cancelled["status"] == "cancelling" and cancelled["cancelling_at"] is not None
    assert not runner.batch_run(batch_id=batch.pk).more
    after = batch_api.get(f"/v1/batches/{batch.public_id}").json()
    assert after["status"] == "cancelled" and after["cancelled_at"] is not None
    assert [line["custom_id"] for line in batch_api.content(after["output_file_id"])] == ["l1", "l2"]
    assert after["request_counts"] == {"total": 5, "completed": 2, "failed": 0}
    assert UsageRecord.objects.count() == 2
    # Cancelling again changes nothing; a finished batch cannot be cancelled.
    assert batch_api.post(f"/v1/batches/{batch.public_id}/cancel").json()["status"] == "cancelled"


def test_a_finished_batch_cannot_be_cancelled(batch_api: BatchApi, catalog: Catalog, eager: None) -> None:
    batch = _start(batch_api, [chat_line("a")])
    response = batch_api.post(f"/v1/batches/{batch['id']}/cancel")
    assert response.status_code == 409 and response.json()["error"]["code"] == "invalid_state"


def test_a_worker_killed_mid_batch_is_resumed_and_no_line_is_billed_twice(
    batch_api: BatchApi, catalog: Catalog, settings: Any
) -> None:
    batch = _batch_in_progress(batch_api, 5, settings)
    # Given a worker killed after line 3's ledger row was written but before the line was
    # marked done, and while line 4 was starting: both left running, the lease held.
    three, four = BatchLine.objects.filter(batch=batch, line__in=[3, 4]).order_by("line")
    BatchLine.objects.filter(pk__in=[three.pk, four.pk]).update(status="running", attempts=1)
    three.refresh_from_db()
    _, cost = runner.line_execute(batch=batch, line=three)
    Batch.objects.filter(pk=batch.pk).update(lease_until=timezone.now() + timedelta(seconds=60))
    # Then nobody else takes it while the lease holds
    assert not runner.batch_run(batch_id=batch.pk).more
    assert BatchLine.objects.get(pk=three.pk).status == "running"
    # When the lease lapses, the sweeper hands it on and a new runner resumes it
    Batch.objects.filter(pk=batch.pk).update(lease_until=timezone.now() - timedelta(seconds=1))
    assert [pk for pk, _ in runner.batches_sweep()] == [batch.pk]
    while runner.batch_run(batch_id=batch.pk).more:
        pass
    after = batch_api.get(f"/v1/batches/{batch.public_id}").json()
    assert after["status"] == "completed"
    assert after["request_counts"] == {"total": 5, "completed": 5, "failed": 0}
    output = batch_api.content(after["output_file_id"])
    assert [line["custom_id"] for line in output] == ["l1", "l2", "l3", "l4", "l5"]
    # One ledger row per line; line 3 answered at the cost its first attempt was billed.
    assert UsageRecord.objects.count() == 5
    assert sorted(UsageRecord.objects.values_list("request_id", flat=True)) == sorted(line["id"] for line in output)
    assert Decimal(output[2]["response"]["body"]["usage"]["cost"]) == cost
    assert Decimal(after["cost"]) == sum(UsageRecord.objects.values_list("cost", flat=True))


def test_lines_not_run_within_the_window_expire_into_the_error_file(
    batch_api: BatchApi, catalog: Catalog, settings: Any
) -> None:
    batch = _batch_in_progress(batch_api, 4, settings)
    Batch.objects.filter(pk=batch.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert not runner.batch_run(batch_id=batch.pk).more
    after = batch_api.get(f"/v1/batches/{batch.public_id}").json()
    assert after["status"] == "expired" and after["expired_at"] is not None
    assert after["request_counts"] == {"total": 4, "completed": 2, "failed": 2}
    assert [line["custom_id"] for line in batch_api.content(after["output_file_id"])] == ["l1", "l2"]
    expired = batch_api.content(after["error_file_id"])
    assert [(line["custom_id"], line["error"]["code"]) for line in expired] == [
        ("l3", "batch_expired"),
        ("l4", "batch_expired"),
    ]
    assert UsageRecord.objects.count() == 2


def test_another_tenants_batch_answers_404(
    batch_api: BatchApi, other_api: BatchApi, catalog: Catalog, eager: None
) -> None:
    batch = _start(batch_api, [chat_line("a")])
    for response in (other_api.get(f"/v1/batches/{batch['id']}"), other_api.post(f"/v1/batches/{batch['id']}/cancel")):
        assert response.status_code == 404
        assert response.json()["error"]["message"] == f"No such Batch object: {batch['id']}"
    assert other_api.get("/v1/batches").json()["data"] == []
    assert [b["id"] for b in batch_api.get("/v1/batches").json()["data"]] == [batch["id"]]


def test_invoices_show_batch_usage_as_its_own_lines(
    batch_api: BatchApi, catalog: Catalog, eager: None, tenant: Any
) -> None:
    batch = _start(batch_api, [chat_line("a"), chat_line("b")])
    live = batch_api.client.post(
        "/v1/chat/completions",
        chat_line("live")["body"],
        content_type="application/json",
        headers=batch_api.headers,
    )
    assert live.status_code == 200
    now = timezone.now()
    period = f"{now:%Y-%m}"
    invoice = invoice_draft(tenant=tenant, period=period, now=now.replace(day=28) + timedelta(days=7))
    assert invoice is not None
    lines = {line.description: line for line in invoice.lines.all()}
    assert set(lines) == {"gpt-4.1", "gpt-4.1 (Batch API)"}
    assert lines["gpt-4.1 (Batch API)"].requests == 2 and lines["gpt-4.1"].requests == 1
    batch_rows = UsageRecord.objects.filter(batch_id=batch["id"])
    assert lines["gpt-4.1 (Batch API)"].exact_usd == sum(row.cost for row in batch_rows)
    assert lines["gpt-4.1 (Batch API)"].input_price_per_mtok == Decimal("4")  # half of 8


def test_the_dashboard_shows_each_batch_and_its_cost_so_far(
    batch_api: BatchApi, catalog: Catalog, eager: None, tenant: Any, other_tenant: Any
) -> None:
    batch = _start(batch_api, [chat_line("a"), chat_line("b")])
    cost = Batch.objects.get(public_id=batch["id"]).cost
    member(tenant, "olivia")
    member(other_tenant, "gus")
    client = batch_api.client
    client.force_login(get_user_model().objects.get(username="olivia"))
    page = client.get("/dashboard/").content.decode()
    assert batch["id"] in page and f"{cost:.6f}" in page and "2 / 0 / 2" in page
    client.force_login(get_user_model().objects.get(username="gus"))
    assert batch["id"] not in client.get("/dashboard/").content.decode()

"""The ledger spool: a call the provider answered is billed exactly once even when Postgres
cannot take its row at that moment. The real outage (Postgres stopped under load) is in
``tests/faults/test_postgres.py``; here the ledger insert is made to fail as it does then,
with the connection errors Django and psycopg raise."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.db import OperationalError
from django.test import Client

from billing import admission, ledger, spool
from billing.ledger import UsageEntry
from billing.models import UsageRecord
from billing.pricing import PriceSnapshot, TokenUsage
from proxy import meter, relay
from tenants.models import Tenant
from tests.conftest import Api, Catalog, sse_events, user

pytestmark = pytest.mark.django_db

BODY = {"model": "gpt-4.1", "messages": user("Spool me."), "max_tokens": 30}


@pytest.fixture(autouse=True)
def spool_here(tmp_path: Path, settings: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A spool directory of this test's own; replays happen when the test says so (a
    background thread would write outside the test's transaction)."""
    directory = tmp_path / "spool"
    settings.TOLLWAY = {**settings.TOLLWAY, "SPOOL_DIR": str(directory)}
    monkeypatch.setattr(spool, "ensure_replayer", lambda: None)
    spool.mark_ledger_up()
    yield directory
    if spool._spool is not None:
        spool._spool.close()
        spool._spool = None
    spool.mark_ledger_up()


class LedgerDown:
    """Makes the ledger insert fail as it does when Postgres is away, and counts the tries."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.tries = 0
        self.monkeypatch = monkeypatch
        self.down = True

        def insert(*, entry: UsageEntry) -> tuple[Decimal, bool]:
            self.tries += 1
            if self.down:
                raise OperationalError("connection to server at 127.0.0.1 failed: Connection refused")
            return ledger.usage_record_create(entry=entry)

        monkeypatch.setattr(meter, "usage_record_create", insert)

    def back(self) -> None:
        self.down = False
        spool.mark_ledger_up()


@pytest.fixture
def ledger_down(monkeypatch: pytest.MonkeyPatch) -> LedgerDown:
    return LedgerDown(monkeypatch)


class TestAnsweredWhilePostgresIsAway:
    def test_a_plain_call_is_answered_spooled_then_billed_once(
        self, api: Api, catalog: Catalog, tenant: Tenant, ledger_down: LedgerDown
    ) -> None:
        # Given a ledger that cannot be written
        # When a call is made
        response = api.chat(BODY)
        # Then the client gets its answer, usage and cost as usual
        assert response.status_code == 200, response.content
        body = response.json()
        assert body["choices"][0]["message"]["content"]
        assert body["usage"]["cost"] == response["X-Tollway-Cost"]
        # and the row waits in the spool, its reservation still held
        assert not UsageRecord.objects.exists()
        assert spool.depth() == 1
        assert admission.reserved_total(tenant.pk) > 0
        # When Postgres is back and the spool replays
        ledger_down.back()
        assert spool.replay_now() == 1
        # Then there is exactly one row, at the cost the client was told, at the call's time
        row = UsageRecord.objects.get()
        assert row.request_id == response["X-Request-ID"]
        assert str(row.cost) == body["usage"]["cost"]
        assert row.input_tokens == body["usage"]["prompt_tokens"]
        assert abs(row.created_at - datetime.now(UTC)) < timedelta(seconds=30)
        assert admission.reserved_total(tenant.pk) == 0, "settled once the row is in"
        assert spool.depth() == 0
        # and a second replay bills nothing more
        assert spool.replay_now() == 0
        assert UsageRecord.objects.count() == 1

    def test_a_stream_ends_with_its_usage_and_done(
        self, api: Api, catalog: Catalog, tenant: Tenant, ledger_down: LedgerDown
    ) -> None:
        response = api.chat({**BODY, "stream": True, "stream_options": {"include_usage": True}})
        events = sse_events(response)
        assert events[-1] == "[DONE]"
        cost = events[-2]["usage"]["cost"]
        assert spool.depth() == 1 and not UsageRecord.objects.exists()
        ledger_down.back()
        spool.replay_now()
        row = UsageRecord.objects.get()
        assert str(row.cost) == cost and row.streamed
        assert admission.reserved_total(tenant.pk) == 0

    def test_after_one_failure_the_worker_spools_without_waiting_on_postgres(
        self, api: Api, catalog: Catalog, ledger_down: LedgerDown
    ) -> None:
        for _ in range(3):
            assert api.chat(BODY).status_code == 200
        assert ledger_down.tries == 1, "the back-off: no new insert attempt for LEDGER_RETRY_SECONDS"
        assert spool.depth() == 3
        ledger_down.back()
        assert spool.replay_now() == 3
        assert UsageRecord.objects.count() == 3
        assert api.chat(BODY).status_code == 200
        assert UsageRecord.objects.count() == 4, "once replayed, calls go straight to the ledger again"

    def test_ready_and_metrics_show_the_spool(
        self, client: Client, api: Api, catalog: Catalog, ledger_down: Any
    ) -> None:
        assert api.chat(BODY).status_code == 200
        assert api.chat(BODY).status_code == 200
        ready = client.get("/ready")
        assert ready.json()["spool_rows"] == 2
        assert ready.json()["checks"]["database"] == "unavailable"  # the ledger is marked down
        # the replica still serves (its spool takes the rows): degraded, not taken out of service
        assert (ready.status_code, ready.json()["status"]) == (200, "degraded")
        metrics = client.get("/metrics").content.decode()
        assert "tollway_spool_rows 2.0" in metrics
        ledger_down.back()
        spool.replay_now()
        assert client.get("/ready").json() == {
            "status": "ok",
            "checks": {"database": "ok", "cache": "ok"},
            "spool_rows": 0,
        }
        assert "tollway_spool_rows 0.0" in client.get("/metrics").content.decode()


def entry(request_id: str, **changes: Any) -> UsageEntry:
    from billing.models import Model

    model = Model.objects.get(name="gpt-4.1")
    fields: dict[str, Any] = {
        "request_id": request_id,
        "created_at": datetime(2026, 10, 31, 23, 59, 58, 123456, tzinfo=UTC),
        "tenant_id": Tenant.objects.get(slug="acme").pk,
        "api_key_id": None,
        "model_id": model.pk,
        "provider": "mock",
        "upstream_model": "gpt-4.1",
        "usage": TokenUsage(input_tokens=1000, output_tokens=50, cached_input_tokens=200, cache_write_tokens=7),
        "price": PriceSnapshot(
            Decimal("8"),
            Decimal("32"),
            effective_from=datetime(2026, 1, 1, tzinfo=UTC),
            cached_input_per_mtok=Decimal("0.5"),
            cache_write_per_mtok=None,
            request_fee=Decimal("0.0001"),
        ),
        "usage_estimated": True,
        "streamed": True,
        "outcome": "client_disconnected",
        "latency_ms": 1234,
        "attempts": 2,
        "requested_model": "gpt-4.1-alias",
        "cache_hit": False,
        "markup_percent": Decimal("12.5"),
    }
    fields.update(changes)
    return UsageEntry(**fields)


class TestTheFile:
    def test_a_row_replays_exactly_as_it_was_spooled(self, catalog: Catalog, tenant: Tenant) -> None:
        # A row spooled on the last second of October and replayed in November keeps its
        # time, so it belongs to October (a finalised October makes it an adjustment line).
        original = entry("req-spooled-1")
        spool.keep(original, None, tokens=1050)
        spool.replay_now()
        row = UsageRecord.objects.get()
        assert row.created_at == original.created_at
        assert row.cost == ledger.usage_cost(original)
        assert (row.input_tokens, row.output_tokens, row.cached_input_tokens, row.cache_write_tokens) == (
            1000,
            50,
            200,
            7,
        )
        assert row.markup_percent == Decimal("12.5") and row.request_fee == Decimal("0.0001")
        assert row.cached_input_price_per_mtok == Decimal("0.5") and row.cache_write_price_per_mtok == Decimal("8")
        assert (row.outcome, row.attempts, row.requested_model, row.usage_estimated) == (
            "client_disconnected",
            2,
            "gpt-4.1-alias",
            True,
        )

    def test_the_file_is_written_before_the_call_is_answered(self, catalog: Catalog, tenant: Tenant) -> None:
        spool.keep(entry("req-durable"), None, tokens=1)
        path = spool.this_spool().path
        line = json.loads(path.read_bytes().splitlines()[0])
        assert line["v"] == spool.SCHEMA and line["entry"]["request_id"] == "req-durable"
        assert oct(path.stat().st_mode & 0o777) == "0o600"

    def test_a_torn_last_line_is_skipped_and_the_rest_replays(self, catalog: Catalog, tenant: Tenant) -> None:
        spool.keep(entry("req-a"), None, tokens=1)
        with open(spool.this_spool().path, "ab") as f:
            f.write(b'{"v": 1, "entry": {"request_id": "req-b", "crea')
        assert spool.replay_now() == 1
        assert list(UsageRecord.objects.values_list("request_id", flat=True)) == ["req-a"]

    def test_a_row_the_ledger_refuses_is_set_aside(self, catalog: Catalog, tenant: Tenant, spool_here: Path) -> None:
        spool.keep(entry("req-bad", provider="p" * 300), None, tokens=1)  # longer than its column
        spool.keep(entry("req-good"), None, tokens=1)
        assert spool.replay_now() == 2
        assert list(UsageRecord.objects.values_list("request_id", flat=True)) == ["req-good"]
        rejected = (spool_here / spool.REJECTED).read_text()
        assert "req-bad" in rejected
        assert spool.depth() == 0


def write_dead_workers_file(directory: Path, worker: str, *entries: UsageEntry) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{worker}{spool.SUFFIX}"
    path.write_bytes(b"".join(spool._line(spool.Record(e, None)) for e in entries))
    return path


class TestOtherWorkersFiles:
    def test_a_dead_workers_file_is_replayed_and_removed(
        self, catalog: Catalog, tenant: Tenant, spool_here: Path
    ) -> None:
        path = write_dead_workers_file(spool_here, "host-4242", entry("req-1"), entry("req-2"))
        assert spool.depth() == 2
        assert spool.replay_orphans() == 2
        assert not path.exists()
        assert UsageRecord.objects.count() == 2

    def test_replay_worker_for_the_reaper(self, catalog: Catalog, tenant: Tenant, spool_here: Path) -> None:
        write_dead_workers_file(spool_here, spool.worker_id(4243), entry("req-3"))
        assert spool.replay_worker(spool.worker_id(4243)) == 1
        assert spool.replay_worker(spool.worker_id(4243)) == 0, "nothing left"
        assert spool.replay_worker("no-such-worker") == 0
        assert UsageRecord.objects.get().request_id == "req-3"

    def test_a_live_workers_file_is_left_alone(self, catalog: Catalog, tenant: Tenant, spool_here: Path) -> None:
        path = write_dead_workers_file(spool_here, "host-alive", entry("req-live"))
        # Another process holds the file's lock, as a running worker holds its own.
        holder = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR); "
                "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)",
                str(path),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
            assert spool.replay_orphans() == 0
            assert spool.replay_worker("host-alive") == 0
            assert path.exists() and not UsageRecord.objects.exists()
        finally:
            holder.kill()
            holder.wait()
        assert spool.replay_orphans() == 1, "once its worker is gone, it is claimed"

    def test_this_workers_own_file_is_locked_while_it_lives(self, catalog: Catalog, tenant: Tenant) -> None:
        spool.keep(entry("req-own"), None, tokens=1)
        fd = os.open(spool.this_spool().path, os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
        assert spool.replay_orphans() == 0, "its own file is no orphan"
        assert spool.replay_now() == 1


class TestWhateverFails:
    def test_a_plain_call_whose_metering_breaks_keeps_its_reservation(
        self, api: Api, catalog: Catalog, tenant: Tenant, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # The bug: the call was answered by the provider, the ledger write failed,
        # the reservation was released: never billed. Now the reservation stays for the sweeper.
        def broken(*, entry: UsageEntry) -> tuple[Decimal, bool]:
            raise ValueError("a bug in metering")

        monkeypatch.setattr(meter, "usage_record_create", broken)
        response = api.chat(BODY)
        assert response.status_code == 500
        assert response.json()["error"]["code"] == "internal_error"
        assert admission.reserved_total(tenant.pk) > 0, "held until the sweeper bills it"

    def test_a_stream_whose_metering_breaks_ends_with_an_error_event_and_closes_upstream(
        self, api: Api, catalog: Catalog, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        closed: list[bool] = []
        from proxy.adapters import mock

        real_close = mock._Stream.close

        def close(self: Any) -> None:
            closed.append(True)
            real_close(self)

        monkeypatch.setattr(mock._Stream, "close", close)

        def broken(*args: Any, **kwargs: Any) -> Any:
            raise ValueError("a bug in metering")

        monkeypatch.setattr(relay.meter, "record", broken)
        events = sse_events(api.chat({**BODY, "stream": True}))
        assert events[-1] != "[DONE]"
        assert events[-1]["error"]["code"] == "internal_error"
        assert closed == [True]

    @pytest.mark.parametrize("where", ["respcache", "usage_body"])
    def test_a_stream_that_fails_after_metering_still_ends_cleanly(
        self, api: Api, catalog: Catalog, monkeypatch: pytest.MonkeyPatch, where: str
    ) -> None:
        def broken(*args: Any, **kwargs: Any) -> Any:
            raise ValueError("a bug at the end")

        if where == "respcache":
            monkeypatch.setattr(relay.respcache, "store", broken)
            response = api.client.post(
                "/v1/chat/completions",
                data=json.dumps({**BODY, "stream": True, "temperature": 0}),
                content_type="application/json",
                headers={**api.headers(), "x-tollway-cache": "use"},
            )
        else:
            monkeypatch.setattr(relay, "usage_body", broken)
            response = api.chat({**BODY, "stream": True, "stream_options": {"include_usage": True}})
        events = sse_events(response)
        assert events[-1]["error"]["code"] == "internal_error"
        assert UsageRecord.objects.count() == 1, "billed all the same"

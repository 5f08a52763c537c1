"""Running a batch: its lines through the same route, adapter and meter stages as a live
call (``proxy``), at the batch price, a bounded number at a time.

Exactly once: each line's request id derives from the batch and its ``custom_id``
(``services.line_request_id``), and the ledger writes one row per request id. A line is
marked ``running`` before it starts and finished after its row is written; a worker
killed in between leaves it ``running``, and the next runner starts it again: if its row
is in the ledger the answer is fetched again at no charge (the row stands), otherwise it is
run and billed as any line. So no line is billed twice, and none is skipped.

One runner at a time holds a batch, through its lease (``Batch.lease_until``), renewed as
it goes; a lease left to lapse means the runner died, and ``batches.tick`` (or a worker
starting) hands the batch to another.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
from django.conf import settings
from django.db import connections, transaction
from django.db.models import F, Q
from django.utils import timezone

from batches import files, services, slots, validate
from batches.models import Batch, BatchLine
from billing import admission as limits
from billing.models import UsageRecord
from config.errors import (
    AuthenticationFailed,
    ErrorCode,
    InternalError,
    PermissionDenied,
    RateLimited,
    TollwayError,
)
from proxy import adapters, admit, attempts, meter, relay, route
from proxy.parse import CHAT, COMPLETIONS, EMBEDDINGS
from tenants.cache import principals
from tenants.selectors import KeyPrincipal

log = logging.getLogger(__name__)

NUDGE_GRACE = timedelta(minutes=5)  # a batch enqueued this recently is in a queue: leave it be
RATE_LIMIT_WAIT_SECONDS = 60.0  # how long a line waits out the tenant's rate limits
EXPIRED_MESSAGE = "This request could not be executed before the completion window expired."


@dataclass(frozen=True)
class Outcome:
    more: bool  # work remains: enqueue the next chunk
    wait: float = 0.0


def _conf(name: str) -> Any:
    return settings.TOLLWAY[name]


def _lease() -> timedelta:
    return timedelta(seconds=float(_conf("BATCH_LEASE_SECONDS")))


def nudged(batch_id: int) -> None:
    Batch.objects.filter(pk=batch_id).update(nudged_at=timezone.now())


# --- the lease ------------------------------------------------------------------------------


def _claim(batch_id: int) -> bool:
    now = timezone.now()
    return (
        Batch.objects.filter(pk=batch_id, status__in=Batch.OPEN)
        .filter(Q(lease_until__isnull=True) | Q(lease_until__lt=now))
        .update(lease_until=now + _lease())
        == 1
    )


def _renew(batch_id: int) -> None:
    Batch.objects.filter(pk=batch_id).update(lease_until=timezone.now() + _lease())


def _release(batch_id: int) -> None:
    Batch.objects.filter(pk=batch_id).update(lease_until=None)


# --- the entry point ------------------------------------------------------------------------


def batch_run(*, batch_id: int) -> Outcome:
    """Do one chunk of the batch (validation first, then lines, then its files). Returns
    whether more remains. A batch held by another runner is left to it."""
    if not _claim(batch_id):
        return Outcome(more=False)
    try:
        batch = Batch.objects.select_related("api_key", "input_file").get(pk=batch_id)
        # Lines left running are a dead runner's (this one holds the lease): start them again.
        batch.lines.filter(status=BatchLine.Status.RUNNING).update(status=BatchLine.Status.PENDING)
        if batch.status == Batch.Status.VALIDATING and not _validate(batch):
            return Outcome(more=False)
        if batch.status == Batch.Status.FINALIZING:
            _finalize(batch)
            return Outcome(more=False)
        if timezone.now() >= batch.expires_at:
            _expire(batch)
            _finalize(batch)
            return Outcome(more=False)
        more = _run_chunk(batch)
        batch.refresh_from_db()
        if more and batch.status == Batch.Status.IN_PROGRESS:
            return Outcome(more=True)
        if timezone.now() >= batch.expires_at:
            _expire(batch)
        elif batch.lines.filter(status=BatchLine.Status.PENDING, attempts__gt=0).exists():
            return Outcome(more=True)  # lines a dead runner had in flight: even a cancelled batch finishes them
        _finalize(batch)
        return Outcome(more=False)
    finally:
        _release(batch_id)


def batches_sweep(*, include_held: bool = False) -> list[tuple[int, float]]:
    """The open batches to enqueue again, with how long to wait: those whose runner died
    (lease lapsed), those long unqueued, and, at a worker's start (``include_held``),
    those whose lease is still held, for when it lapses."""
    now = timezone.now()
    found: list[tuple[int, float]] = []
    for pk, lease_until, nudged_at in Batch.objects.filter(status__in=Batch.OPEN).values_list(
        "pk", "lease_until", "nudged_at"
    )[:1000]:
        if lease_until is not None and lease_until > now:
            if include_held:
                found.append((pk, (lease_until - now).total_seconds() + 0.5))
            continue
        if not include_held and lease_until is None and nudged_at is not None and nudged_at > now - NUDGE_GRACE:
            continue  # waiting in the queue (at a worker's start, its message may have died with a worker)
        found.append((pk, 0.0))
        nudged(pk)
    return found


# --- validation -----------------------------------------------------------------------------


def _fail(batch: Batch, errors: list[dict[str, Any]]) -> None:
    now = timezone.now()
    Batch.objects.filter(pk=batch.pk).update(
        status=Batch.Status.FAILED, failed_at=now, errors={"object": "list", "data": errors}
    )
    batch.refresh_from_db()


def _validate(batch: Batch) -> bool:
    """Check every line, then create them; False (and the batch failed) if any is bad."""
    try:
        principal = principal_of(batch)
    except TollwayError as exc:
        _fail(batch, [{"code": str(exc.code), "message": exc.message, "param": None, "line": None}])
        return False
    if batch.input_file is None:
        _fail(
            batch, [{"code": "file_not_found", "message": "The input file was deleted.", "param": None, "line": None}]
        )
        return False
    try:
        lines = validate.lines_check(
            data=files.file_lines(batch.input_file), endpoint=batch.endpoint, principal=principal
        )
    except validate.Invalid as exc:
        _fail(batch, [error.as_json() for error in exc.errors])
        return False
    for start in range(0, len(lines), 1000):
        BatchLine.objects.bulk_create(
            [
                BatchLine(
                    batch=batch,
                    line=line.line,
                    custom_id=line.custom_id,
                    request_id=services.line_request_id(batch.public_id, line.custom_id),
                    body=line.body,
                )
                for line in lines[start : start + 1000]
            ],
            ignore_conflicts=True,  # a validation cut short and run again
        )
        _renew(batch.pk)
    Batch.objects.filter(pk=batch.pk, status=Batch.Status.VALIDATING).update(
        status=Batch.Status.IN_PROGRESS, in_progress_at=timezone.now(), total=len(lines)
    )
    Batch.objects.filter(pk=batch.pk).update(total=len(lines))
    batch.refresh_from_db()
    return True


def principal_of(batch: Batch) -> KeyPrincipal:
    """The batch's key as the request path sees it, refused as a live call would be if it
    has been revoked or expired, or its tenant suspended, since the batch was created."""
    principal = principals.get(batch.api_key.key_id)
    if principal is None or principal.revoked:
        raise AuthenticationFailed("The API key that created this batch has been revoked.", code=ErrorCode.KEY_REVOKED)
    if principal.expires_at is not None and principal.expires_at <= timezone.now():
        raise AuthenticationFailed("The API key that created this batch has expired.", code=ErrorCode.KEY_EXPIRED)
    if not principal.tenant_active:
        raise PermissionDenied(
            f"The tenant '{principal.tenant_slug}' is suspended, so its batches do not run.",
            code=ErrorCode.TENANT_SUSPENDED,
        )
    return principal


# --- lines ----------------------------------------------------------------------------------


def _run_chunk(batch: Batch) -> bool:
    """Run up to ``BATCH_CHUNK_LINES`` pending lines, ``BATCH_TENANT_CONCURRENCY`` at a
    time; stop starting new ones on cancel or expiry. Returns whether lines remain."""
    pending = batch.lines.filter(status=BatchLine.Status.PENDING)
    if batch.status == Batch.Status.CANCELLING:
        pending = pending.filter(attempts__gt=0)
    todo = list(pending.order_by("line").values_list("pk", flat=True)[: int(_conf("BATCH_CHUNK_LINES"))])
    if not todo:
        return False
    stop = threading.Event()
    workers = max(1, int(_conf("BATCH_TENANT_CONCURRENCY")))
    lines = iter(todo)
    lock = threading.Lock()

    def next_line() -> int | None:
        with lock:
            return next(lines, None)

    def work() -> None:
        try:
            while not stop.is_set() and (pk := next_line()) is not None:
                if timezone.now() >= batch.expires_at:
                    stop.set()
                    return
                with slots.hold(f"t{batch.tenant_id}", workers):
                    if not stop.is_set():
                        _run_line(batch, pk)
        finally:
            connections.close_all()  # this thread's connections only

    renew_every = max(0.2, float(_conf("BATCH_LEASE_SECONDS")) / 3)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"batch-{batch.pk}") as pool:
        running: set[Future[None]] = {pool.submit(work) for _ in range(workers)}
        while running:
            _, running = wait(running, timeout=renew_every, return_when=FIRST_COMPLETED)
            _renew(batch.pk)
            slots.renew()
            status = Batch.objects.filter(pk=batch.pk).values_list("status", flat=True).first()
            if status != Batch.Status.IN_PROGRESS:
                stop.set()  # cancelled: lines in flight finish; no new one starts
    return batch.lines.filter(status=BatchLine.Status.PENDING).exists()


def _run_line(batch: Batch, pk: int) -> None:
    started = BatchLine.objects.filter(pk=pk, status=BatchLine.Status.PENDING).update(
        status=BatchLine.Status.RUNNING, attempts=F("attempts") + 1
    )
    if not started:
        return
    line = BatchLine.objects.get(pk=pk)
    try:
        body, cost = line_execute(batch=batch, line=line)
    except TollwayError as exc:
        _finish(line, status=BatchLine.Status.FAILED, status_code=exc.status, error=exc.body())
        return
    except Exception:
        log.exception("batch %s line %s failed", batch.public_id, line.line)
        internal = InternalError(line.request_id)
        _finish(line, status=BatchLine.Status.FAILED, status_code=internal.status, error=internal.body())
        return
    _finish(line, status=BatchLine.Status.SUCCEEDED, status_code=200, response=body, cost=cost)


def _finish(
    line: BatchLine,
    *,
    status: str,
    status_code: int,
    response: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
    cost: Decimal | None = None,
) -> None:
    with transaction.atomic():  # the line and the batch's counts move together
        BatchLine.objects.filter(pk=line.pk).update(
            status=status,
            status_code=status_code,
            response=response,
            error=error,
            cost=cost,
            finished_at=timezone.now(),
        )
        ok = status == BatchLine.Status.SUCCEEDED
        services.batch_counts(batch_id=line.batch_id, completed=int(ok), failed=int(not ok), cost=cost or 0)


def _admit(call: meter.Call) -> None:
    """Admission as for a live call (the budget, per line); the tenant's rate limits are
    waited out, for up to a minute, rather than failing the line."""
    deadline = time.monotonic() + RATE_LIMIT_WAIT_SECONDS
    while True:
        try:
            admit.admit(call)
            return
        except RateLimited as exc:
            if exc.upstream_status is not None or time.monotonic() > deadline:
                raise
            try:
                wait_for = float(exc.headers.get("Retry-After", "1"))
            except ValueError:
                wait_for = 1.0
            time.sleep(min(max(wait_for, 0.1), 5.0))


_CALLS = {
    CHAT: lambda adapter: adapter.complete,
    COMPLETIONS: lambda adapter: adapter.text_complete,
    EMBEDDINGS: lambda adapter: adapter.embed,
}


def _attempt(call: meter.Call) -> adapters.Completion:
    """One upstream attempt, holding one of its deployment's batch slots."""
    target = call.route.target
    with slots.hold(f"d{target.deployment_pk}", max(1, int(_conf("BATCH_DEPLOYMENT_CONCURRENCY")))):
        call.upstream_started = time.monotonic()
        send = _CALLS[call.chat.endpoint](adapters.for_kind(target.kind))
        completion: adapters.Completion = send(target, call.chat.upstream_body(target.upstream_model))
    return completion


def line_execute(*, batch: Batch, line: BatchLine) -> tuple[dict[str, Any], Decimal]:
    """Run one line through route, admit, call and meter, at the batch price. Returns the
    answer (OpenAI's body, with ``usage.cost``) and its cost; raises the TollwayError a
    live call would have answered with."""
    principal = principal_of(batch)
    chat = validate.check_body(line.body, batch.endpoint, principal)
    billed: Decimal | None = None
    first_at = timezone.now()
    if line.attempts > 1:  # a runner died on this line: its reservation, and perhaps its row, remain
        limits.reservation_forget(
            request_id=line.request_id, tenant_id=principal.tenant_pk, api_key_id=principal.api_key_pk
        )
        earlier = UsageRecord.objects.filter(request_id=line.request_id).values_list("cost", "created_at").first()
        if earlier is not None:
            billed, first_at = earlier
    steps = [(entry, price.for_batch()) for entry, price in route.plan(chat.model, allows=principal.allows_model)]
    picker = attempts.Picker(steps)
    first = picker.next()
    if first is None:
        raise picker.unavailable()
    # The ledger is unique by (request id, created_at), the partition key: a re-run keeps
    # the first attempt's instant, so its row meets the one written before and is dropped.
    call = meter.Call(
        request_id=line.request_id,
        principal=principal,
        route=first,
        chat=chat,
        batch_id=batch.public_id,
        created_at=first_at,
    )
    call.reserve_price = admit.reserve_price([price for _, price in steps])
    call.plan_models = tuple(entry.model_pk for entry, _ in steps)
    if billed is None:
        _admit(call)
    try:
        completion = attempts.run(call, picker, _attempt)
    except BaseException:
        meter.release(call)
        raise
    call.upstream_done = time.monotonic()
    call.answered = True
    body = completion.body
    usage, estimated = completion.usage, False
    if usage is None:
        text = " ".join(relay.choice_text(choice) for choice in body.get("choices") or [])
        usage, estimated = meter.estimate(chat, text), True
    cost = meter.record(call, usage, estimated=estimated)
    if billed is not None:
        cost = billed  # its row was written by the attempt that died: that is what it cost
    body["model"] = call.route.entry.name
    body["usage"] = relay.usage_body(usage, cost, body.get("usage"), embeddings=chat.endpoint == EMBEDDINGS)
    return body, cost


# --- the end --------------------------------------------------------------------------------


def _expire(batch: Batch) -> None:
    """Lines not run within the window go to the error file as expired."""
    with transaction.atomic():
        expired = batch.lines.filter(status__in=[BatchLine.Status.PENDING, BatchLine.Status.RUNNING]).update(
            status=BatchLine.Status.EXPIRED,
            finished_at=timezone.now(),
            error={"code": "batch_expired", "message": EXPIRED_MESSAGE},
        )
        if expired:
            services.batch_counts(batch_id=batch.pk, failed=expired)
        Batch.objects.filter(pk=batch.pk, status__in=Batch.OPEN).update(expired_at=timezone.now())
    batch.refresh_from_db()


def _output_lines(batch: Batch, statuses: list[str]) -> Iterator[bytes]:
    rows = batch.lines.filter(status__in=statuses).order_by("line")
    fields = ("line", "custom_id", "request_id", "status", "status_code", "response", "error")
    for values in rows.values_list(*fields).iterator(chunk_size=1000):
        _, custom_id, request_id, status, status_code, response, error = values
        if status == BatchLine.Status.EXPIRED:
            record: dict[str, Any] = {"id": request_id, "custom_id": custom_id, "response": None, "error": error}
        else:
            body = response if status == BatchLine.Status.SUCCEEDED else error
            record = {
                "id": request_id,
                "custom_id": custom_id,
                "response": {"status_code": status_code, "request_id": request_id, "body": body},
                "error": None,
            }
        yield orjson.dumps(record) + b"\n"


def _finalize(batch: Batch) -> None:
    """Write the output and error files, then the batch's final status: ``expired`` past
    its window, ``cancelled`` if it was cancelled, else ``completed``."""
    now = timezone.now()
    Batch.objects.filter(pk=batch.pk).update(status=Batch.Status.FINALIZING)
    Batch.objects.filter(pk=batch.pk, finalizing_at__isnull=True).update(finalizing_at=now)
    batch.refresh_from_db()
    Status = BatchLine.Status
    output = error = None
    if batch.lines.filter(status=Status.SUCCEEDED).exists():
        output = files.file_write(
            tenant_id=batch.tenant_id,
            filename=f"{batch.public_id}_output.jsonl",
            lines=_output_lines(batch, [Status.SUCCEEDED]),
        )
    if batch.lines.filter(status__in=[Status.FAILED, Status.EXPIRED]).exists():
        error = files.file_write(
            tenant_id=batch.tenant_id,
            filename=f"{batch.public_id}_error.jsonl",
            lines=_output_lines(batch, [Status.FAILED, Status.EXPIRED]),
        )
    final: dict[str, datetime | str | Any]
    done = timezone.now()
    if batch.expired_at is not None:
        final = {"status": Batch.Status.EXPIRED, "expired_at": batch.expired_at}
    elif batch.cancelling_at is not None:
        final = {"status": Batch.Status.CANCELLED, "cancelled_at": done}
    else:
        final = {"status": Batch.Status.COMPLETED, "completed_at": done}
    Batch.objects.filter(pk=batch.pk).update(output_file=output, error_file=error, **final)
    batch.refresh_from_db()

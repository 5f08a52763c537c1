"""Celery tasks of the Batch API, on their own ``batches`` queue (settings.CELERY_TASK_ROUTES).

A run does a bounded chunk of a batch, then enqueues its own next chunk, so a worker
is never held by one batch for long. Every run is safe to repeat: a batch is claimed
through its lease, and each line through its state.
"""

from __future__ import annotations

import logging

from celery import shared_task
from django.db import transaction

import config.celery  # noqa: F401  # the configured app: a web process's .delay() uses its broker
from batches import runner
from batches.models import Batch

log = logging.getLogger(__name__)


def enqueue(batch: Batch, *, countdown: float = 0) -> None:
    """Run ``batch`` once the caller's transaction commits. The broker being down is
    logged, not raised: the sweeper (``batches.tick``) enqueues it again."""
    batch_id = batch.pk

    def send() -> None:
        try:
            run_batch.apply_async(args=(batch_id,), countdown=countdown)
        except Exception as exc:  # the request that created the batch still succeeds
            log.error("batches: could not enqueue batch %s: %r", batch_id, exc)

    runner.nudged(batch_id)
    transaction.on_commit(send)


@shared_task(name="batches.run", ignore_result=True, acks_late=True)
def run_batch(batch_id: int) -> None:
    outcome = runner.batch_run(batch_id=batch_id)
    # Eager (the embedded default with no worker): run to the end here, not by recursion.
    while outcome.more and run_batch.app.conf.task_always_eager:
        outcome = runner.batch_run(batch_id=batch_id)
    if outcome.more:
        run_batch.apply_async(args=(batch_id,), countdown=outcome.wait)


@shared_task(name="batches.tick", ignore_result=True)
def tick(include_held: bool = False) -> int:
    """Enqueue again the batches whose worker died, and those past their window (a run
    expires them). ``include_held`` at a worker's start: also those whose lease still
    holds, to run when it lapses, for the worker that held it may be the one that died."""
    resumed = runner.batches_sweep(include_held=include_held)
    for batch_id, wait in resumed:
        run_batch.apply_async(args=(batch_id,), countdown=wait)
    return len(resumed)

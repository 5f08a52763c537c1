"""A worker that starts resumes the batches a killed worker left behind (their leases
lapse; ``batches.tick`` would find them too, within its period)."""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import worker_ready

log = logging.getLogger(__name__)


@worker_ready.connect
def resume_batches(**_: Any) -> None:
    from batches import tasks

    try:
        tasks.tick.delay(include_held=True)
    except Exception as exc:  # a worker must start even if this fails; the beat retries
        log.error("batches: could not resume batches at start: %r", exc)

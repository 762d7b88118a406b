"""The control half of the store's garbage collection (``store_gc``).

A collection runs on a backup host whose store it collects (the run half,
``workers/operations/storage.py``, says which store that is). ``scope``:

* ``released`` — only objects SQL knows and no backup references any more
  (what deletes left behind); cheap, no listing of the store;
* ``full`` — that, then a sweep of the store's listing for objects no row
  knows: leftovers of backups that failed or died, older than the oldest job
  still running on the store by ``ORCH_GC_GRACE`` seconds.

What it freed is the job's ``result``. Collecting is idempotent: a lost lease
re-runs it.
"""
from __future__ import annotations

import uuid
from dataclasses import asdict
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy import update
from sqlalchemy.orm import Session

from orchestrator.models import Job
from orchestrator.operations.base import FollowUp
from orchestrator.operations.base import Operation
from orchestrator.operations.base import Params
from orchestrator.operations.base import register

SCOPES = ("released", "full")
# The resource a collection works on: one id per store (or per host, when the store is not
# known yet), so that one active collection per store is easy to find.
_NAMESPACE = uuid.UUID("5e0c4f57-6a0e-4b8e-9a59-0f6f1e8d2c11")


def gc_resource_id(store: str) -> str:
    """The resource id of the collections of ``store`` (a store identity or ``host:<h>``)."""
    return str(uuid.uuid5(_NAMESPACE, store))


@dataclass(frozen=True)
class StoreGCParams(Params):
    scope: str = "full"
    # The store the job was created for; None: whatever store the host has.
    store: str | None = None


@dataclass(frozen=True)
class StoreGCOutcome:
    """What one collection did."""

    store: str
    scope: str
    objects_freed: int = 0
    bytes_freed: int = 0
    unknown_objects_freed: int = 0      # of those: objects no row knew (the sweep)
    unknown_bytes_freed: int = 0
    objects_skipped: int = 0            # unknown, but too young or of a backup still running
    objects_listed: int = 0
    elapsed_s: float = 0.0

    def to_json(self) -> dict:
        return asdict(self)


@register
class StoreGC(Operation):
    name = "store_gc"
    params_type = StoreGCParams
    resource_type = "store"
    resumable = True

    def complete(self, session, job, params, outcome: StoreGCOutcome, *, now):
        session.execute(update(Job).where(Job.id == job.id).values(result=outcome.to_json()))


def released_gc(session: Session, store: str, host: str) -> FollowUp | None:
    """A collection of what a delete just released, unless one is already queued."""
    resource_id = gc_resource_id(store)
    queued = session.scalar(select(Job.id).where(Job.resource_id == resource_id,
                                                 Job.op == StoreGC.name,
                                                 Job.state.in_(("queued", "waiting"))).limit(1))
    if queued is not None:
        return None
    return FollowUp(StoreGC.name, resource_id=resource_id, host=host,
                    params=StoreGCParams(scope="released", store=store))

"""What every job type is: its typed parameters and its control half.

An ``Operation`` is the one place that knows a job type end to end on the
control side: the parameters its job row carries (a dataclass), where it
runs (``queue_kind``), whether a lost lease re-runs it (``resumable``) on
another host of the zone (``routable``), how often a transient failure is
retried, and what its ending does to the resources in SQL:

* ``prepare``  — in the claim's transaction, before the work starts;
* ``complete`` — in the transaction that marks the job succeeded, given
  what the worker's run half returned;
* ``fail``     — on failure or cancellation, whoever ends the job (the
  worker, the reaper, a restart clean-up, a force delete);
* ``abandon``  — when the request's job could not be published at all:
  undo everything the request wrote.

The run half (the data path and the node's volumes) lives in
``workers/operations``, registered under the same name. Adding a job type
means writing one ``Operation`` subclass and its run half, nothing else:
the job manager, the reaper, dispatch and abandon are generic over them.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from typing import Any
from typing import ClassVar

from sqlalchemy.orm import Session

from orchestrator.models import Job


@dataclass(frozen=True)
class RetryPolicy:
    """How a job's run is retried in place after a transient failure.

    A transient failure (a store that timed out or throttled, a database
    connection lost mid-job) is retried by the worker holding the lease,
    after ``backoff(n)`` seconds, at most ``retries`` times; each retry is
    recorded in the job's history. Anything else fails the job at once.
    """

    retries: int = 3
    first_delay: float = 0.5
    factor: float = 2.0
    max_delay: float = 30.0

    def backoff(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1-based)."""
        return min(self.max_delay, self.first_delay * self.factor ** (retry - 1))


NO_RETRY = RetryPolicy(retries=0)


@dataclass(frozen=True)
class Params:
    """Base of every operation's parameters (stored as the job row's JSON)."""

    def to_json(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass(frozen=True)
class FollowUp:
    """A job that ``complete`` asks for, created in the same transaction and dispatched
    after its commit."""

    op: str
    resource_id: str
    host: str
    params: Params | None = None
    project_id: str | None = None


class Operation:
    """The control half of one job type (see the module docstring)."""

    name: ClassVar[str]
    params_type: ClassVar[type[Params]] = Params
    resource_type: ClassVar[str]
    queue_kind: ClassVar[str] = "backup"
    # Idempotent: after a lost lease it runs again, up to RESUMABLE_ATTEMPTS times.
    resumable: ClassVar[bool] = False
    # Any live host of the zone can run it (the store, and for the file volume backend
    # the volume path, are shared within a zone); volume operations stay on their host.
    routable: ClassVar[bool] = False
    retry: ClassVar[RetryPolicy] = RetryPolicy()

    def params(self, job: Job) -> Params:
        """The job's parameters, typed (keys the type does not know are ignored)."""
        raw = job.params or {}
        fields = _field_names(self.params_type)
        return self.params_type(**{k: v for k, v in raw.items() if k in fields})

    @property
    def what(self) -> str:
        """How messages name the operation: ``backup create``."""
        return self.name.replace("_", " ")

    def prepare(self, session: Session, job: Job, params: Params) -> Any:
        """Runs in the claim's transaction; what it returns reaches the run half."""
        return None

    def complete(self, session: Session, job: Job, params: Params, outcome: Any, *,
                 now: dt.datetime) -> list[FollowUp] | None:
        """Apply a successful run's ``outcome`` to the resources (one transaction); may
        ask for follow-up jobs."""

    def fail(self, session: Session, job: Job, params: Params, reason: str, *,
             now: dt.datetime, cancelled: bool) -> None:
        """Apply a failure or cancellation to the resources (compare-and-swap only)."""

    def abandon(self, session: Session, job: Job, params: Params, *, now: dt.datetime) -> None:
        """Undo what the request wrote when its job could not be published."""


def _field_names(params_type: type) -> frozenset[str]:
    cached = _FIELDS.get(params_type)
    if cached is None:
        cached = _FIELDS[params_type] = frozenset(f.name for f in dataclasses.fields(params_type))
    return cached


_FIELDS: dict[type, frozenset[str]] = {}

REGISTRY: dict[str, Operation] = {}


def register(cls: type[Operation]) -> type[Operation]:
    """Class decorator: make an operation known to dispatch, workers and the reaper."""
    if cls.name in REGISTRY:
        raise ValueError(f"operation {cls.name!r} is already registered")
    REGISTRY[cls.name] = cls()
    return cls


def unregister(name: str) -> None:
    """Forget an operation (tests that define a toy one)."""
    REGISTRY.pop(name, None)


def get(name: str) -> Operation:
    """The operation of a job; :raises KeyError: for a name nothing registered."""
    return REGISTRY[name]


FAIL_REASON_MAX = 255


def truncate_reason(reason: str) -> str:
    """A failure reason on one line, at most FAIL_REASON_MAX characters."""
    reason = " ".join(str(reason).split())
    return reason if len(reason) <= FAIL_REASON_MAX else reason[:FAIL_REASON_MAX - 3] + "..."

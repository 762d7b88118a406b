"""The run half of a job type: what a storage node does between claim and completion.

A ``RunHalf`` is registered under its operation's name. ``prepare`` runs in
the claim's transaction (by default the operation's own); ``run`` does the
work outside any transaction and returns the outcome the operation's
``complete`` applies. Raising ends the job through the operation's ``fail``.
"""
from __future__ import annotations

from typing import Any
from typing import ClassVar

from sqlalchemy.orm import Session

from orchestrator import operations
from orchestrator.models import Job
from orchestrator.operations import Operation
from orchestrator.operations import Params
from workers.jobrun import JobRun


class RunHalf:
    operation: ClassVar[str]

    @property
    def control(self) -> Operation:
        return operations.get(self.operation)

    def prepare(self, session: Session, job: Job, params: Params) -> Any:
        return self.control.prepare(session, job, params)

    def run(self, run: JobRun, params: Params) -> Any:
        raise NotImplementedError

    def lost(self, settings, job: Job) -> None:
        """Remove what a run that died mid-way left behind (nothing, by default)."""


RUNNERS: dict[str, RunHalf] = {}


def runs(cls: type[RunHalf]) -> type[RunHalf]:
    """Class decorator: register the run half of ``cls.operation``."""
    if cls.operation in RUNNERS:
        raise ValueError(f"the run half of {cls.operation!r} is already registered")
    RUNNERS[cls.operation] = cls()
    return cls


def unregister(name: str) -> None:
    RUNNERS.pop(name, None)

"""Every status a resource or a job can be in, as enums.

They are ``StrEnum``: a member is equal to, and stored as, its wire string,
so rows, JSON replies and SQL comparisons see exactly Cinder's values.
"""
from __future__ import annotations

from enum import StrEnum


class BackupStatus(StrEnum):
    CREATING = "creating"
    AVAILABLE = "available"
    DELETING = "deleting"
    DELETED = "deleted"
    RESTORING = "restoring"
    ERROR = "error"
    ERROR_DELETING = "error_deleting"


class VolumeStatus(StrEnum):
    CREATING = "creating"
    AVAILABLE = "available"
    RESERVED = "reserved"
    IN_USE = "in-use"
    BACKING_UP = "backing-up"
    RESTORING_BACKUP = "restoring-backup"
    MAINTENANCE = "maintenance"
    DELETING = "deleting"
    DELETED = "deleted"
    ERROR = "error"
    ERROR_DELETING = "error_deleting"
    ERROR_RESTORING = "error_restoring"
    ERROR_EXTENDING = "error_extending"


class SnapshotStatus(StrEnum):
    CREATING = "creating"
    AVAILABLE = "available"
    BACKING_UP = "backing-up"
    DELETING = "deleting"
    DELETED = "deleted"
    ERROR = "error"
    ERROR_DELETING = "error_deleting"


class JobState(StrEnum):
    WAITING = "waiting"      # chained after another job, not yet queued
    QUEUED = "queued"        # committed and published (or to be re-sent)
    RUNNING = "running"      # claimed by a worker holding a lease
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE_JOB_STATES = (JobState.WAITING, JobState.QUEUED, JobState.RUNNING)
TERMINAL_JOB_STATES = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class VerifyStatus(StrEnum):
    VERIFYING = "verifying"
    OK = "ok"
    FAILED = "failed"
    ERROR = "error"
    CANCELLED = "cancelled"

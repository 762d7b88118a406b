"""SQLAlchemy 2.x models: the source of truth for every resource and job."""
from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import JSON
from sqlalchemy import BigInteger
from sqlalchemy import Boolean
from sqlalchemy import DateTime
from sqlalchemy import ForeignKey
from sqlalchemy import Index
from sqlalchemy import Integer
from sqlalchemy import MetaData
from sqlalchemy import String
from sqlalchemy import Text
from sqlalchemy import UniqueConstraint
from sqlalchemy import text
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column
from sqlalchemy.orm import relationship

from orchestrator.db import utcnow

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

NULL_VOLUME_ID = "00000000-0000-0000-0000-000000000000"


def new_id() -> str:
    return str(uuid.uuid4())


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class TimestampMixin:
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, nullable=False)
    updated_at: Mapped[dt.datetime | None] = mapped_column(DateTime, onupdate=utcnow)


class SoftDeleteMixin:
    deleted: Mapped[bool] = mapped_column(Boolean, default=False, nullable=False)
    deleted_at: Mapped[dt.datetime | None] = mapped_column(DateTime)


class Service(Base):
    """A worker role on a host (cinder-backup, cinder-volume, cinder-scheduler).

    updated_at is the heartbeat.
    """

    __tablename__ = "services"
    # No index holds updated_at: a heartbeat then changes no indexed column, and
    # PostgreSQL rewrites the row in place (HOT; the table has fillfactor 50).
    __table_args__ = (UniqueConstraint("host", "binary"),
                      Index("ix_services_binary_live", "binary", "availability_zone"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    uuid: Mapped[str] = mapped_column(String(36), default=new_id, nullable=False)
    host: Mapped[str] = mapped_column(String(255), nullable=False)
    binary: Mapped[str] = mapped_column(String(255), nullable=False)
    topic: Mapped[str] = mapped_column(String(255), nullable=False)
    availability_zone: Mapped[str] = mapped_column(String(255), nullable=False, default="nova")
    disabled: Mapped[bool] = mapped_column(Boolean, default=False, nullable=False)
    disabled_reason: Mapped[str | None] = mapped_column(String(255))
    report_count: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    boot_id: Mapped[str | None] = mapped_column(String(36))
    version: Mapped[str | None] = mapped_column(String(36))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, nullable=False)
    updated_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    modified_at: Mapped[dt.datetime | None] = mapped_column(DateTime)


class Volume(TimestampMixin, SoftDeleteMixin, Base):
    __tablename__ = "volumes"
    __table_args__ = (Index("ix_volumes_deleted_project_id", "deleted", "project_id",
                            "created_at", "id"),
                      Index("ix_volumes_deleted_created", "deleted", "created_at", "id"))

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(String(255), nullable=False)
    user_id: Mapped[str] = mapped_column(String(255), nullable=False)
    host: Mapped[str | None] = mapped_column(String(255))
    availability_zone: Mapped[str] = mapped_column(String(255), nullable=False)
    size: Mapped[int] = mapped_column(Integer, nullable=False)
    status: Mapped[str] = mapped_column(String(255), nullable=False)
    previous_status: Mapped[str | None] = mapped_column(String(255))
    display_name: Mapped[str | None] = mapped_column(String(255))
    display_description: Mapped[str | None] = mapped_column(String(255))
    volume_type: Mapped[str] = mapped_column(String(255), nullable=False, default="__DEFAULT__")
    snapshot_id: Mapped[str | None] = mapped_column(String(36))
    source_volid: Mapped[str | None] = mapped_column(String(36))
    bootable: Mapped[bool] = mapped_column(Boolean, default=False, nullable=False)
    metadata_: Mapped[dict] = mapped_column("metadata", JSON, default=dict, nullable=False)
    launched_at: Mapped[dt.datetime | None] = mapped_column(DateTime)


class Snapshot(TimestampMixin, SoftDeleteMixin, Base):
    __tablename__ = "snapshots"
    __table_args__ = (
        Index("ix_snapshots_deleted_project_id", "deleted", "project_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(String(255), nullable=False)
    user_id: Mapped[str] = mapped_column(String(255), nullable=False)
    volume_id: Mapped[str] = mapped_column(String(36), nullable=False, index=True)
    status: Mapped[str] = mapped_column(String(255), nullable=False)
    size: Mapped[int] = mapped_column(Integer, nullable=False)
    display_name: Mapped[str | None] = mapped_column(String(255))
    display_description: Mapped[str | None] = mapped_column(String(255))
    progress: Mapped[str] = mapped_column(String(255), default="0%", nullable=False)
    metadata_: Mapped[dict] = mapped_column("metadata", JSON, default=dict, nullable=False)


class Backup(TimestampMixin, SoftDeleteMixin, Base):
    """A volume backup; every column of Cinder's backups table plus progress."""

    __tablename__ = "backups"
    __table_args__ = (
        # Serve the default list order (created_at, id) by index, per project and for all.
        Index("ix_backups_deleted_project_id", "deleted", "project_id", "created_at", "id"),
        Index("ix_backups_deleted_created", "deleted", "created_at", "id"),
        Index("ix_backups_volume_id", "volume_id"),
        # Children by parent (has_dependent_backups, dependents count): only incremental
        # backups have a parent, so the index stays small however many backups exist.
        Index("ix_backups_parent_id", "parent_id", postgresql_where=text("parent_id IS NOT NULL"),
              sqlite_where=text("parent_id IS NOT NULL")),
        # A policy's backups (prune, last success per volume); manual backups have none.
        Index("ix_backups_policy_id", "policy_id", "volume_id",
              postgresql_where=text("policy_id IS NOT NULL"),
              sqlite_where=text("policy_id IS NOT NULL")),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(String(255), nullable=False)
    project_id: Mapped[str] = mapped_column(String(255), nullable=False)
    volume_id: Mapped[str] = mapped_column(String(36), nullable=False)
    snapshot_id: Mapped[str | None] = mapped_column(String(36))
    status: Mapped[str | None] = mapped_column(String(255))
    fail_reason: Mapped[str | None] = mapped_column(String(255))
    display_name: Mapped[str | None] = mapped_column(String(255))
    display_description: Mapped[str | None] = mapped_column(String(255))
    container: Mapped[str | None] = mapped_column(String(255))
    service: Mapped[str | None] = mapped_column(String(255))
    service_metadata: Mapped[str | None] = mapped_column(String(255))
    host: Mapped[str | None] = mapped_column(String(255))
    availability_zone: Mapped[str | None] = mapped_column(String(255))
    size: Mapped[int | None] = mapped_column(Integer)
    object_count: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    parent_id: Mapped[str | None] = mapped_column(String(36))
    num_dependent_backups: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    data_timestamp: Mapped[dt.datetime | None] = mapped_column(DateTime)
    restore_volume_id: Mapped[str | None] = mapped_column(String(36))
    temp_volume_id: Mapped[str | None] = mapped_column(String(36))
    temp_snapshot_id: Mapped[str | None] = mapped_column(String(36))
    encryption_key_id: Mapped[str | None] = mapped_column(String(36))
    # Progress of the running operation (extra detail fields; clients ignore them).
    progress_bytes: Mapped[int] = mapped_column(BigInteger, default=0, nullable=False)
    progress_total: Mapped[int] = mapped_column(BigInteger, default=0, nullable=False)
    progress_rate: Mapped[float | None] = mapped_column()
    stored_bytes: Mapped[int | None] = mapped_column(BigInteger)
    # Result of the last integrity check (the admin `os-verify` action).
    verify_status: Mapped[str | None] = mapped_column(String(32))
    verified_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    verify_message: Mapped[str | None] = mapped_column(String(255))
    # 2: the shared-block format (a logical full over reference-counted objects, deletable
    # whatever depends on it); None: the chain format (only the newest may be deleted).
    data_format: Mapped[int | None] = mapped_column(Integer)
    # The backup policy that created it, and the rules that kept it at its last prune.
    policy_id: Mapped[str | None] = mapped_column(String(36))
    kept_by: Mapped[list | None] = mapped_column(JSON)

    # Loaded on first access (inside a session): the worker, which reads a backup row per
    # job, never needs it, and the HTTP views read metadata with their own query.
    metadata_items: Mapped[list[BackupMetadata]] = relationship(
        back_populates="backup", lazy="select", cascade="all, delete-orphan",
        primaryjoin="and_(Backup.id == BackupMetadata.backup_id, BackupMetadata.deleted == False)",
    )

    @property
    def name(self) -> str:
        return f"backup-{self.id}"

    @property
    def metadata_dict(self) -> dict[str, str]:
        return {m.key: m.value for m in self.metadata_items}


class BackupMetadata(SoftDeleteMixin, Base):
    __tablename__ = "backup_metadata"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    backup_id: Mapped[str] = mapped_column(ForeignKey("backups.id"), nullable=False, index=True)
    key: Mapped[str] = mapped_column(String(255), nullable=False)
    value: Mapped[str] = mapped_column(String(255), nullable=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, nullable=False)
    updated_at: Mapped[dt.datetime | None] = mapped_column(DateTime, onupdate=utcnow)

    backup: Mapped[Backup] = relationship(back_populates="metadata_items")


class Quota(Base):
    """A per-project override of a limit (-1 = unlimited)."""

    __tablename__ = "quotas"
    __table_args__ = (UniqueConstraint("project_id", "resource"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project_id: Mapped[str] = mapped_column(String(255), nullable=False)
    resource: Mapped[str] = mapped_column(String(255), nullable=False)
    hard_limit: Mapped[int] = mapped_column(Integer, nullable=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, nullable=False)
    updated_at: Mapped[dt.datetime | None] = mapped_column(DateTime, onupdate=utcnow)


class QuotaClass(Base):
    """Class-level limits; class `default` overrides the configured defaults."""

    __tablename__ = "quota_classes"
    __table_args__ = (UniqueConstraint("class_name", "resource"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    class_name: Mapped[str] = mapped_column(String(255), nullable=False)
    resource: Mapped[str] = mapped_column(String(255), nullable=False)
    hard_limit: Mapped[int] = mapped_column(Integer, nullable=False)


class QuotaUsage(Base):
    __tablename__ = "quota_usages"
    __table_args__ = (UniqueConstraint("project_id", "resource"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project_id: Mapped[str] = mapped_column(String(255), nullable=False)
    resource: Mapped[str] = mapped_column(String(255), nullable=False)
    in_use: Mapped[int] = mapped_column(BigInteger, default=0, nullable=False)
    reserved: Mapped[int] = mapped_column(BigInteger, default=0, nullable=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, nullable=False)
    updated_at: Mapped[dt.datetime | None] = mapped_column(DateTime, onupdate=utcnow)


class Reservation(Base):
    """A pending quota change; committed, rolled back or expired exactly once."""

    __tablename__ = "reservations"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    usage_id: Mapped[int] = mapped_column(ForeignKey("quota_usages.id"), nullable=False, index=True)
    project_id: Mapped[str] = mapped_column(String(255), nullable=False)
    resource: Mapped[str] = mapped_column(String(255), nullable=False)
    delta: Mapped[int] = mapped_column(BigInteger, nullable=False)
    expire: Mapped[dt.datetime] = mapped_column(DateTime, nullable=False, index=True)
    job_id: Mapped[str | None] = mapped_column(String(36), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, nullable=False)


class Job(Base):
    """One asynchronous operation; the lease makes every job end in a terminal state."""

    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_state_lease", "state", "lease_expires_at"),
        Index("ix_jobs_resource", "resource_id"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    op: Mapped[str] = mapped_column(String(64), nullable=False)
    resource_type: Mapped[str] = mapped_column(String(32), nullable=False)
    resource_id: Mapped[str] = mapped_column(String(36), nullable=False)
    project_id: Mapped[str | None] = mapped_column(String(255))
    host: Mapped[str] = mapped_column(String(255), nullable=False)
    queue: Mapped[str] = mapped_column(String(255), nullable=False)
    # waiting (for a previous job) → queued → running → succeeded | failed | cancelled
    state: Mapped[str] = mapped_column(String(32), nullable=False, default="queued")
    attempt: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    max_attempts: Mapped[int] = mapped_column(Integer, default=1, nullable=False)
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False, nullable=False)
    params: Mapped[dict] = mapped_column(JSON, default=dict, nullable=False)
    next_job_id: Mapped[str | None] = mapped_column(String(36))
    error: Mapped[str | None] = mapped_column(Text)
    # Events besides the state: each in-place retry of a transient failure (None: none).
    history: Mapped[list | None] = mapped_column(JSON)
    # What the job reported when it succeeded (a garbage collection: what it freed).
    result: Mapped[dict | None] = mapped_column(JSON)
    # The run half's own progress (None until it first reports): bytes_done, bytes_total,
    # bytes_skipped (holes and zero ranges not read or written), rate_bytes_per_s and
    # updated_at (ISO 8601 UTC), so a stalled job shows an old updated_at.
    progress: Mapped[dict | None] = mapped_column(JSON)
    # The x-openstack-request-id of the request that created the job (or of the job that
    # created it): on every log line of the worker that runs it, and in Flower.
    request_id: Mapped[str | None] = mapped_column(String(64))
    dispatched_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    dispatch_count: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, nullable=False)
    updated_at: Mapped[dt.datetime | None] = mapped_column(DateTime, onupdate=utcnow)


_OBJECT_ID = BigInteger().with_variant(Integer(), "sqlite")


class StoredObject(Base):
    """An object of the store that backups of the shared-block format reference.

    ``ref_count`` is the number of backup_objects rows naming it; an object is
    physically deleted only after a collector moved it from ``live`` to
    ``removing`` with ``ref_count`` 0, in one statement (see
    orchestrator/persistence/objects.py for the protocol).
    """

    __tablename__ = "store_objects"
    __table_args__ = (
        UniqueConstraint("store", "name"),
        Index("ix_store_objects_garbage", "store", "id", postgresql_where=text("ref_count = 0"),
              sqlite_where=text("ref_count = 0")),
    )

    id: Mapped[int] = mapped_column(_OBJECT_ID, primary_key=True, autoincrement=True)
    store: Mapped[str] = mapped_column(String(255), nullable=False)
    name: Mapped[str] = mapped_column(String(1024), nullable=False)
    size: Mapped[int] = mapped_column(BigInteger, nullable=False)
    sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    ref_count: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    state: Mapped[str] = mapped_column(String(16), nullable=False, default="live")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, nullable=False)
    released_at: Mapped[dt.datetime | None] = mapped_column(DateTime)


class BackupObject(Base):
    """Backup ``backup_id`` references object ``object_id`` (one reference of its count)."""

    __tablename__ = "backup_objects"
    __table_args__ = (Index("ix_backup_objects_object_id", "object_id"),)

    backup_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    object_id: Mapped[int] = mapped_column(_OBJECT_ID, ForeignKey("store_objects.id"),
                                           primary_key=True)


class ApiToken(Base):
    """An API token of the `token` auth mode; only the SHA-256 of its secret is stored."""

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    token_hash: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    user_id: Mapped[str] = mapped_column(String(255), nullable=False)
    project_id: Mapped[str] = mapped_column(String(255), nullable=False, index=True)
    roles: Mapped[str] = mapped_column(String(255), nullable=False)  # comma-separated
    description: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, nullable=False)
    expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime)

    @property
    def role_list(self) -> tuple[str, ...]:
        return tuple(r for r in self.roles.split(",") if r)


class BackupPolicy(TimestampMixin, SoftDeleteMixin, Base):
    """A backup schedule and retention over a project's volumes (orchestrator/policies/).

    ``next_run_at`` is the next due time, NULL while the policy is disabled or
    deleted: the tick finds due policies through the partial index on it, and
    claims a due time by moving it forward with a conditional UPDATE.
    """

    __tablename__ = "backup_policies"
    __table_args__ = (
        Index("ix_backup_policies_due", "next_run_at",
              postgresql_where=text("next_run_at IS NOT NULL"),
              sqlite_where=text("next_run_at IS NOT NULL")),
        Index("ix_backup_policies_deleted_project_id", "deleted", "project_id", "created_at",
              "id"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(String(255), nullable=False)
    user_id: Mapped[str] = mapped_column(String(255), nullable=False)
    display_name: Mapped[str | None] = mapped_column(String(255))
    display_description: Mapped[str | None] = mapped_column(String(255))
    cron: Mapped[str | None] = mapped_column(String(255))
    interval_seconds: Mapped[int | None] = mapped_column(Integer)
    timezone: Mapped[str] = mapped_column(String(64), nullable=False, default="UTC")
    start_window_seconds: Mapped[int] = mapped_column(Integer, nullable=False, default=3600)
    run_missed: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    volume_ids: Mapped[list] = mapped_column(JSON, nullable=False, default=list)
    volume_metadata: Mapped[dict] = mapped_column(JSON, nullable=False, default=dict)
    full_every: Mapped[int | None] = mapped_column(Integer)
    full_every_days: Mapped[int | None] = mapped_column(Integer)
    retention: Mapped[dict] = mapped_column(JSON, nullable=False, default=dict)
    enabled: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    next_run_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    last_run_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    missed_runs: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    # Why the last due run could not start yet (no live host...), until one starts.
    last_error: Mapped[str | None] = mapped_column(Text)
    last_prune: Mapped[dict | None] = mapped_column(JSON)


class BackupPolicyRun(Base):
    """One due time of a policy, run, run late or missed; unique per (policy, due time)."""

    __tablename__ = "backup_policy_runs"
    __table_args__ = (UniqueConstraint("policy_id", "due_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    policy_id: Mapped[str] = mapped_column(String(36), nullable=False)
    due_at: Mapped[dt.datetime] = mapped_column(DateTime, nullable=False)
    started_at: Mapped[dt.datetime] = mapped_column(DateTime, nullable=False)
    # scheduled | late (ran after its window, run_missed) | missed | manual
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    # Later due times that had also passed when this one was claimed (run once for all).
    coalesced: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    reason: Mapped[str | None] = mapped_column(Text)
    backup_ids: Mapped[dict] = mapped_column(JSON, nullable=False, default=dict)  # volume→id
    errors: Mapped[dict] = mapped_column(JSON, nullable=False, default=dict)  # volume→message


class ProjectKey(Base):
    """One wrapped key of a project (orchestrator/keys.py): a data key (which encrypts
    the objects of new backups while it is current, i.e. not retired) or the identity
    key (which keys the block digests; one per project, never rotated). Only the
    wrapped form is stored, sealed under the key encryption key ``kek_id`` names."""

    __tablename__ = "project_keys"
    __table_args__ = (
        # At most one current key per project and purpose.
        Index("uq_project_keys_current", "project_id", "purpose", unique=True,
              postgresql_where=text("retired_at IS NULL"),
              sqlite_where=text("retired_at IS NULL")),
    )

    # A key id is a project's own unless an admin imported another project's backup:
    # then the importing project holds the same key id too (its own wrapping).
    project_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    purpose: Mapped[str] = mapped_column(String(16), nullable=False)    # data | identity
    wrapped: Mapped[str] = mapped_column(Text, nullable=False)
    kek_id: Mapped[str] = mapped_column(String(64), nullable=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, nullable=False)
    retired_at: Mapped[dt.datetime | None] = mapped_column(DateTime)

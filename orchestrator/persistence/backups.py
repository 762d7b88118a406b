"""Backup rows: the read model and the hot writes, as statements built once."""
from __future__ import annotations

import functools

from sqlalchemy import JSON
from sqlalchemy import bindparam
from sqlalchemy import case
from sqlalchemy import false
from sqlalchemy import func
from sqlalchemy import insert
from sqlalchemy import literal_column
from sqlalchemy import null
from sqlalchemy import or_
from sqlalchemy import select
from sqlalchemy import type_coerce
from sqlalchemy import update
from sqlalchemy.orm import Session
from sqlalchemy.orm import aliased
from sqlalchemy.orm.attributes import set_committed_value

from orchestrator.db import dialect_of
from orchestrator.models import Backup
from orchestrator.models import BackupMetadata
from orchestrator.models import Job
from orchestrator.models import Volume
from orchestrator.states import BackupStatus
from orchestrator.states import JobState
from orchestrator.states import VerifyStatus

BACKUPS = Backup.__table__
_INSERT_BACKUP = insert(BACKUPS)
_INSERT_METADATA = insert(BackupMetadata.__table__)


# ----------------------------------------------------------------------------- reads


@functools.cache
def _has_dependents_column():
    """has_dependent_backups as a correlated probe of ix_backups_parent_id, built once."""
    child = BACKUPS.alias("child")
    # A LIMIT 1 scalar subquery rather than EXISTS: PostgreSQL would hash an EXISTS by
    # scanning every backup; this stays one probe of ix_backups_parent_id per row shown.
    # The 1 is written into the SQL text, as every list's LIMIT is (paging._in_text).
    first_child = select(child.c.id).where(child.c.parent_id == BACKUPS.c.id,
                                           child.c.deleted == false()).limit(literal_column("1"))
    return first_child.scalar_subquery().is_not(None).label("has_dependents")


@functools.cache
def _metadata_column(dialect: str):
    """A backup's live metadata as one JSON object column, built once per dialect.

    Aggregated in the row's own statement (one probe of the metadata index per
    row shown), so a show or a list page is one round trip to the database.
    None or {} when the backup has no metadata.
    """
    md = BackupMetadata.__table__
    aggregate = func.json_object_agg if dialect == "postgresql" else func.json_group_object
    items = select(aggregate(md.c.key, md.c.value)).where(
        md.c.backup_id == BACKUPS.c.id, md.c.deleted == false()).scalar_subquery()
    return type_coerce(items, JSON).label("metadata_items")


def _sql_text(value: str):
    """A status constant as an SQL string literal (statuses are plain lower-case words)."""
    assert value.replace("_", "").replace("-", "").isalpha()
    return literal_column(f"'{value}'")


# A job can run on a backup only while it is in one of these (or being verified).
_BUSY = (BackupStatus.CREATING, BackupStatus.RESTORING, BackupStatus.DELETING)


@functools.cache
def _running_job_columns() -> tuple:
    """The operation and own progress of the job running on the backup (NULLs when none),
    built once: two probes of ix_jobs_resource for a backup that is busy, none for the
    settled backups that fill most pages."""
    jobs = Job.__table__
    # The constants are written into the SQL text (no bound or expanding parameters to
    # process on every execution of a cached statement).
    running = (jobs.c.resource_id == BACKUPS.c.id, jobs.c.state == _sql_text(JobState.RUNNING))
    busy = or_(BACKUPS.c.status.in_([_sql_text(s) for s in _BUSY]),
               BACKUPS.c.verify_status == _sql_text(VerifyStatus.VERIFYING))

    def newest(column):
        probe = (select(column).where(*running).order_by(jobs.c.started_at.desc())
                 .limit(literal_column("1")).scalar_subquery())
        return case((busy, probe), else_=null())
    return (newest(jobs.c.op).label("running_op"),
            type_coerce(newest(jobs.c.progress), JSON).label("running_progress"))


def view_columns(session, with_metadata: bool) -> tuple:
    """Columns a backup view reads beside the table's own."""
    extra = (_has_dependents_column(), *_running_job_columns())
    if with_metadata:
        extra += (_metadata_column(dialect_of(session).name),)
    return extra


@functools.cache
def _show_statement(scoped: bool, dialect: str, with_metadata: bool):
    """The one-row read of a backup, built once per shape."""
    extra = (_has_dependents_column(), *_running_job_columns()) + \
        ((_metadata_column(dialect),) if with_metadata else ())
    query = select(*BACKUPS.c, *extra).where(BACKUPS.c.id == bindparam("backup_id"),
                                             BACKUPS.c.deleted.is_(False))
    if scoped:
        query = query.where(BACKUPS.c.project_id == bindparam("project_id"))
    return query


def view_row(session, backup_id: str, *, project_id: str | None, with_metadata: bool):
    """One live backup as a plain row (None if absent or, with a project, not its own)."""
    params = {"backup_id": backup_id}
    if project_id is not None:
        params["project_id"] = project_id
    statement = _show_statement(project_id is not None, dialect_of(session).name, with_metadata)
    return session.execute(statement, params).first()


# The backup, its volume (and its parent): one statement, built once.
_BACKUP_VOLUME = (select(Backup, Volume).select_from(Backup)
                  .outerjoin(Volume, Volume.id == bindparam("volume_id"))
                  .where(Backup.id == bindparam("backup_id")))
_PARENT = aliased(Backup, name="parent")
_BACKUP_PARENT_VOLUME = (_BACKUP_VOLUME.add_columns(_PARENT)
                         .outerjoin(_PARENT, _PARENT.id == bindparam("parent_id")))


def backup_parent_volume(session: Session, backup_id: str, volume_id: str,
                         parent_id: str | None):
    """(backup, parent, volume) in one statement; Nones for what is missing."""
    row = session.execute(
        _BACKUP_PARENT_VOLUME if parent_id else _BACKUP_VOLUME,
        {"backup_id": backup_id, "volume_id": volume_id, "parent_id": parent_id}).first()
    if row is None:
        return None, None, None
    return row[0], (row[2] if parent_id else None), row[1]


# ----------------------------------------------------------------------------- writes


def insert_backup(session: Session, values: dict, metadata: dict | None, now) -> None:
    """Plain INSERTs: the hottest write of the API skips the unit-of-work flush."""
    session.execute(_INSERT_BACKUP, values)
    if metadata:
        session.execute(_INSERT_METADATA, [
            {"backup_id": values["id"], "key": k, "value": v, "created_at": now,
             "deleted": False} for k, v in metadata.items()])


def set_location(session: Session, backup: Backup, *, container: str, prefix: str,
                 service: str, total: int, data_format: int | None = None) -> None:
    """Record where a creating backup's objects go, its format, and its progress start."""
    values = dict(container=container, service_metadata=prefix, service=service,
                  progress_bytes=0, progress_total=total, data_format=data_format)
    # Core (cheaper than an ORM UPDATE), and ``backup`` kept in step by hand.
    session.execute(update(BACKUPS).where(BACKUPS.c.id == backup.id).values(**values))
    for key, value in values.items():
        set_committed_value(backup, key, value)


def finish_create(session: Session, backup_id: str, values: dict) -> bool:
    """creating → the completed values; False if the backup left creating meanwhile."""
    return bool(session.execute(update(BACKUPS).where(
        BACKUPS.c.id == backup_id, BACKUPS.c.status == BackupStatus.CREATING)
        .values(**values)).rowcount)


def set_progress(session: Session, backup_id: str, done: int, total: int, rate: float) -> None:
    session.execute(update(BACKUPS).where(BACKUPS.c.id == backup_id).values(
        progress_bytes=done, progress_total=total, progress_rate=rate))


def count_dependents(session: Session, parent_id: str) -> None:
    """num_dependent_backups derived from the live children (Cinder's counter drifts: W12)."""
    children = select(func.count()).select_from(Backup).where(
        Backup.parent_id == parent_id, Backup.deleted.is_(False)).scalar_subquery()
    session.execute(update(Backup).where(Backup.id == parent_id)
                    .values(num_dependent_backups=children))

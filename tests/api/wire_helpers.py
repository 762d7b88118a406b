"""Helpers shared by the wire tests: raw requests, fault checks, database snapshots."""
from __future__ import annotations

import requests
from sqlalchemy import select

from orchestrator.models import Backup
from orchestrator.models import BackupMetadata
from orchestrator.models import Job
from orchestrator.models import Quota
from orchestrator.models import QuotaUsage
from orchestrator.models import Reservation
from orchestrator.models import Snapshot
from orchestrator.models import Volume

PROJECT_TABLES = (Backup, Volume, Snapshot, Quota, QuotaUsage, Reservation, Job)


def call(stack, method: str, path: str, *, token: str | None, version: str | None = "3.71",
         **kw) -> requests.Response:
    """One request to ``/v3{path}`` with exactly these credentials and version."""
    headers = dict(kw.pop("headers", {}))
    if token is not None:
        headers["X-Auth-Token"] = token
    if version is not None:
        headers["OpenStack-API-Version"] = f"volume {version}"
    return requests.request(method, f"{stack.url}/v3{path}", headers=headers, timeout=30, **kw)


def assert_fault(r: requests.Response, code: int, *needles: str) -> str:
    """A Cinder fault body: one key, {code, message}; returns the message."""
    assert r.status_code == code, f"{r.request.method} {r.url}: {r.status_code} {r.text}"
    body = r.json()
    assert len(body) == 1, body
    fault = next(iter(body.values()))
    assert fault["code"] == code and isinstance(fault["message"], str), body
    for needle in needles:
        assert needle in fault["message"], body
    return fault["message"]


def db_state(db, projects) -> dict:
    """Every row of the given projects in the tables a request can change."""
    out = {}
    with db.scope(write=False) as s:
        for model in PROJECT_TABLES:
            rows = s.scalars(select(model).where(model.project_id.in_(list(projects)))).all()
            out[model.__tablename__] = sorted(_row(r) for r in rows)
        ids = select(Backup.id).where(Backup.project_id.in_(list(projects)))
        meta = s.scalars(select(BackupMetadata).where(BackupMetadata.backup_id.in_(ids))).all()
        out["backup_metadata"] = sorted(_row(r) for r in meta)
    return out


def _row(obj) -> tuple:
    return tuple((c.key, repr(getattr(obj, c.key))) for c in obj.__mapper__.column_attrs)

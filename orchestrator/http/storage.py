"""Garbage collection of the backup store (admin): /v3[/{project_id}]/backup-gc...

An extension of the v3 API, independent of microversions: ``POST`` queues a
collection (202), ``GET`` lists the latest ones with what each freed.
"""
from __future__ import annotations

from orchestrator import errors
from orchestrator import storage
from orchestrator.http import schemas
from orchestrator.http.current import now
from orchestrator.http.current import settings
from orchestrator.http.responses import timestamp
from orchestrator.http.routes import Body
from orchestrator.http.routes import Reply
from orchestrator.http.routes import RouteBlueprint
from orchestrator.http.transaction import commit_and_dispatch
from orchestrator.http.transaction import session
from orchestrator.models import Job

bp = RouteBlueprint("storage", __name__, tag="backup-gc")
GC = Reply(schemas.BackupGCSchema, "gc")


def gc_view(job: Job) -> dict:
    params = job.params or {}
    result = job.result or {}
    return {"id": job.id, "status": job.state, "scope": params.get("scope", "full"),
            "host": job.host, "store": result.get("store") or params.get("store"),
            "created_at": timestamp(job.created_at), "started_at": timestamp(job.started_at),
            "finished_at": timestamp(job.finished_at), "result": job.result,
            "error": job.error}


@bp.declare("POST", "/backup-gc", status=202, policy="backup:gc",
            body=Body(schemas.BackupGCCreateSchema, "gc"), reply=GC, errors=(404,))
def start(body):
    """Queue a garbage collection of a backup host's store (one at a time per store)."""
    s = session(write=True)
    job, new = storage.start_gc(s, settings(), now=now(), scope=body.get("scope", "full"),
                                host=body.get("host"), zone=body.get("availability_zone"))
    commit_and_dispatch([job] if new else [])
    return gc_view(job)


@bp.declare("GET", "/backup-gc", policy="backup:gc",
            reply=Reply(schemas.BackupGCSchema, "gcs", many=True))
def index():
    """The latest garbage collections, newest first, with what each freed."""
    return [gc_view(job) for job in storage.gc_runs(session())]


@bp.declare("GET", "/backup-gc/<gc_id>", policy="backup:gc", reply=GC, errors=(404,))
def show(gc_id):
    """One garbage collection."""
    job = session().get(Job, gc_id)
    if job is None or job.op != "store_gc":
        raise errors.NotFound(f"Garbage collection {gc_id} could not be found.")
    return gc_view(job)

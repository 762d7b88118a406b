"""Snapshots, the subset backups need: /v3[/{project_id}]/snapshots..."""
from __future__ import annotations

from orchestrator import volumes
from orchestrator.http import schemas
from orchestrator.http.current import ctx
from orchestrator.http.current import mv
from orchestrator.http.current import now
from orchestrator.http.current import settings
from orchestrator.http.render import snapshot_detail
from orchestrator.http.routes import Body
from orchestrator.http.routes import Listing
from orchestrator.http.routes import Reply
from orchestrator.http.routes import RouteBlueprint
from orchestrator.http.transaction import commit_and_dispatch
from orchestrator.http.transaction import session

bp = RouteBlueprint("snapshots", __name__)

LISTING = Listing(filters=("display_name", "status", "volume_id"))
DETAIL = Reply(schemas.SnapshotDetailSchema, "snapshot")
IN_USE_SINCE = "3.66"  # a snapshot of an in-use volume without force


@bp.declare("POST", "/snapshots", status=202, reply=DETAIL,
            body=Body(schemas.SnapshotCreateSchema, "snapshot"), errors=(404, 413))
def create(body):
    """Snapshot a volume."""
    s = session(write=True)
    snap, job = volumes.new_snapshot(
        s, ctx(), settings(), volume_id=body["volume_id"],
        name=body.get("name", body.get("display_name")),
        description=body.get("description", body.get("display_description")),
        force=bool(body.get("force")), metadata=body.get("metadata"), now=now(),
        allow_in_use=mv().matches(IN_USE_SINCE))
    commit_and_dispatch([job])
    return snapshot_detail(snap)


@bp.declare("GET", "/snapshots", listing=LISTING,
            reply=Reply(schemas.SnapshotDetailSchema, "snapshots", many=True))
def index(page):
    """List snapshots."""
    items, count = volumes.list_snapshots(session(), ctx(), **page)
    return [snapshot_detail(x) for x in items], items, count


@bp.declare("GET", "/snapshots/detail", listing=LISTING,
            reply=Reply(schemas.SnapshotDetailSchema, "snapshots", many=True))
def detail(page):
    """List snapshots with details."""
    items, count = volumes.list_snapshots(session(), ctx(), **page)
    return [snapshot_detail(x) for x in items], items, count


@bp.declare("GET", "/snapshots/<snapshot_id>", reply=DETAIL, errors=(404,))
def show(snapshot_id):
    """Show a snapshot."""
    return snapshot_detail(volumes.get_snapshot(session(), ctx(), snapshot_id))


@bp.declare("DELETE", "/snapshots/<snapshot_id>", status=202, errors=(404,))
def delete(snapshot_id):
    """Delete a snapshot."""
    s = session(write=True)
    job = volumes.delete_snapshot(s, ctx(), snapshot_id, now=now())
    commit_and_dispatch([job])

"""Snapshots, the subset backups need: /v3[/{project_id}]/snapshots..."""
from __future__ import annotations

from flask import Blueprint
from flask import jsonify

from orchestrator import errors
from orchestrator import volumes
from orchestrator.http import schemas
from orchestrator.http.body import json_body
from orchestrator.http.body import load
from orchestrator.http.body import unwrap
from orchestrator.http.current import ctx
from orchestrator.http.current import mv
from orchestrator.http.current import now
from orchestrator.http.current import settings
from orchestrator.http.query import list_params
from orchestrator.http.render import snapshot_detail
from orchestrator.http.responses import empty_response
from orchestrator.http.responses import list_response
from orchestrator.http.transaction import commit_and_dispatch
from orchestrator.http.transaction import session

bp = Blueprint("snapshots", __name__)

SNAPSHOT_FILTERS = {"display_name", "status", "volume_id"}


@bp.post("/snapshots")
def create_snapshot(project_id=None):
    """Snapshot a volume."""
    data = unwrap(json_body(), "snapshot")
    if not isinstance(data, dict):
        raise errors.InvalidInput("Invalid input received: 'snapshot' must be an object.")
    args = load(schemas.SnapshotCreateSchema(), data)
    s = session(write=True)
    snap, job = volumes.new_snapshot(
        s, ctx(), settings(), volume_id=args["volume_id"],
        name=args.get("name", args.get("display_name")),
        description=args.get("description", args.get("display_description")),
        force=bool(args.get("force")), metadata=args.get("metadata"), now=now(),
        allow_in_use=mv().matches("3.66"))
    commit_and_dispatch([job])
    return jsonify({"snapshot": snapshot_detail(snap)}), 202


def _list_snapshots(detail: bool):
    p = list_params(user_filters=SNAPSHOT_FILTERS)
    items, count = volumes.list_snapshots(
        session(), ctx(), all_tenants=p["all_tenants"], filters=p["filters"],
        like_filters=p["like_filters"], sort=p["sort"], marker=p["marker"], limit=p["limit"],
        offset=p["offset"], with_count=p["with_count"])
    return list_response("snapshots", [snapshot_detail(x) for x in items], items, p["limit"],
                         count)


@bp.get("/snapshots")
def list_snapshots(project_id=None):
    """List snapshots."""
    return _list_snapshots(False)


@bp.get("/snapshots/detail")
def list_snapshots_detail(project_id=None):
    """List snapshots with details."""
    return _list_snapshots(True)


@bp.get("/snapshots/<snapshot_id>")
def show_snapshot(snapshot_id, project_id=None):
    """Show a snapshot."""
    return jsonify({"snapshot": snapshot_detail(volumes.get_snapshot(session(), ctx(),
                                                                     snapshot_id))})


@bp.delete("/snapshots/<snapshot_id>")
def delete_snapshot(snapshot_id, project_id=None):
    """Delete a snapshot."""
    s = session(write=True)
    job = volumes.delete_snapshot(s, ctx(), snapshot_id, now=now())
    commit_and_dispatch([job])
    return empty_response(202)

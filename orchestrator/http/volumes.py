"""Volumes, the subset backups need: /v3[/{project_id}]/volumes..."""
from __future__ import annotations

from flask import Blueprint
from flask import jsonify
from flask import request

from orchestrator import api
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
from orchestrator.http.query import parse_bool
from orchestrator.http.render import volume_detail
from orchestrator.http.render import volume_summary
from orchestrator.http.responses import empty_response
from orchestrator.http.responses import list_response
from orchestrator.http.transaction import commit_and_dispatch
from orchestrator.http.transaction import session

bp = Blueprint("volumes", __name__)

VOLUME_FILTERS = {"display_name", "status", "availability_zone", "size", "bootable",
                  "metadata"}


@bp.post("/volumes")
def create_volume(project_id=None):
    """Create a volume (optionally from a backup, 3.47+)."""
    raw = json_body()
    # cinderclient puts scheduler hints beside "volume"; there is nothing to schedule by them.
    raw.pop("OS-SCH-HNT:scheduler_hints", None)
    data = unwrap(raw, "volume")
    if not isinstance(data, dict):
        raise errors.InvalidInput("Invalid input received: 'volume' must be an object.")
    schema = schemas.VolumeCreateSchema(unknown="raise" if mv().matches("3.53") else "exclude")
    args = load(schema, data)
    if args.get("snapshot_id") or args.get("source_volid") or args.get("imageRef"):
        raise errors.InvalidInput("Invalid input received: creating a volume from a snapshot, "
                                  "another volume or an image is not supported by this service.")
    backup_id = args.get("backup_id") if mv().matches("3.47") else None
    s = session(write=True)
    name = args.get("name", args.get("display_name"))
    description = args.get("description", args.get("display_description"))
    if backup_id:
        attrs = {"description": description, "availability_zone": args.get("availability_zone"),
                 "metadata": args.get("metadata"), "volume_type": args.get("volume_type")}
        if args.get("size"):
            attrs["size"] = int(args["size"])
        result, jobs = api.restore_backup(s, ctx(), settings(), backup_id, volume_id=None,
                                          name=name, now=now(),
                                          new_volume={k: v for k, v in attrs.items()
                                                      if v is not None})
        vol = volumes.get_volume(s, ctx(), result["volume_id"])
    else:
        if not args.get("size"):
            raise errors.InvalidInput("Invalid input received: size is required and must be an"
                                      " integer >= 1.")
        vol, job = volumes.new_volume(
            s, ctx(), settings(), size=int(args["size"]), name=name, description=description,
            availability_zone=args.get("availability_zone"), metadata=args.get("metadata"),
            volume_type=args.get("volume_type"), now=now())
        jobs = [job]
    commit_and_dispatch(jobs)
    return jsonify({"volume": volume_detail(vol)}), 202


def _list_volumes(detail: bool):
    p = list_params(user_filters=VOLUME_FILTERS)
    items, count = volumes.list_volumes(
        session(), ctx(), all_tenants=p["all_tenants"], filters=p["filters"],
        like_filters=p["like_filters"], sort=p["sort"], marker=p["marker"], limit=p["limit"],
        offset=p["offset"], with_count=p["with_count"])
    return list_response("volumes", [volume_detail(v) if detail else volume_summary(v)
                                     for v in items], items, p["limit"], count)


@bp.get("/volumes")
def list_volumes(project_id=None):
    """List volumes."""
    return _list_volumes(False)


@bp.get("/volumes/detail")
def list_volumes_detail(project_id=None):
    """List volumes with details."""
    return _list_volumes(True)


@bp.get("/volumes/<volume_id>")
def show_volume(volume_id, project_id=None):
    """Show a volume."""
    return jsonify({"volume": volume_detail(volumes.get_volume(session(), ctx(), volume_id))})


@bp.delete("/volumes/<volume_id>")
def delete_volume(volume_id, project_id=None):
    """Delete a volume."""
    force = parse_bool("force", request.args["force"]) if "force" in request.args and \
        mv().matches("3.23") else False
    cascade = parse_bool("cascade", request.args["cascade"]) if "cascade" in request.args \
        else False
    s = session(write=True)
    job = volumes.delete_volume(s, ctx(), settings(), volume_id, force=force, cascade=cascade,
                                now=now())
    commit_and_dispatch([job])
    return empty_response(202)

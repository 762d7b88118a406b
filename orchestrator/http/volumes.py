"""Volumes, the subset backups need: /v3[/{project_id}]/volumes..."""
from __future__ import annotations

from orchestrator import api
from orchestrator import errors
from orchestrator import volumes
from orchestrator.http import schemas
from orchestrator.http.current import ctx
from orchestrator.http.current import now
from orchestrator.http.current import settings
from orchestrator.http.render import volume_detail
from orchestrator.http.render import volume_summary
from orchestrator.http.routes import Body
from orchestrator.http.routes import Listing
from orchestrator.http.routes import Query
from orchestrator.http.routes import Reply
from orchestrator.http.routes import RouteBlueprint
from orchestrator.http.transaction import commit_and_dispatch
from orchestrator.http.transaction import session

bp = RouteBlueprint("volumes", __name__)

LISTING = Listing(filters=("display_name", "status", "availability_zone", "size", "bootable",
                           "metadata"))
DETAIL = Reply(schemas.VolumeDetailSchema, "volume")


@bp.declare("POST", "/volumes", status=202, reply=DETAIL,
            body=Body(schemas.VolumeCreateSchema, "volume", strict_from="3.53",
                      ignored_before={"backup_id": "3.47"},
                      # cinderclient sends scheduler hints; there is nothing to schedule by.
                      siblings=("OS-SCH-HNT:scheduler_hints",)),
            errors=(404, 413, 503))
def create(body):
    """Create a volume, empty or from a backup."""
    if body.get("snapshot_id") or body.get("source_volid") or body.get("imageRef"):
        raise errors.InvalidInput("Invalid input received: creating a volume from a snapshot, "
                                  "another volume or an image is not supported by this service.")
    s = session(write=True)
    name = body.get("name", body.get("display_name"))
    description = body.get("description", body.get("display_description"))
    if body.get("backup_id"):
        attrs = {"description": description, "availability_zone": body.get("availability_zone"),
                 "metadata": body.get("metadata"), "volume_type": body.get("volume_type")}
        if body.get("size"):
            attrs["size"] = int(body["size"])
        result, jobs = api.restore_backup(s, ctx(), settings(), body["backup_id"],
                                          volume_id=None, name=name, now=now(),
                                          new_volume={k: v for k, v in attrs.items()
                                                      if v is not None})
        vol = volumes.get_volume(s, ctx(), result["volume_id"])
    else:
        if not body.get("size"):
            raise errors.InvalidInput("Invalid input received: size is required and must be an"
                                      " integer >= 1.")
        vol, job = volumes.new_volume(
            s, ctx(), settings(), size=int(body["size"]), name=name, description=description,
            availability_zone=body.get("availability_zone"), metadata=body.get("metadata"),
            volume_type=body.get("volume_type"), now=now())
        jobs = [job]
    commit_and_dispatch(jobs)
    return volume_detail(vol)


@bp.declare("GET", "/volumes", listing=LISTING,
            reply=Reply(schemas.VolumeSummarySchema, "volumes", many=True))
def index(page):
    """List volumes."""
    items, count = volumes.list_volumes(session(), ctx(), **page)
    return [volume_summary(v) for v in items], items, count


@bp.declare("GET", "/volumes/detail", listing=LISTING,
            reply=Reply(schemas.VolumeDetailSchema, "volumes", many=True))
def detail(page):
    """List volumes with details."""
    items, count = volumes.list_volumes(session(), ctx(), **page)
    return [volume_detail(v) for v in items], items, count


@bp.declare("GET", "/volumes/<volume_id>", reply=DETAIL, errors=(404,))
def show(volume_id):
    """Show a volume."""
    return volume_detail(volumes.get_volume(session(), ctx(), volume_id))


@bp.declare("DELETE", "/volumes/<volume_id>", status=202,
            query=(Query("force", "Any status.", boolean=True, since="3.23",
                         enum=("true", "false"),
                         policy="volume_extension:volume_admin_actions:force_delete"),
                   Query("cascade", "Delete the volume's snapshots too.", boolean=True,
                         enum=("true", "false"))),
            errors=(404,))
def delete(volume_id, force, cascade):
    """Delete a volume."""
    s = session(write=True)
    job = volumes.delete_volume(s, ctx(), settings(), volume_id, force=force, cascade=cascade,
                                now=now())
    commit_and_dispatch([job])

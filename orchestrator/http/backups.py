"""Backups: /v3[/{project_id}]/backups..."""
from __future__ import annotations

from flask import Blueprint
from flask import jsonify

from orchestrator import api
from orchestrator import errors
from orchestrator.http import schemas
from orchestrator.http.body import json_body
from orchestrator.http.body import load
from orchestrator.http.body import unwrap
from orchestrator.http.current import ctx
from orchestrator.http.current import mv
from orchestrator.http.current import now
from orchestrator.http.current import settings
from orchestrator.http.query import list_params
from orchestrator.http.render import backup_detail
from orchestrator.http.render import backup_details
from orchestrator.http.render import backup_summaries
from orchestrator.http.render import backup_summary
from orchestrator.http.responses import empty_response
from orchestrator.http.responses import list_response
from orchestrator.http.transaction import commit_and_dispatch
from orchestrator.http.transaction import reader
from orchestrator.http.transaction import session

bp = Blueprint("backups", __name__)

USER_FILTERS = {"display_name", "status", "volume_id"}


@bp.post("/backups")
def create(project_id=None):
    """Create a backup of a volume or of one of its snapshots."""
    data = unwrap(json_body(), "backup")
    if not isinstance(data, dict):
        raise errors.InvalidInput("Invalid input received: 'backup' must be an object.")
    if "metadata" in data and not mv().matches("3.43"):
        raise errors.InvalidInput("Invalid input received: metadata is not allowed before "
                                  "microversion 3.43.")
    if "availability_zone" in data and not mv().matches("3.51"):
        raise errors.InvalidInput("Invalid input received: availability_zone is not allowed "
                                  "before microversion 3.51.")
    args = load(schemas.BackupCreateSchema(), data)
    s = session(write=True)
    backup, jobs = api.create_backup(
        s, ctx(), settings(), volume_id=args["volume_id"], now=now(),
        snapshot_id=args.get("snapshot_id"), container=args.get("container"),
        name=args.get("name"), description=args.get("description"),
        incremental=bool(args.get("incremental")), force=bool(args.get("force")),
        metadata=args.get("metadata"), availability_zone=args.get("availability_zone"))
    commit_and_dispatch(jobs)
    return jsonify({"backup": backup_summary(backup)}), 202


def _list(detail: bool):
    p = list_params(user_filters=USER_FILTERS, name_sort_since="3.37")
    with_metadata = detail and mv().matches("3.43")
    items, metadata, count = api.backup_view_rows(
        reader(), ctx(), all_tenants=p["all_tenants"], filters=p["filters"],
        like_filters=p["like_filters"], sort=p["sort"], marker=p["marker"], limit=p["limit"],
        offset=p["offset"], with_count=p["with_count"], with_metadata=with_metadata)
    rendered = backup_details(items, metadata) if detail else backup_summaries(items)
    return list_response("backups", rendered, items, p["limit"], count)


@bp.get("/backups")
def index(project_id=None):
    """List backups (summary view)."""
    return _list(detail=False)


@bp.get("/backups/detail")
def detail(project_id=None):
    """List backups (detail view)."""
    return _list(detail=True)


@bp.get("/backups/<backup_id>")
def show(backup_id, project_id=None):
    """Show one backup."""
    row, metadata = api.backup_view_row(reader(), ctx(), backup_id,
                                        with_metadata=mv().matches("3.43"))
    return jsonify({"backup": backup_detail(row, row.has_dependents, metadata)})


@bp.put("/backups/<backup_id>")
def update(backup_id, project_id=None):
    """Update name, description and metadata (3.9+, metadata 3.43+)."""
    if not mv().matches("3.9"):
        raise errors.NotFound("The resource could not be found.")
    data = unwrap(json_body(), "backup")
    if not isinstance(data, dict):
        raise errors.InvalidInput("Invalid input received: 'backup' must be an object.")
    if "metadata" in data and not mv().matches("3.43"):
        raise errors.InvalidInput("Invalid input received: metadata is not allowed before "
                                  "microversion 3.43.")
    fields = load(schemas.BackupUpdateSchema(), data)
    s = session(write=True)
    backup = api.update_backup(s, ctx(), backup_id, fields=fields, now=now())
    s.commit()
    return jsonify({"backup": backup_summary(backup)})


@bp.delete("/backups/<backup_id>")
def delete(backup_id, project_id=None):
    """Delete an available or failed backup."""
    s = session(write=True)
    jobs = api.delete_backup(s, ctx(), settings(), backup_id, now=now())
    commit_and_dispatch(jobs)
    return empty_response(202)


@bp.post("/backups/<backup_id>/restore")
def restore(backup_id, project_id=None):
    """Restore a backup to a new or an existing volume."""
    data = unwrap(json_body(), "restore")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise errors.InvalidInput("Invalid input received: 'restore' must be an object.")
    args = load(schemas.RestoreSchema(), data)
    s = session(write=True)
    result, jobs = api.restore_backup(s, ctx(), settings(), backup_id,
                                      volume_id=args.get("volume_id"), name=args.get("name"),
                                      now=now())
    commit_and_dispatch(jobs)
    return jsonify({"restore": result}), 202


@bp.get("/backups/<backup_id>/export_record")
def export_record(backup_id, project_id=None):
    """Export the record of a backup (admin)."""
    record = api.export_record(session(), ctx(), settings(), backup_id)
    return jsonify({"backup-record": record})


@bp.post("/backups/import_record")
def import_record(project_id=None):
    """Import a backup record (admin)."""
    if not ctx().is_admin:
        raise errors.PolicyNotAuthorized("backup:backup-import")
    args = load(schemas.BackupRecordSchema(), unwrap(json_body(), "backup-record"))
    s = session(write=True)
    backup, jobs = api.import_record(s, ctx(), settings(), backup_service=args["backup_service"],
                                     backup_url=args["backup_url"], now=now())
    commit_and_dispatch(jobs)
    return jsonify({"backup": backup_summary(backup)}), 201


@bp.post("/backups/<backup_id>/action")
def action(backup_id, project_id=None):
    """Admin actions: os-reset_status, os-force_delete."""
    data = json_body()
    if len(data) != 1:
        raise errors.InvalidInput("Invalid input received: exactly one action is expected.")
    name, value = next(iter(data.items()))
    s = session(write=True)
    if name == "os-reset_status":
        if not isinstance(value, dict):
            raise errors.InvalidInput("Invalid input received: os-reset_status needs a status.")
        args = load(schemas.ResetStatusSchema(), value)
        api.reset_status(s, ctx(), backup_id, args["status"], now=now())
        s.commit()
    elif name == "os-verify":
        # Extension: re-read every object and check every digest without restoring.
        jobs = api.verify_backup(s, ctx(), settings(), backup_id, now=now())
        commit_and_dispatch(jobs)
    elif name == "os-force_delete":
        jobs = api.force_delete_backup(s, ctx(), settings(), backup_id, now=now())
        commit_and_dispatch(jobs)
    else:
        raise errors.InvalidInput(f"There is no such action: {name}")
    return empty_response(202)

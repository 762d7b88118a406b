"""Backups: /v3[/{project_id}]/backups..."""
from __future__ import annotations

from orchestrator import api
from orchestrator.http import schemas
from orchestrator.http.current import ctx
from orchestrator.http.current import mv
from orchestrator.http.current import now
from orchestrator.http.current import settings
from orchestrator.http.render import backup_detail
from orchestrator.http.render import backup_details
from orchestrator.http.render import backup_summaries
from orchestrator.http.render import backup_summary
from orchestrator.http.routes import Action
from orchestrator.http.routes import Actions
from orchestrator.http.routes import Body
from orchestrator.http.routes import Listing
from orchestrator.http.routes import Reply
from orchestrator.http.routes import RouteBlueprint
from orchestrator.http.transaction import commit_and_dispatch
from orchestrator.http.transaction import reader
from orchestrator.http.transaction import session

bp = RouteBlueprint("backups", __name__)

METADATA_SINCE = "3.43"
LISTING = Listing(filters=("display_name", "status", "volume_id"), name_sort_since="3.37",
                  admin_filters=("metadata",))
SUMMARY = Reply(schemas.BackupSummarySchema, "backup")


@bp.declare("POST", "/backups", status=202, policy="backup:create", reply=SUMMARY,
            body=Body(schemas.BackupCreateSchema, "backup",
                      gates={"metadata": METADATA_SINCE, "availability_zone": "3.51"}),
            errors=(404, 413, 503))
def create(body):
    """Create a backup of a volume or of one of its snapshots."""
    s = session(write=True)
    backup, jobs = api.create_backup(
        s, ctx(), settings(), volume_id=body["volume_id"], now=now(),
        snapshot_id=body.get("snapshot_id"), container=body.get("container"),
        name=body.get("name"), description=body.get("description"),
        incremental=bool(body.get("incremental")), force=bool(body.get("force")),
        metadata=body.get("metadata"), availability_zone=body.get("availability_zone"))
    commit_and_dispatch(jobs)
    return backup_summary(backup)


@bp.declare("GET", "/backups", policy="backup:get_all", listing=LISTING,
            reply=Reply(schemas.BackupSummarySchema, "backups", many=True))
def index(page):
    """List backups (summary view)."""
    items, _, count = api.backup_view_rows(reader(), ctx(), **page)
    return backup_summaries(items), items, count


@bp.declare("GET", "/backups/detail", policy="backup:get_all", listing=LISTING,
            reply=Reply(schemas.BackupDetailSchema, "backups", many=True))
def detail(page):
    """List backups (detail view)."""
    items, metadata, count = api.backup_view_rows(
        reader(), ctx(), **page, with_metadata=mv().matches(METADATA_SINCE))
    return backup_details(items, metadata), items, count


@bp.declare("GET", "/backups/<backup_id>", policy="backup:get",
            reply=Reply(schemas.BackupDetailSchema, "backup"), errors=(404,))
def show(backup_id):
    """Show one backup."""
    row, metadata = api.backup_view_row(reader(), ctx(), backup_id,
                                        with_metadata=mv().matches(METADATA_SINCE))
    return backup_detail(row, row.has_dependents, metadata)


@bp.declare("PUT", "/backups/<backup_id>", since="3.9", policy="backup:update", reply=SUMMARY,
            body=Body(schemas.BackupUpdateSchema, "backup", gates={"metadata": METADATA_SINCE}),
            errors=(404,))
def update(backup_id, body):
    """Update name, description and metadata.

    `metadata` replaces the whole set.
    """
    s = session(write=True)
    backup = api.update_backup(s, ctx(), backup_id, fields=body, now=now())
    s.commit()
    return backup_summary(backup)


@bp.declare("DELETE", "/backups/<backup_id>", status=202, policy="backup:delete",
            errors=(404,))
def delete(backup_id):
    """Delete an available or failed backup."""
    s = session(write=True)
    commit_and_dispatch(api.delete_backup(s, ctx(), settings(), backup_id, now=now()))


@bp.declare("POST", "/backups/<backup_id>/restore", status=202, policy="backup:restore",
            body=Body(schemas.RestoreSchema, "restore", null_is_empty=True),
            reply=Reply(schemas.RestoreResultSchema, "restore"), errors=(404, 413))
def restore(backup_id, body):
    """Restore a backup to a new or an existing volume."""
    s = session(write=True)
    result, jobs = api.restore_backup(s, ctx(), settings(), backup_id,
                                      volume_id=body.get("volume_id"), name=body.get("name"),
                                      now=now())
    commit_and_dispatch(jobs)
    return result


@bp.declare("GET", "/backups/<backup_id>/export_record", resource_policy="backup:export-import",
            reply=Reply(schemas.BackupRecordSchema, "backup-record"), errors=(404,))
def export_record(backup_id):
    """Export the record of a backup."""
    return api.export_record(session(), ctx(), settings(), backup_id)


@bp.declare("POST", "/backups/import_record", status=201, policy="backup:backup-import",
            body=Body(schemas.BackupRecordSchema, "backup-record", not_object=None),
            reply=SUMMARY, errors=(413, 503))
def import_record(body):
    """Import a backup record."""
    s = session(write=True)
    backup, jobs = api.import_record(s, ctx(), settings(), backup_service=body["backup_service"],
                                     backup_url=body["backup_url"], now=now())
    commit_and_dispatch(jobs)
    return backup_summary(backup)


ACTIONS = Actions((
    Action("os-reset_status", Body(schemas.ResetStatusSchema,
                                   not_object="os-reset_status needs a status."),
           policy="volume_extension:backup_admin_actions:reset_status"),
    Action("os-force_delete", description="any value (clients send null)",
           policy="volume_extension:backup_admin_actions:force_delete"),
    Action("os-verify", description="extension: re-read the backup and check every digest; "
                                    "any value", policy="backup:verify"),
))


@bp.declare("POST", "/backups/<backup_id>/action", status=202, body=ACTIONS, errors=(404,))
def action(backup_id, action, body):
    """Admin actions: os-reset_status, os-force_delete, os-verify."""
    s = session(write=True)
    if action == "os-reset_status":
        api.reset_status(s, ctx(), backup_id, body["status"], now=now())
        s.commit()
    elif action == "os-verify":
        commit_and_dispatch(api.verify_backup(s, ctx(), settings(), backup_id, now=now()))
    else:
        commit_and_dispatch(api.force_delete_backup(s, ctx(), settings(), backup_id,
                                                    now=now()))

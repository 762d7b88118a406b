"""The JSON renderings of backups, volumes and snapshots, per microversion and role."""
from __future__ import annotations

from flask import g

from orchestrator import policy
from orchestrator.http.current import ctx
from orchestrator.http.current import mv
from orchestrator.http.responses import link_prefixes
from orchestrator.http.responses import resource_links
from orchestrator.http.responses import timestamp
from orchestrator.models import Backup


def backup_summary(backup: Backup) -> dict:
    """Summary view of a backup: id, name and links."""
    return {"id": backup.id, "name": backup.display_name,
            "links": resource_links("backups", backup.id)}


def _backup_fields() -> tuple[bool, bool, bool, bool, bool]:
    """Which version- and role-gated fields this request's backup views carry (computed once)."""
    flags = g.get("backup_view_flags")
    if flags is None:
        version, admin = mv(), ctx().is_admin
        project_attr = policy.allowed(ctx(), "backup:backup_project_attribute")
        flags = g.backup_view_flags = (version.matches("3.43"),
                                       project_attr and version.matches("3.18"),
                                       admin and version.matches("3.56"),
                                       version.matches("3.64"), admin)
    return flags


def backup_detail(backup, has_dependents: bool, metadata: dict | None = None) -> dict:
    """Detail view of a backup row (see api.backup_view_row/backup_view_rows)."""
    return _detail(backup, has_dependents, metadata, _backup_fields(), link_prefixes())


def backup_details(rows, metadata: dict[str, dict]) -> list[dict]:
    """Detail views of a page of rows, with the per-request flags looked up once."""
    flags, prefixes = _backup_fields(), link_prefixes()
    return [_detail(b, b.has_dependents, metadata.get(b.id), flags, prefixes) for b in rows]


def backup_summaries(rows) -> list[dict]:
    """Summary views of a page of rows."""
    prefixes = link_prefixes()
    return [{"id": b.id, "name": b.display_name,
             "links": resource_links("backups", b.id, prefixes)} for b in rows]


def _detail(backup, has_dependents: bool, metadata: dict | None, flags, prefixes) -> dict:
    """One backup's detail view with the request's flags and link prefixes."""
    with_metadata, with_project, with_user, with_key, _admin = flags
    out = {
        "id": backup.id,
        "status": backup.status,
        "size": backup.size,
        "object_count": backup.object_count or 0,
        "availability_zone": backup.availability_zone,
        "container": backup.container,
        "created_at": timestamp(backup.created_at),
        "updated_at": timestamp(backup.updated_at),
        "name": backup.display_name,
        "description": backup.display_description,
        "fail_reason": backup.fail_reason,
        "volume_id": backup.volume_id,
        "links": resource_links("backups", backup.id, prefixes),
        "is_incremental": bool(backup.parent_id),
        "has_dependent_backups": bool(has_dependents),
        "snapshot_id": backup.snapshot_id,
        "data_timestamp": timestamp(backup.data_timestamp),
        # Extra fields (clients ignore them): live progress of the running operation.
        "progress": _progress(backup),
        # Encryption at rest (orchestrator/keys.py): the data key id of its objects.
        "encrypted": bool(backup.encryption_key_id),
        "encryption_data_key_id": backup.encryption_key_id,
        "verification": {"status": backup.verify_status,
                         "checked_at": timestamp(backup.verified_at),
                         "message": backup.verify_message},
        # Extension: the backup policy that made it and the rules of its last prune.
        "policy_id": backup.policy_id,
        "kept_by": backup.kept_by,
    }
    if with_metadata:
        out["metadata"] = metadata or {}
    if with_project:
        out["os-backup-project-attr:project_id"] = backup.project_id
    if with_user:
        out["user_id"] = backup.user_id
    if with_key and backup.encryption_key_id:
        out["encryption_key_id"] = backup.encryption_key_id
    return out


def _progress(backup: Backup) -> dict:
    """Progress of the operation running on the backup (an extension): the running job's
    own report when it has made one, else what the backup row holds (its create's)."""
    operation = getattr(backup, "running_op", None)
    job = getattr(backup, "running_progress", None) if operation else None
    if job:
        done, total = job.get("bytes_done") or 0, job.get("bytes_total") or 0
        rate, skipped, updated = (job.get("rate_bytes_per_s"), job.get("bytes_skipped"),
                                  job.get("updated_at"))
    else:
        total = backup.progress_total or 0
        done = backup.progress_bytes or 0
        rate = round(backup.progress_rate) if backup.progress_rate else None
        skipped = updated = None
    return {"operation": operation, "bytes_done": done, "bytes_total": total,
            "bytes_skipped": skipped,
            "percent": round(100.0 * done / total, 1) if total else None,
            "rate_bytes_per_s": rate, "updated_at": updated,
            "stored_bytes": backup.stored_bytes}


def volume_detail(vol) -> dict:
    """Detail view of a volume."""
    version = mv()
    out = {
        "id": vol.id, "status": vol.status, "size": vol.size,
        "availability_zone": vol.availability_zone,
        "created_at": timestamp(vol.created_at), "updated_at": timestamp(vol.updated_at),
        "name": vol.display_name, "description": vol.display_description,
        "volume_type": vol.volume_type, "snapshot_id": vol.snapshot_id,
        "source_volid": vol.source_volid, "metadata": dict(vol.metadata_ or {}),
        "links": resource_links("volumes", vol.id), "user_id": vol.user_id,
        "bootable": "true" if vol.bootable else "false", "encrypted": False,
        "replication_status": None, "consistencygroup_id": None, "multiattach": False,
        "attachments": [], "os-vol-tenant-attr:tenant_id": vol.project_id,
    }
    if ctx().is_admin:
        out["migration_status"] = None
        out["os-vol-host-attr:host"] = vol.host
        out["os-vol-mig-status-attr:migstat"] = None
        out["os-vol-mig-status-attr:name_id"] = None
        if version.matches("3.21"):
            out["provider_id"] = None
        if version.matches("3.61"):
            out["cluster_name"] = None
    if version.matches("3.13"):
        out["group_id"] = None
    if version.matches("3.48"):
        out["shared_targets"] = None if version.matches("3.69") else True
        out["service_uuid"] = None
    if version.matches("3.63"):
        out["volume_type_id"] = None
    if version.matches("3.65"):
        out["consumes_quota"] = True
    return out


def volume_summary(vol) -> dict:
    """Summary view of a volume: id, name and links."""
    return {"id": vol.id, "name": vol.display_name, "links": resource_links("volumes", vol.id)}


def snapshot_detail(snap) -> dict:
    """Detail view of a snapshot."""
    version = mv()
    out = {
        "id": snap.id, "created_at": timestamp(snap.created_at),
        "updated_at": timestamp(snap.updated_at), "name": snap.display_name,
        "description": snap.display_description, "volume_id": snap.volume_id,
        "status": snap.status, "size": snap.size, "metadata": dict(snap.metadata_ or {}),
        "os-extended-snapshot-attributes:progress": snap.progress,
        "os-extended-snapshot-attributes:project_id": snap.project_id,
    }
    if version.matches("3.14"):
        out["group_snapshot_id"] = None
    if version.matches("3.41"):
        out["user_id"] = snap.user_id
    if version.matches("3.65"):
        out["consumes_quota"] = True
    return out

"""Absolute limits: /v3[/{project_id}]/limits."""
from __future__ import annotations

from orchestrator import quota
from orchestrator.http import schemas
from orchestrator.http.current import ctx
from orchestrator.http.current import settings
from orchestrator.http.routes import Reply
from orchestrator.http.routes import RouteBlueprint
from orchestrator.http.transaction import session

bp = RouteBlueprint("limits", __name__)


@bp.declare("GET", "/limits", reply=Reply(schemas.LimitsSchema, "limits"))
def show():
    """Absolute limits and usage of the caller's project."""
    s = session()
    project = ctx().project_id
    lim = quota.get_limits(s, project, settings())
    use = quota.usage(s, project)
    return {"rate": [], "absolute": {
        "maxTotalBackups": lim["backups"], "maxTotalBackupGigabytes": lim["backup_gigabytes"],
        "totalBackupsUsed": use["backups"][0],
        "totalBackupGigabytesUsed": use["backup_gigabytes"][0],
        "maxTotalVolumes": lim["volumes"], "maxTotalVolumeGigabytes": lim["gigabytes"],
        "maxTotalSnapshots": lim["snapshots"], "totalVolumesUsed": use["volumes"][0],
        "totalGigabytesUsed": use["gigabytes"][0], "totalSnapshotsUsed": use["snapshots"][0],
    }}

"""Version discovery, quota sets, limits, services and availability zones."""
from __future__ import annotations

from flask import Blueprint
from flask import jsonify
from flask import request

from orchestrator import errors
from orchestrator import hosts
from orchestrator import quota
from orchestrator.http import schemas
from orchestrator.http.backups import _wrapped
from orchestrator.http.common import base_url
from orchestrator.http.common import body
from orchestrator.http.common import ctx
from orchestrator.http.common import load
from orchestrator.http.common import mv
from orchestrator.http.common import now
from orchestrator.http.common import parse_bool
from orchestrator.http.common import session
from orchestrator.http.common import settings
from orchestrator.http.common import timestamp
from orchestrator.http.microversion import MAX_VERSION
from orchestrator.http.microversion import MIN_VERSION

versions_bp = Blueprint("versions", __name__)
bp = Blueprint("misc", __name__)


def _versions() -> dict:
    return {"versions": [{
        "id": "v3.0", "status": "CURRENT",
        "version": f"{MAX_VERSION[0]}.{MAX_VERSION[1]}",
        "min_version": f"{MIN_VERSION[0]}.{MIN_VERSION[1]}",
        "updated": "2023-08-31T00:00:00Z",
        "links": [{"rel": "describedby", "type": "text/html",
                   "href": "https://docs.openstack.org/"},
                  {"rel": "self", "href": f"{base_url()}/v3/"}],
        "media-types": [{"base": "application/json",
                         "type": "application/vnd.openstack.volume+json;version=3"}],
    }]}


@versions_bp.get("/")
def root():
    """Version discovery (no credentials needed)."""
    return jsonify(_versions()), 300


@versions_bp.get("/v3")
@versions_bp.get("/v3/")
@versions_bp.get("/v3/<project:project_id>")
@versions_bp.get("/v3/<project:project_id>/")
def v3(project_id=None):
    """The v3 version document (no credentials needed)."""
    return jsonify(_versions())


# ----------------------------------------------------------------------------- quotas


def _quota_target(target: str, *, admin_only: bool = False) -> str:
    c = ctx()
    if admin_only and not c.is_admin:
        raise errors.PolicyNotAuthorized("volume_extension:quotas:update")
    if not c.is_admin and target != c.project_id:
        raise errors.PolicyNotAuthorized("volume_extension:quotas:show")
    return target


def _quota_body(limits: dict, with_usage: dict | None = None) -> dict:
    out = {}
    for key, limit in {**limits, **quota.DISPLAY_ONLY}.items():
        if with_usage is not None:
            in_use, reserved = with_usage.get(key, (0, 0))
            out[key] = {"limit": limit, "in_use": in_use, "reserved": reserved}
        else:
            out[key] = limit
    return out


@bp.get("/os-quota-sets/<target>")
def quota_show(target, project_id=None):
    """Show a project's quota (usage=true adds in_use/reserved)."""
    target = _quota_target(target)
    usage = parse_bool("usage", request.args["usage"]) if "usage" in request.args else False
    s = session()
    limits = quota.get_limits(s, target, settings())
    body_ = _quota_body(limits, quota.usage(s, target) if usage else None)
    return jsonify({"quota_set": {"id": target, **body_}})


@bp.get("/os-quota-sets/<target>/defaults")
def quota_defaults(target, project_id=None):
    """Default limits."""
    target = _quota_target(target)
    return jsonify({"quota_set": {"id": target,
                                  **_quota_body(quota.default_limits(session(), settings()))}})


@bp.put("/os-quota-sets/<target>")
def quota_update(target, project_id=None):
    """Set limits (admin)."""
    _quota_target(target, admin_only=True)
    data = _wrapped(body(), "quota_set")
    if not isinstance(data, dict) or not (set(data) - {"tenant_id", "id"}):
        raise errors.InvalidInput("Invalid input received: quota_set must be an object holding "
                                  "at least one quota limit (backups, backup_gigabytes, "
                                  "volumes, gigabytes, snapshots).")
    args = load(schemas.QuotaSetSchema(), data)
    limits = {k: v for k, v in args.items() if k in quota.RESOURCES}
    s = session(write=True)
    quota.set_limits(s, target, limits, settings())
    s.commit()
    return jsonify({"quota_set": _quota_body(quota.get_limits(s, target, settings()))})


@bp.delete("/os-quota-sets/<target>")
def quota_delete(target, project_id=None):
    """Reset limits to the defaults (admin)."""
    _quota_target(target, admin_only=True)
    s = session(write=True)
    quota.reset_limits(s, target)
    s.commit()
    return jsonify({})


@bp.get("/limits")
def limits(project_id=None):
    """Absolute limits and usage of the caller's project."""
    s = session()
    project = ctx().project_id
    lim = quota.get_limits(s, project, settings())
    use = quota.usage(s, project)
    return jsonify({"limits": {"rate": [], "absolute": {
        "maxTotalBackups": lim["backups"], "maxTotalBackupGigabytes": lim["backup_gigabytes"],
        "totalBackupsUsed": use["backups"][0],
        "totalBackupGigabytesUsed": use["backup_gigabytes"][0],
        "maxTotalVolumes": lim["volumes"], "maxTotalVolumeGigabytes": lim["gigabytes"],
        "maxTotalSnapshots": lim["snapshots"], "totalVolumesUsed": use["volumes"][0],
        "totalGigabytesUsed": use["gigabytes"][0], "totalSnapshotsUsed": use["snapshots"][0],
    }}})


# ----------------------------------------------------------------------------- services


@bp.get("/os-services")
def services(project_id=None):
    """Every registered service with its heartbeat state (admin)."""
    if not ctx().is_admin:
        raise errors.PolicyNotAuthorized("volume_extension:services:index")
    cfg = settings()
    t = now()
    out = []
    for svc in hosts.list_services(session(), host=request.args.get("host"),
                                   binary=request.args.get("binary")):
        item = {"binary": svc.binary, "host": svc.host, "zone": svc.availability_zone,
                "status": "disabled" if svc.disabled else "enabled",
                "state": "up" if hosts.is_up(svc, now=t, down_time=cfg.service_down_time)
                else "down",
                "updated_at": timestamp(svc.updated_at), "disabled_reason": svc.disabled_reason}
        if mv().matches("3.7"):
            item["cluster"] = None
        if svc.binary == hosts.VOLUME_BINARY:
            item.update(replication_status="disabled", active_backend_id=None, frozen=False)
            if mv().matches("3.49"):
                item["backend_state"] = "up"
        out.append(item)
    return jsonify({"services": out})


@bp.put("/os-services/<action>")
def service_toggle(action, project_id=None):
    """Enable or disable a service (admin)."""
    from sqlalchemy import update

    from orchestrator.models import Service
    if not ctx().is_admin:
        raise errors.PolicyNotAuthorized("volume_extension:services:update")
    if action not in ("enable", "disable", "disable-log-reason"):
        raise errors.NotFound("The resource could not be found.")
    args = load(schemas.ServiceToggleSchema(), body())
    host, binary = args["host"], args["binary"]
    disabled = action != "enable"
    reason = args.get("disabled_reason") if action == "disable-log-reason" else None
    s = session(write=True)
    n = s.execute(update(Service).where(Service.host == host, Service.binary == binary)
                  .values(disabled=disabled, disabled_reason=reason, modified_at=now())).rowcount
    if not n:
        raise errors.NotFound(f"Service {binary} on host {host} could not be found.")
    s.commit()
    out = {"host": host, "binary": binary, "status": "disabled" if disabled else "enabled",
           "disabled": disabled}
    if reason:
        out["disabled_reason"] = reason
    return jsonify(out)


@bp.get("/os-availability-zone")
def availability_zones(project_id=None):
    """Zones with their availability."""
    zones = hosts.availability_zones(session(), now=now(),
                                     down_time=settings().service_down_time)
    if not zones:
        zones = {settings().default_availability_zone: False}
    return jsonify({"availabilityZoneInfo": [
        {"zoneName": name, "zoneState": {"available": up}} for name, up in sorted(zones.items())]})

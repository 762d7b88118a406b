"""Services and their heartbeats: /v3[/{project_id}]/os-services..."""
from __future__ import annotations

from flask import Blueprint
from flask import jsonify
from flask import request

from orchestrator import errors
from orchestrator import hosts
from orchestrator.http import schemas
from orchestrator.http.body import json_body
from orchestrator.http.body import load
from orchestrator.http.current import ctx
from orchestrator.http.current import mv
from orchestrator.http.current import now
from orchestrator.http.current import settings
from orchestrator.http.responses import timestamp
from orchestrator.http.transaction import session

bp = Blueprint("services", __name__)


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
    args = load(schemas.ServiceToggleSchema(), json_body())
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

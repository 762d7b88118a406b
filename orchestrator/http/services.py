"""Services and their heartbeats: /v3[/{project_id}]/os-services..."""
from __future__ import annotations

from sqlalchemy import update

from orchestrator import errors
from orchestrator import hosts
from orchestrator.http import schemas
from orchestrator.http.current import mv
from orchestrator.http.current import now
from orchestrator.http.current import settings
from orchestrator.http.responses import timestamp
from orchestrator.http.routes import Body
from orchestrator.http.routes import Query
from orchestrator.http.routes import Reply
from orchestrator.http.routes import RouteBlueprint
from orchestrator.http.transaction import session
from orchestrator.models import Service

bp = RouteBlueprint("services", __name__, tag="os-services")


@bp.declare("GET", "/os-services", policy="volume_extension:services:index",
            query=(Query("host", "Only this host."), Query("binary", "Only this binary.")),
            reply=Reply(schemas.ServiceSchema, "services", many=True))
def index(host, binary):
    """Every registered service with its heartbeat state."""
    version, t = mv(), now()
    down_time = settings().service_down_time
    out = []
    for svc in hosts.list_services(session(), host=host, binary=binary):
        item = {"binary": svc.binary, "host": svc.host, "zone": svc.availability_zone,
                "status": "disabled" if svc.disabled else "enabled",
                "state": "up" if hosts.is_up(svc, now=t, down_time=down_time) else "down",
                "updated_at": timestamp(svc.updated_at), "disabled_reason": svc.disabled_reason}
        if version.matches("3.7"):
            item["cluster"] = None
        if svc.binary == hosts.VOLUME_BINARY:
            item.update(replication_status="disabled", active_backend_id=None, frozen=False)
            if version.matches("3.49"):
                item["backend_state"] = "up"
        out.append(item)
    return out


@bp.declare("PUT", "/os-services/<action>", policy="volume_extension:services:update",
            choices={"action": ("enable", "disable", "disable-log-reason")},
            body=Body(schemas.ServiceToggleSchema),
            reply=Reply(schemas.ServiceToggleReplySchema), errors=(404,))
def toggle(action, body):
    """Enable or disable a service."""
    host, binary = body["host"], body["binary"]
    disabled = action != "enable"
    reason = body.get("disabled_reason") if action == "disable-log-reason" else None
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
    return out

"""Availability zones: /v3[/{project_id}]/os-availability-zone."""
from __future__ import annotations

from orchestrator import hosts
from orchestrator.http import schemas
from orchestrator.http.current import now
from orchestrator.http.current import settings
from orchestrator.http.routes import Reply
from orchestrator.http.routes import RouteBlueprint
from orchestrator.http.transaction import session

bp = RouteBlueprint("availability_zones", __name__, tag="os-availability-zone")


@bp.declare("GET", "/os-availability-zone",
            reply=Reply(schemas.AvailabilityZoneSchema, "availabilityZoneInfo", many=True))
def index():
    """Zones with their availability."""
    cfg = settings()
    zones = hosts.availability_zones(session(), now=now(), down_time=cfg.service_down_time)
    if not zones:
        zones = {cfg.default_availability_zone: False}
    return [{"zoneName": name, "zoneState": {"available": up}}
            for name, up in sorted(zones.items())]

"""Availability zones: /v3[/{project_id}]/os-availability-zone."""
from __future__ import annotations

from flask import Blueprint
from flask import jsonify

from orchestrator import hosts
from orchestrator.http.current import now
from orchestrator.http.current import settings
from orchestrator.http.transaction import session

bp = Blueprint("availability_zones", __name__)


@bp.get("/os-availability-zone")
def availability_zones(project_id=None):
    """Zones with their availability."""
    zones = hosts.availability_zones(session(), now=now(),
                                     down_time=settings().service_down_time)
    if not zones:
        zones = {settings().default_availability_zone: False}
    return jsonify({"availabilityZoneInfo": [
        {"zoneName": name, "zoneState": {"available": up}} for name, up in sorted(zones.items())]})

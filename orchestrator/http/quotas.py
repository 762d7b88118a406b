"""Quota sets: /v3[/{project_id}]/os-quota-sets/{target}..."""
from __future__ import annotations

from flask import Blueprint
from flask import jsonify
from flask import request

from orchestrator import errors
from orchestrator import quota
from orchestrator.http import schemas
from orchestrator.http.body import json_body
from orchestrator.http.body import load
from orchestrator.http.body import unwrap
from orchestrator.http.current import ctx
from orchestrator.http.current import settings
from orchestrator.http.query import parse_bool
from orchestrator.http.transaction import session

bp = Blueprint("quotas", __name__)


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
    data = unwrap(json_body(), "quota_set")
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

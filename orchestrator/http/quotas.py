"""Quota sets: /v3[/{project_id}]/os-quota-sets/{target}..."""
from __future__ import annotations

from orchestrator import errors
from orchestrator import quota
from orchestrator.http import schemas
from orchestrator.http.current import settings
from orchestrator.http.routes import Body
from orchestrator.http.routes import Query
from orchestrator.http.routes import Reply
from orchestrator.http.routes import RouteBlueprint
from orchestrator.http.transaction import session

bp = RouteBlueprint("quotas", __name__, tag="os-quota-sets")

SHOW = "volume_extension:quotas:show"      # another project's quotas (admins)
UPDATE = "volume_extension:quotas:update"
QUOTA_SET = Reply(schemas.QuotaSetReplySchema, "quota_set")


def _holds_a_limit(data) -> None:
    """:raises InvalidInput: unless ``data`` is an object naming at least one limit."""
    if not isinstance(data, dict) or not (set(data) - {"tenant_id", "id"}):
        raise errors.InvalidInput("Invalid input received: quota_set must be an object holding "
                                  "at least one quota limit (backups, backup_gigabytes, "
                                  "volumes, gigabytes, snapshots).")


def _quota_body(limits: dict, with_usage: dict | None = None) -> dict:
    """Each resource's limit, or its limit, in_use and reserved."""
    out = {}
    for key, limit in {**limits, **quota.DISPLAY_ONLY}.items():
        if with_usage is not None:
            in_use, reserved = with_usage.get(key, (0, 0))
            out[key] = {"limit": limit, "in_use": in_use, "reserved": reserved}
        else:
            out[key] = limit
    return out


@bp.declare("GET", "/os-quota-sets/<target>", policy=SHOW, owner="target", reply=QUOTA_SET,
            query=(Query("usage", "Show in_use and reserved too.", boolean=True,
                         enum=("True", "False")),))
def show(target, usage):
    """Show a project's quota (usage=true adds in_use/reserved)."""
    s = session()
    limits = quota.get_limits(s, target, settings())
    return {"id": target, **_quota_body(limits, quota.usage(s, target) if usage else None)}


@bp.declare("GET", "/os-quota-sets/<target>/defaults", policy=SHOW, owner="target",
            reply=QUOTA_SET)
def defaults(target):
    """Default limits."""
    return {"id": target, **_quota_body(quota.default_limits(session(), settings()))}


@bp.declare("PUT", "/os-quota-sets/<target>", policy=UPDATE, reply=QUOTA_SET,
            body=Body(schemas.QuotaSetSchema, "quota_set", check=_holds_a_limit))
def update(target, body):
    """Set limits."""
    limits = {k: v for k, v in body.items() if k in quota.RESOURCES}
    s = session(write=True)
    quota.set_limits(s, target, limits, settings())
    s.commit()
    return _quota_body(quota.get_limits(s, target, settings()))


@bp.declare("DELETE", "/os-quota-sets/<target>", policy=UPDATE,
            reply=Reply(schemas.EmptySchema))
def delete(target):
    """Reset limits to the defaults."""
    s = session(write=True)
    quota.reset_limits(s, target)
    s.commit()
    return {}

"""Authorization: every rule by its Cinder name, checked in one place.

A rule names who may act: ``admin`` (an administrator, any project),
``member`` (a caller that may write in its project) or ``reader`` (anyone
authenticated). Visibility (another project's resource is a 404) is the
job of the lookups; this module only says yes or no to an action, and
raises ``PolicyNotAuthorized`` naming the rule as Cinder does.
"""
from __future__ import annotations

from enum import StrEnum

from orchestrator import errors
from orchestrator.context import RequestContext


class Role(StrEnum):
    ADMIN = "admin"
    MEMBER = "member"
    READER = "reader"


RULES: dict[str, Role] = {
    # backups
    "backup:create": Role.MEMBER,
    "backup:get": Role.READER,
    "backup:get_all": Role.READER,
    "backup:update": Role.MEMBER,
    "backup:delete": Role.MEMBER,
    "backup:restore": Role.MEMBER,
    "backup:export-import": Role.ADMIN,
    "backup:backup-import": Role.ADMIN,
    "backup:verify": Role.ADMIN,
    "backup:gc": Role.ADMIN,
    "volume_extension:backup_admin_actions:force_delete": Role.ADMIN,
    "volume_extension:backup_admin_actions:reset_status": Role.ADMIN,
    # volumes and the rest
    "volume_extension:volume_admin_actions:force_delete": Role.ADMIN,
    "volume_extension:quotas:show": Role.ADMIN,  # another project's (the owner needs none)
    "volume_extension:quotas:update": Role.ADMIN,
    "volume_extension:services:index": Role.ADMIN,
    "volume_extension:services:update": Role.ADMIN,
    # backup policies (an extension: schedules and retention)
    "backup_policy:create": Role.MEMBER,
    "backup_policy:get": Role.READER,
    "backup_policy:get_all": Role.READER,
    "backup_policy:update": Role.MEMBER,
    "backup_policy:delete": Role.MEMBER,
    "backup_policy:run": Role.MEMBER,
    "backup_policy:prune": Role.MEMBER,
}


def allowed(ctx: RequestContext, rule: str) -> bool:
    """Whether ``ctx`` may perform ``rule`` (an unknown rule is refused)."""
    role = RULES.get(rule, Role.ADMIN)
    if ctx.is_admin:
        return True
    if role is Role.ADMIN:
        return False
    if role is Role.MEMBER:
        return ctx.can_write()
    return True


def authorize(ctx: RequestContext, rule: str) -> None:
    """:raises PolicyNotAuthorized: when ``ctx`` may not perform ``rule``."""
    if not allowed(ctx, rule):
        raise errors.PolicyNotAuthorized(rule)


def authorize_method(ctx: RequestContext, method: str, path: str) -> None:
    """The blanket rule every write passes first: readers may only look.

    :raises PolicyNotAuthorized:
    """
    if method in SAFE_METHODS or ctx.can_write():
        return
    raise errors.PolicyNotAuthorized(message=(
        f"Policy doesn't allow {method} {path} to be performed: the roles of the caller "
        f"({', '.join(ctx.roles)}) only allow reading."))


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

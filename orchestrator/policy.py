"""Authorization: every rule by its Cinder name, checked in one place.

A rule names who may act: ``admin`` (an administrator, any project),
``member`` (a caller that may write in its project) or ``reader`` (anyone
authenticated). Visibility (another project's resource is a 404) is the
job of the lookups; this module only says yes or no to an action, and
raises ``PolicyNotAuthorized`` naming the rule as Cinder does.

The rules are data: ``RULES`` gives each one's default persona, turned into
oslo.policy defaults (``list_rules``, also the ``oslo.policy.policies`` entry
point the sample generator reads), and an operator's policy file
(``ORCH_POLICY_FILE``, YAML) overrides any of them; oslo.policy reloads the
file when it changes, so an override takes effect without a restart.
"""
from __future__ import annotations

import logging
import os
import re
import threading
from enum import StrEnum

from orchestrator import errors
from orchestrator.context import RequestContext

log = logging.getLogger(__name__)

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
    # who sees os-backup-project-attr:project_id in backup views (3.18+)
    "backup:backup_project_attribute": Role.ADMIN,
}

# The base rules every action's default refers to, by the names Cinder gives them, so an
# operator's policy file written for Cinder means the same here.
BASE_RULES: dict[str, tuple[str, str]] = {
    "context_is_admin": ("role:admin", "Who counts as an administrator (is_admin)."),
    "admin_api": ("is_admin:True or (role:admin and is_admin_project:True)",
                  "The default of administrator-only operations."),
    "xena_system_admin_or_project_reader": (
        "(role:admin) or (role:reader and project_id:%(project_id)s)",
        "An administrator, or a reader (or member) of the target's project."),
    "xena_system_admin_or_project_member": (
        "(role:admin) or (role:member and project_id:%(project_id)s)",
        "An administrator, or a member of the target's project."),
    "default": ("rule:admin_api", "Any rule not registered: administrators only."),
}
CHECKS: dict[Role, str] = {
    Role.ADMIN: "rule:admin_api",
    Role.MEMBER: "rule:xena_system_admin_or_project_member",
    Role.READER: "rule:xena_system_admin_or_project_reader",
}


def list_rules() -> list:
    """The oslo.policy defaults: the base rules, then one per entry of ``RULES``."""
    from oslo_policy import policy as oslo

    out = [oslo.RuleDefault(name, check, description=text)
           for name, (check, text) in BASE_RULES.items()]
    for name, role in RULES.items():
        out.append(oslo.RuleDefault(name, CHECKS[role], scope_types=["project"],
                                    description=f"Default: {_PERSONA[role]}."))
    return out


_PERSONA = {Role.ADMIN: "administrators only",
            Role.MEMBER: "members of the project and administrators",
            Role.READER: "readers and members of the project, and administrators"}


class _Enforcers:
    """The process's oslo.policy enforcer, made on first use (importing oslo is not free).

    oslo.policy asks the file system where the policy file is and inspects every check's
    signature on each call (about a millisecond per decision here). Instead the file is
    stat'ed once per decision and reloaded when its mtime or size changes, and decisions
    are remembered until then: the checks this service's rules are made of (roles, ids,
    scope, rule references) depend on nothing but the credentials, target and rules. A
    file with an ``http:``/``https:`` check (a remote server decides) turns that off.
    """

    MEMO_SIZE = 4096

    def __init__(self):
        self.lock = threading.Lock()
        self.policy_file: str | None = None
        self.enforcer = None
        self.stamp: tuple | None = None
        self.memo: dict = {}
        self.memoize = True

    def configure(self, policy_file: str | None) -> None:
        with self.lock:
            if self.enforcer is None or policy_file != self.policy_file:
                self.enforcer = _make_enforcer(policy_file)
                self.policy_file = policy_file
                self.stamp = _stamp(policy_file)
                self._loaded()

    def get(self):
        """The enforcer, its rules reloaded first if the policy file changed."""
        if self.enforcer is None:
            self.configure(self.policy_file)
        if self.policy_file is not None:
            stamp = _stamp(self.policy_file)
            if stamp != self.stamp and stamp is not None:
                with self.lock:
                    if stamp != self.stamp:
                        try:
                            self.enforcer.reload()
                        except Exception:  # a half-written or broken file: keep the rules
                            log.exception("policy file %s could not be loaded; the rules "
                                          "in force stay", self.policy_file)
                        else:
                            self._loaded()
                        self.stamp = stamp
        return self.enforcer

    def _loaded(self) -> None:
        """New rules: forget the decisions, and remember none if a remote check decides."""
        self.memo = {}
        self.memoize = not any(_REMOTE_CHECK.search(str(rule))
                               for rule in self.enforcer.rules.values())


_REMOTE_CHECK = re.compile(r"(^|[\s(])https?:")


def _stamp(path: str | None) -> tuple | None:
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None  # gone for now: keep what was loaded
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _make_enforcer(policy_file: str | None):
    """:raises ValueError: the policy file cannot be read or parsed."""
    from oslo_config import cfg
    from oslo_policy import policy as oslo

    class Enforcer(oslo.Enforcer):
        """Loads its rules only when told to (see _Enforcers.get)."""

        loaded = False

        def load_rules(self, force_reload: bool = False) -> None:
            if force_reload or not self.loaded:
                super().load_rules(force_reload=True)
                self.loaded = True

        def reload(self) -> None:
            super().load_rules(force_reload=True)

    conf = cfg.ConfigOpts()
    conf([], project="orchestrator", default_config_files=[], default_config_dirs=[])
    # Without a file of the operator's, oslo must not go looking for some policy.yaml.
    enforcer = Enforcer(conf, policy_file=policy_file, use_conf=bool(policy_file))
    enforcer.register_defaults(list_rules())
    try:
        enforcer.load_rules(force_reload=True)
    except Exception as exc:  # oslo raises what its parser raises
        raise ValueError(f"ORCH_POLICY_FILE {policy_file!r}: {exc}") from None
    return enforcer


_STATE = _Enforcers()


def configure(policy_file: str | None) -> None:
    """Use ``policy_file`` (YAML overrides; None or "" for the defaults) from now on.

    :raises ValueError: the file is named but cannot be read or parsed.
    """
    if policy_file and not os.path.isfile(policy_file):
        raise ValueError(f"ORCH_POLICY_FILE {policy_file!r} is not a file")
    _STATE.configure(os.path.abspath(policy_file) if policy_file else None)


def credentials(ctx: RequestContext) -> dict:
    """What oslo.policy checks a caller by: roles, ids, scope.

    Keystone's tokens carry the implied roles (admin → member → reader); the
    local modes' contexts are given them here from ``is_admin`` and ``can_write``
    so the same rules hold there.
    """
    roles = {r.lower() for r in ctx.roles}
    if not ctx.keystone:
        roles.add("reader")
        if ctx.can_write():
            roles.add("member")
        if ctx.is_admin:
            roles |= {"admin", "member"}
    return {"user_id": ctx.user_id, "project_id": ctx.project_id or None,
            "roles": sorted(roles), "is_admin": ctx.is_admin,
            "is_admin_project": ctx.is_admin_project,
            "domain_id": ctx.domain_id, "user_domain_id": ctx.user_domain_id,
            "project_domain_id": ctx.project_domain_id, "system_scope": ctx.system_scope,
            "service_roles": list(ctx.service_roles),
            "service_user_id": ctx.service_user_id,
            "service_project_id": ctx.service_project_id}


def check(rule: str, creds: dict, target: dict | None = None) -> bool:
    """Whether ``creds`` pass ``rule`` on ``target`` (oslo.policy, scope included)."""
    from oslo_policy import policy as oslo

    state = _STATE
    enforcer = state.get()
    if target is None:
        target = {"project_id": creds.get("project_id"), "user_id": creds.get("user_id")}
    key = (rule, _frozen(target), _frozen(creds))
    memo = state.memo
    found = memo.get(key)
    if found is None:
        try:
            found = bool(enforcer.enforce(rule, target, creds))
        except oslo.InvalidScope:
            found = False
        if state.memoize:
            if len(memo) >= state.MEMO_SIZE:
                memo.clear()
            memo[key] = found
    return found


def _frozen(values: dict) -> tuple:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v)
                        for k, v in values.items()))


def allowed(ctx: RequestContext, rule: str, target: dict | None = None) -> bool:
    """Whether ``ctx`` may perform ``rule`` (an unknown rule is administrators only).

    ``target`` is the resource's {"project_id": ...}; by default the caller's own project
    (lookups have already hidden other projects' resources).
    """
    return check(rule, credentials(ctx), target)


def authorize(ctx: RequestContext, rule: str, target: dict | None = None) -> None:
    """:raises PolicyNotAuthorized: when ``ctx`` may not perform ``rule``."""
    if not allowed(ctx, rule, target):
        raise errors.PolicyNotAuthorized(rule)


def authorize_method(ctx: RequestContext, method: str, path: str,
                     rule: str | None = None) -> None:
    """The blanket rule every write passes first: readers may only look.

    ``rule`` is the route's own rule, if it has one: where it lets this caller act (a
    policy file may open an action to readers), the blanket rule gives way.

    :raises PolicyNotAuthorized:
    """
    if method in SAFE_METHODS or ctx.can_write():
        return
    if rule is not None and allowed(ctx, rule):
        return
    raise errors.PolicyNotAuthorized(message=(
        f"Policy doesn't allow {method} {path} to be performed: the roles of the caller "
        f"({', '.join(ctx.roles)}) only allow reading."))


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

"""Backup policies: /v3[/{project_id}]/backup-policies... (an extension of the v3 API).

Microversion-independent; envelopes and faults as the rest of the API. The
rules live in orchestrator/policies/service.py; docs/policies.md describes
schedules and retention.
"""
from __future__ import annotations

from marshmallow import fields
from marshmallow import validate

from orchestrator import policy as rules
from orchestrator.http import schemas
from orchestrator.http.current import ctx
from orchestrator.http.current import now
from orchestrator.http.current import settings
from orchestrator.http.responses import resource_links
from orchestrator.http.responses import timestamp
from orchestrator.http.routes import Action
from orchestrator.http.routes import Actions
from orchestrator.http.routes import Body
from orchestrator.http.routes import Listing
from orchestrator.http.routes import Reply
from orchestrator.http.routes import RouteBlueprint
from orchestrator.http.transaction import commit_and_dispatch
from orchestrator.http.transaction import session
from orchestrator.policies import service

bp = RouteBlueprint("backup_policies", __name__, tag="backup-policies")
COLLECTION = "backup-policies"
NUMBER = {"allow_none": True}


# ----------------------------------------------------------------------------- schemas


class BackupPolicyScheduleSchema(schemas.StrictSchema):
    """Exactly one of cron (five fields, on the wall clock of timezone) and
    interval_seconds."""

    cron = fields.String(validate=validate.Length(max=255), **NUMBER)
    timezone = fields.String(validate=validate.Length(max=64), **NUMBER)
    interval_seconds = schemas.WholeNumber(**NUMBER)


class BackupPolicyRetentionSchema(schemas.StrictSchema):
    """keep_* rules (0 or absent: the rule is off); docs/policies.md defines the periods."""

    keep_last = schemas.WholeNumber(**NUMBER)
    keep_hourly = schemas.WholeNumber(**NUMBER)
    keep_daily = schemas.WholeNumber(**NUMBER)
    keep_weekly = schemas.WholeNumber(**NUMBER)
    keep_monthly = schemas.WholeNumber(**NUMBER)
    keep_yearly = schemas.WholeNumber(**NUMBER)
    keep_within_seconds = schemas.WholeNumber(**NUMBER)


class BackupPolicyWriteSchema(schemas.StrictSchema):
    """A policy as created (schedule required) or updated (only the fields given change)."""

    name = schemas.Name()
    description = schemas.Name()
    schedule = fields.Nested(BackupPolicyScheduleSchema)
    start_window_seconds = schemas.WholeNumber(**NUMBER)
    run_missed = schemas.LenientBool(**NUMBER)
    volume_ids = fields.List(schemas.UUIDString(), allow_none=True,
                             validate=validate.Length(max=service.VOLUME_IDS_MAX))
    volume_metadata = schemas.Metadata()
    full_every = schemas.WholeNumber(**NUMBER)
    full_every_days = schemas.WholeNumber(**NUMBER)
    retention = fields.Nested(BackupPolicyRetentionSchema, allow_none=True)
    enabled = schemas.LenientBool(**NUMBER)


class BackupPolicySummarySchema(schemas.SummarySchema):
    pass


class BackupPolicyRunViewSchema(schemas.ReplySchema):
    """One due time: scheduled, late (after its window, run_missed), missed or manual."""

    due_at = fields.String()
    started_at = fields.String()
    kind = fields.String(metadata={"enum": ["scheduled", "late", "missed", "manual"]})
    coalesced = fields.Integer()
    reason = fields.String(allow_none=True)
    backup_ids = fields.Dict(keys=fields.String(), values=fields.String())
    errors = fields.Dict(keys=fields.String(), values=fields.String())


class BackupPolicyDetailSchema(schemas.ReplySchema):
    id = fields.UUID()
    project_id = fields.String()
    name = fields.String(allow_none=True)
    description = fields.String(allow_none=True)
    schedule = fields.Nested(BackupPolicyScheduleSchema)
    start_window_seconds = fields.Integer()
    run_missed = fields.Boolean()
    volume_ids = fields.List(fields.String())
    volume_metadata = fields.Dict(keys=fields.String(), values=fields.String())
    full_every = fields.Integer(allow_none=True)
    full_every_days = fields.Integer(allow_none=True)
    retention = fields.Nested(BackupPolicyRetentionSchema)
    enabled = fields.Boolean()
    created_at = fields.String()
    updated_at = fields.String(allow_none=True)
    last_run_at = fields.String(allow_none=True)
    next_run_at = fields.String(allow_none=True)
    missed_runs = fields.Integer()
    last_error = fields.String(allow_none=True, metadata={
        "description": "why the due run could not start yet (e.g. no live backup host)"})
    last_prune = fields.Dict(allow_none=True)
    last_success = fields.Dict(keys=fields.String(), values=fields.String(), metadata={
        "description": "volume id → created_at of its newest available policy backup"})
    recent_runs = fields.List(fields.Nested(BackupPolicyRunViewSchema), metadata={
        "description": "show only: the last runs, newest first"})
    links = fields.List(fields.Nested(schemas.LinkSchema))


class PruneSchema(schemas.StrictSchema):
    dry_run = schemas.LenientBool(**NUMBER)


class PruneResultSchema(schemas.ReplySchema):
    """What the prune deletes (newest first) and what it keeps, with the rules."""

    class _Delete(schemas.ReplySchema):
        backup_id = fields.String()
        volume_id = fields.String()
        reason = fields.String(metadata={"enum": ["no_rule", "error"]})
        deferred = fields.Boolean(metadata={
            "description": "queued after its dependents' deletes: goes at the next prune"})

    class _Keep(schemas.ReplySchema):
        backup_id = fields.String()
        volume_id = fields.String()
        rules = fields.List(fields.String())

    delete = fields.List(fields.Nested(_Delete))
    keep = fields.List(fields.Nested(_Keep))
    errors = fields.List(fields.Dict())


class RunResultSchema(BackupPolicyRunViewSchema):
    prune = fields.Nested(PruneResultSchema, allow_none=True)


# ----------------------------------------------------------------------------- rendering


def _summary(policy) -> dict:
    return {"id": policy.id, "name": policy.display_name,
            "links": resource_links(COLLECTION, policy.id)}


def _schedule(policy) -> dict:
    if policy.cron:
        return {"cron": policy.cron, "timezone": policy.timezone}
    return {"interval_seconds": policy.interval_seconds, "timezone": policy.timezone}


def _run(run) -> dict:
    return {"due_at": timestamp(run.due_at), "started_at": timestamp(run.started_at),
            "kind": run.kind, "coalesced": run.coalesced, "reason": run.reason,
            "backup_ids": dict(run.backup_ids or {}), "errors": dict(run.errors or {})}


def _detail(policy, success: dict | None, runs=None) -> dict:
    out = {
        "id": policy.id, "project_id": policy.project_id, "name": policy.display_name,
        "description": policy.display_description, "schedule": _schedule(policy),
        "start_window_seconds": policy.start_window_seconds, "run_missed": policy.run_missed,
        "volume_ids": list(policy.volume_ids or []),
        "volume_metadata": dict(policy.volume_metadata or {}),
        "full_every": policy.full_every, "full_every_days": policy.full_every_days,
        "retention": dict(policy.retention or {}), "enabled": policy.enabled,
        "created_at": timestamp(policy.created_at), "updated_at": timestamp(policy.updated_at),
        "last_run_at": timestamp(policy.last_run_at),
        "next_run_at": timestamp(policy.next_run_at), "missed_runs": policy.missed_runs,
        "last_error": policy.last_error, "last_prune": policy.last_prune,
        "last_success": {v: timestamp(at) for v, at in (success or {}).items()},
        "links": resource_links(COLLECTION, policy.id),
    }
    if runs is not None:
        out["recent_runs"] = [_run(r) for r in runs]
    return out


# ----------------------------------------------------------------------------- routes

LISTING = Listing(filters=("display_name", "enabled"))
DETAIL = Reply(BackupPolicyDetailSchema, "backup_policy")
WRITE = Body(BackupPolicyWriteSchema, "backup_policy")


def _show(s, policy) -> dict:
    return _detail(policy, service.last_success(s, [policy.id]).get(policy.id),
                   service.recent_runs(s, policy.id))


@bp.declare("POST", "/backup-policies", status=201, policy="backup_policy:create",
            body=WRITE, reply=DETAIL)
def create(body):
    """Create a backup policy: a schedule and a retention over volumes of the project."""
    s = session(write=True)
    policy = service.create_policy(s, ctx(), body, now=now())
    s.commit()
    return _show(s, policy)


@bp.declare("GET", "/backup-policies", policy="backup_policy:get_all", listing=LISTING,
            reply=Reply(BackupPolicySummarySchema, "backup_policies", many=True))
def index(page):
    """List backup policies (summary view)."""
    items, count = service.list_policies(session(), ctx(), **page)
    return [_summary(p) for p in items], items, count


@bp.declare("GET", "/backup-policies/detail", policy="backup_policy:get_all", listing=LISTING,
            reply=Reply(BackupPolicyDetailSchema, "backup_policies", many=True))
def detail(page):
    """List backup policies (detail view)."""
    s = session()
    items, count = service.list_policies(s, ctx(), **page)
    success = service.last_success(s, [p.id for p in items])
    return [_detail(p, success.get(p.id)) for p in items], items, count


@bp.declare("GET", "/backup-policies/<policy_id>", policy="backup_policy:get", reply=DETAIL,
            errors=(404,))
def show(policy_id):
    """Show one backup policy, with its recent runs."""
    s = session()
    return _show(s, service.get_policy(s, ctx(), policy_id))


@bp.declare("PUT", "/backup-policies/<policy_id>", policy="backup_policy:update", body=WRITE,
            reply=DETAIL, errors=(404,))
def update(policy_id, body):
    """Update a backup policy: only the fields given change.

    A new schedule, or enabling it, recomputes the next run from now.
    """
    s = session(write=True)
    policy = service.update_policy(s, ctx(), policy_id, body, now=now())
    s.commit()
    return _show(s, policy)


@bp.declare("DELETE", "/backup-policies/<policy_id>", status=202,
            policy="backup_policy:delete", errors=(404,))
def delete(policy_id):
    """Delete a backup policy; the backups it made stay."""
    s = session(write=True)
    service.delete_policy(s, ctx(), policy_id, now=now())
    s.commit()


ACTIONS = Actions((
    Action("os-run", description="run the policy now (any value, e.g. {})",
           policy="backup_policy:run"),
    Action("os-prune", Body(PruneSchema, null_is_empty=True),
           description="apply the retention now; with dry_run only say what it would do",
           policy="backup_policy:prune"),
))


class ActionResultSchema(schemas.ReplySchema):
    """{"run": ...} for os-run, {"prune": ...} for os-prune."""

    run = fields.Nested(RunResultSchema)
    prune = fields.Nested(PruneResultSchema)


@bp.declare("POST", "/backup-policies/<policy_id>/action", status=202, body=ACTIONS,
            errors=(404, 413, 503), reply=Reply(ActionResultSchema))
def action(policy_id, action, body):
    """os-run (answers {"run": ...}) and os-prune (answers {"prune": ...}).

    os-run backs up every selected volume now, through the same rules as a
    backup create, then prunes; os-prune applies the retention now, or with
    `dry_run` only answers what it would delete and keep.
    """
    s = session(write=True)
    c = ctx()
    policy = service.get_policy(s, c, policy_id)
    if action == "os-prune":
        rules.authorize(c, "backup_policy:prune")
        result, jobs = service.prune_policy(s, settings(), policy, now=now(),
                                            dry_run=bool(body.get("dry_run")))
        commit_and_dispatch(jobs)
        return {"prune": result}
    rules.authorize(c, "backup_policy:run")
    at = now()
    run, jobs = service.run_policy(s, settings(), policy, now=at, due_at=at, kind="manual")
    out = _run(run)
    commit_and_dispatch(jobs)
    out["prune"] = None
    if service.has_rules(policy):
        result, prune_jobs = service.prune_policy(s, settings(), policy, now=now(),
                                                  dry_run=False)
        commit_and_dispatch(prune_jobs)
        out["prune"] = result
    return {"run": out}

"""`orchestrator backup-policy ...`: the backup-policies resource from the command line.

A small client of the HTTP API (requests), self-contained: the endpoint is
``--endpoint`` / ``ORCH_ENDPOINT`` / ``CINDER_ENDPOINT`` (default the local
stack's), the credentials ``--token`` / ``OS_AUTH_TOKEN``, else in noauth mode
``OS_USER_ID:OS_PROJECT_ID``. Replies print as JSON (lists as a table).
"""
from __future__ import annotations

import json
import os
import re

import click
import requests

DEFAULT_ENDPOINT = "http://127.0.0.1:8776/v3"
TIMEOUT = 60
_DURATION = re.compile(r"([0-9]+)([smhdw]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class PolicyClient:
    """Requests to /backup-policies with one caller's credentials."""

    def __init__(self, endpoint: str, token: str):
        self.endpoint = endpoint.rstrip("/")
        self.session = requests.Session()
        self.session.headers.update({"X-Auth-Token": token,
                                     "Content-Type": "application/json",
                                     "Accept": "application/json"})

    def call(self, method: str, path: str, body: dict | None = None) -> dict | None:
        """The reply's JSON (None when it has no body). :raises click.ClickException:"""
        url = f"{self.endpoint}/backup-policies{path}"
        try:
            r = self.session.request(method, url, json=body, timeout=TIMEOUT)
        except requests.RequestException as exc:
            raise click.ClickException(f"cannot reach {self.endpoint}: {exc}") from None
        data = None
        if r.content:
            try:
                data = r.json()
            except ValueError:
                data = None
        if r.status_code >= 400:
            fault = next(iter(data.values()), {}) if isinstance(data, dict) and data else {}
            message = fault.get("message") if isinstance(fault, dict) else None
            raise click.ClickException(f"{r.status_code}: {message or r.text.strip()}")
        return data


def _duration(text: str | None) -> int | None:
    """Seconds from 3600, 90s, 15m, 12h, 30d or 2w."""
    if text is None:
        return None
    match = _DURATION.fullmatch(text.strip().lower())
    if not match:
        raise click.BadParameter(f"{text!r} is not a duration such as 3600, 15m, 12h or 30d")
    return int(match.group(1)) * _UNITS[match.group(2)]


def _pairs(items: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE")
        out[key] = value
    return out


def _echo(data) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def _options(fn):
    """The policy fields, shared by create and update (only those given are sent)."""
    options = [
        click.option("--name"), click.option("--description"),
        click.option("--cron", help="five-field cron expression, e.g. '0 2 * * *'"),
        click.option("--timezone", help="time zone of the cron and the periods (default UTC)"),
        click.option("--interval", help="run every DURATION instead of a cron (3600, 15m...)"),
        click.option("--volume", "volumes", multiple=True, help="volume id (repeatable)"),
        click.option("--metadata", "metadata", multiple=True,
                     help="select volumes whose metadata has KEY=VALUE (repeatable)"),
        click.option("--keep-last", type=int), click.option("--keep-hourly", type=int),
        click.option("--keep-daily", type=int), click.option("--keep-weekly", type=int),
        click.option("--keep-monthly", type=int), click.option("--keep-yearly", type=int),
        click.option("--keep-within", help="keep every backup younger than DURATION"),
        click.option("--full-every", type=int, help="every Nth backup is full"),
        click.option("--full-every-days", type=int, help="a full backup at least every N days"),
        click.option("--start-window", help="a run not started DURATION after its due time "
                                            "is missed"),
        click.option("--run-missed/--skip-missed", default=None,
                     help="run a missed run at the next chance (default) or skip it"),
        click.option("--enabled/--disabled", default=None),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _policy_body(kw: dict, *, creating: bool) -> dict:
    body: dict = {}
    for key in ("name", "description"):
        if kw[key] is not None:
            body[key] = kw[key]
    if kw["cron"] or kw["interval"] or kw["timezone"]:
        if kw["cron"] and kw["interval"]:
            raise click.UsageError("give --cron or --interval, not both")
        if not kw["cron"] and not kw["interval"]:
            raise click.UsageError("--timezone goes with --cron or --interval")
        schedule = {"cron": kw["cron"]} if kw["cron"] else \
            {"interval_seconds": _duration(kw["interval"])}
        if kw["timezone"]:
            schedule["timezone"] = kw["timezone"]
        body["schedule"] = schedule
    elif creating:
        raise click.UsageError("a policy needs --cron or --interval")
    if kw["volumes"]:
        body["volume_ids"] = list(kw["volumes"])
    if kw["metadata"]:
        body["volume_metadata"] = _pairs(kw["metadata"])
    keep = {f"keep_{name}": kw[f"keep_{name}"] for name in
            ("last", "hourly", "daily", "weekly", "monthly", "yearly")
            if kw[f"keep_{name}"] is not None}
    if kw["keep_within"] is not None:
        keep["keep_within_seconds"] = _duration(kw["keep_within"])
    if keep:
        body["retention"] = keep
    for key in ("full_every", "full_every_days"):
        if kw[key] is not None:
            body[key] = kw[key]
    if kw["start_window"] is not None:
        body["start_window_seconds"] = _duration(kw["start_window"])
    if kw["run_missed"] is not None:
        body["run_missed"] = kw["run_missed"]
    if kw["enabled"] is not None:
        body["enabled"] = kw["enabled"]
    return {"backup_policy": body}


@click.group("backup-policy")
@click.option("--endpoint", envvar=["ORCH_ENDPOINT", "CINDER_ENDPOINT"],
              default=DEFAULT_ENDPOINT, show_default=True, help="the API's /v3 URL")
@click.option("--token", envvar="OS_AUTH_TOKEN", default=None,
              help="X-Auth-Token (default in noauth mode: $OS_USER_ID:$OS_PROJECT_ID)")
@click.pass_context
def backup_policy(ctx: click.Context, endpoint: str, token: str | None) -> None:
    """Backup policies: schedules and retention (docs/policies.md)."""
    if token is None:
        token = f"{os.environ.get('OS_USER_ID', 'demo')}:" \
                f"{os.environ.get('OS_PROJECT_ID', 'demo')}"
    ctx.obj = PolicyClient(endpoint, token)


@backup_policy.command("create")
@_options
@click.pass_obj
def create(client: PolicyClient, **kw) -> None:
    """Create a policy; prints it."""
    _echo(client.call("POST", "", _policy_body(kw, creating=True))["backup_policy"])


@backup_policy.command("list")
@click.option("--all-tenants", is_flag=True, help="admins: every project's")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def list_(client: PolicyClient, all_tenants: bool, as_json: bool) -> None:
    """List policies: id, name, schedule, next and last run."""
    rows = client.call("GET", "/detail" + ("?all_tenants=1" if all_tenants else ""))[
        "backup_policies"]
    if as_json:
        _echo(rows)
        return
    header = ("id", "name", "schedule", "enabled", "next_run_at", "last_run_at", "missed")
    table = [header] + [(
        p["id"], p["name"] or "", p["schedule"].get("cron") or
        f"every {p['schedule'].get('interval_seconds')} s", "yes" if p["enabled"] else "no",
        p["next_run_at"] or "-", p["last_run_at"] or "-", str(p["missed_runs"]))
        for p in rows]
    widths = [max(len(str(r[i])) for r in table) for i in range(len(header))]
    for row in table:
        click.echo("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True))
                   .rstrip())


@backup_policy.command("show")
@click.argument("policy_id")
@click.pass_obj
def show(client: PolicyClient, policy_id: str) -> None:
    """Show a policy with its recent runs."""
    _echo(client.call("GET", f"/{policy_id}")["backup_policy"])


@backup_policy.command("update")
@click.argument("policy_id")
@_options
@click.pass_obj
def update(client: PolicyClient, policy_id: str, **kw) -> None:
    """Change the given fields of a policy; prints it."""
    body = _policy_body(kw, creating=False)
    if not body["backup_policy"]:
        raise click.UsageError("nothing to update")
    _echo(client.call("PUT", f"/{policy_id}", body)["backup_policy"])


@backup_policy.command("delete")
@click.argument("policy_ids", nargs=-1, required=True)
@click.pass_obj
def delete(client: PolicyClient, policy_ids: tuple[str, ...]) -> None:
    """Delete policies (their backups stay)."""
    for policy_id in policy_ids:
        client.call("DELETE", f"/{policy_id}")
        click.echo(f"deleted {policy_id}")


@backup_policy.command("run")
@click.argument("policy_id")
@click.pass_obj
def run(client: PolicyClient, policy_id: str) -> None:
    """Run a policy now (then prune); prints the run."""
    _echo(client.call("POST", f"/{policy_id}/action", {"os-run": {}})["run"])


@backup_policy.command("prune")
@click.argument("policy_id")
@click.option("--dry-run", is_flag=True, help="only say what would be deleted and kept")
@click.pass_obj
def prune(client: PolicyClient, policy_id: str, dry_run: bool) -> None:
    """Apply a policy's retention now; prints what it deletes and keeps, and why."""
    _echo(client.call("POST", f"/{policy_id}/action",
                      {"os-prune": {"dry_run": dry_run}})["prune"])

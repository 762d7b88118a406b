"""`orchestrator backup create|list|show|restore|delete|watch`: the public API from a shell.

Everything goes over HTTP (orchestrator/client.py), so the commands work from any
machine that reaches the API, with the credentials the openstack and cinder CLIs take
(Keystone password auth and the catalog, a token, or noauth). ``--wait``
(and ``watch``) follow the backup's ``progress`` with a live bar: bytes, percent,
rate and time left, and a note when the running job has stopped reporting.

Exit status, for scripts (docs/clients.md):

* 0  done: the call succeeded (with ``--wait``: the job ended well)
* 2  bad usage (an unknown option, a missing argument, credentials missing or
     incomplete, no endpoint of the API in Keystone's catalog)
* 3  the API refused the call (a 4xx/5xx fault; the message says why), or Keystone
     refused the credentials
* 4  the API (or Keystone) could not be reached (connection refused, TLS, timeout)
* 5  the job ended in error (backup ``error``, restore ``error_restoring``, …)
* 6  ``--timeout`` passed before the job ended (the job goes on)
* 130 interrupted (Ctrl-C; the job goes on)
"""
from __future__ import annotations

import datetime as dt
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field

import click

from orchestrator.client import ApiError
from orchestrator.client import AuthFailed
from orchestrator.client import Client
from orchestrator.client import ClientError
from orchestrator.client import CredentialsMissing
from orchestrator.client import NoEndpoint
from orchestrator.client import Unreachable
from orchestrator.client import connect
from orchestrator.client import explicit_endpoint
from orchestrator.client import resolve_credentials

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_API_ERROR = 3
EXIT_UNREACHABLE = 4
EXIT_JOB_ERROR = 5
EXIT_TIMEOUT = 6
EXIT_INTERRUPTED = 130

POLL_S = 0.5
# A running job reports at least once a second: this long without one is worth saying.
STALE_AFTER_S = 15.0
BACKUP_TRANSIENT = {"creating", "restoring", "deleting"}
VOLUME_TRANSIENT = {"creating", "restoring-backup", "downloading"}


class Done(Exception):
    """End the command with this exit status (and, unless quiet, this message)."""

    def __init__(self, code: int, message: str | None = None, payload: dict | None = None):
        super().__init__(message)
        self.code, self.message, self.payload = code, message, payload


# ----------------------------------------------------------------------------- plumbing


# The Keystone options (--os-auth-url …) and the Options fields they fill, in order.
_KEYSTONE_FIELDS = ("auth_url", "username", "password", "project_name", "user_domain_name",
                    "user_domain_id", "project_domain_name", "project_domain_id",
                    "region_name", "interface")


@dataclass
class Options:
    endpoint: str | None
    token: str | None = field(repr=False)
    user_id: str | None
    project_id: str | None
    auth_type: str | None
    cacert: str | None
    insecure: bool
    as_json: bool
    timeout: float
    keystone: dict = field(default_factory=dict, repr=False)  # _KEYSTONE_FIELDS → value

    def client(self) -> Client:
        env = os.environ
        creds = resolve_credentials(env, token=self.token, user_id=self.user_id,
                                    project_id=self.project_id, auth_type=self.auth_type,
                                    endpoint=self.endpoint, **self.keystone)
        verify: bool | str = False if self.insecure else (self.cacert or
                                                          env.get("OS_CACERT") or True)
        endpoint = explicit_endpoint(env, self.endpoint)
        settings = _settings() if endpoint is None and creds.keystone is None else None
        return connect(creds, endpoint, verify=verify, settings=settings, env=env)


def _settings():
    """The local settings, for the default endpoint only (a bad ORCH_* is not fatal)."""
    from orchestrator.config import Settings
    try:
        return Settings.from_env()
    except ValueError:
        return None


def _common(func):
    """The options every backup command takes (as the openstack and cinder CLIs spell them;
    each falls back on its OS_* variable)."""
    options = [
        click.option("--os-endpoint", "endpoint", default=None,
                     help="API endpoint, e.g. http://127.0.0.1:8776/v3 (OS_ENDPOINT; default: "
                          "the Keystone catalog's, else the local API of the ORCH_* settings)"),
        click.option("--os-auth-url", "auth_url", default=None,
                     help="Keystone URL, e.g. http://keystone:5000/v3 (OS_AUTH_URL)"),
        click.option("--os-username", "username", default=None,
                     help="Keystone user name (OS_USERNAME)"),
        click.option("--os-password", "password", default=None,
                     help="Keystone password (OS_PASSWORD; better kept in the environment "
                          "than on a command line)"),
        click.option("--os-project-name", "project_name", default=None,
                     help="Keystone project (OS_PROJECT_NAME)"),
        click.option("--os-project-id", "project_id", default=None,
                     help="Keystone project id; noauth: the project (OS_PROJECT_ID)"),
        click.option("--os-user-id", "user_id", default=None,
                     help="Keystone user id; noauth: the user (OS_USER_ID)"),
        click.option("--os-user-domain-name", "user_domain_name", default=None,
                     help="the user's domain (OS_USER_DOMAIN_NAME; default: Default)"),
        click.option("--os-user-domain-id", "user_domain_id", default=None,
                     help="(OS_USER_DOMAIN_ID)"),
        click.option("--os-project-domain-name", "project_domain_name", default=None,
                     help="the project's domain (OS_PROJECT_DOMAIN_NAME; default: Default)"),
        click.option("--os-project-domain-id", "project_domain_id", default=None,
                     help="(OS_PROJECT_DOMAIN_ID)"),
        click.option("--os-region-name", "region_name", default=None,
                     help="catalog region (OS_REGION_NAME)"),
        click.option("--os-interface", "interface", default=None,
                     help="catalog interface: public, internal or admin (OS_INTERFACE; "
                          "default: public)"),
        click.option("--os-token", "token", default=None,
                     help="a token: an API token of ORCH_AUTH=token, or with OS_AUTH_URL a "
                          "Keystone token (OS_TOKEN)"),
        click.option("--os-auth-type", "auth_type", default=None,
                     help="password, token (Keystone), admin_token (the token as it is) or "
                          "noauth; default: chosen from what is given (OS_AUTH_TYPE)"),
        click.option("--os-cacert", "cacert", default=None,
                     help="CA bundle to verify the API's and Keystone's TLS certificates "
                          "(OS_CACERT)"),
        click.option("--insecure", is_flag=True, help="do not verify TLS certificates"),
        click.option("--json", "as_json", is_flag=True,
                     help="print JSON on stdout (errors too), no progress bar"),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _wait_options(func):
    func = click.option("--timeout", type=float, default=0.0, show_default=True,
                        help="with --wait: give up after this many seconds (0: never); "
                             "exit status 6")(func)
    return click.option("--wait", is_flag=True,
                        help="wait for the job to end, showing its progress")(func)


def _run(opts: Options, action: Callable[[Client], tuple[dict | list | None, str]]) -> None:
    """Run ``action`` and end the process with the documented exit status.

    ``action`` returns (what --json prints, what is printed otherwise); it raises Done to
    end otherwise.
    """
    code, payload, text = EXIT_OK, None, ""
    try:
        payload, text = action(opts.client())
    except Done as done:
        code, payload, text = done.code, done.payload, done.message or ""
    except (CredentialsMissing, NoEndpoint) as exc:
        code, payload, text = EXIT_USAGE, {"error": {"message": str(exc)}}, str(exc)
    except AuthFailed as exc:
        code, payload, text = EXIT_API_ERROR, {"error": {"message": str(exc)}}, str(exc)
    except ApiError as exc:
        rid = f" (request {exc.request_id})" if exc.request_id else ""
        code, payload = EXIT_API_ERROR, {"error": exc.as_dict()}
        text = f"API error {exc.status}: {exc.message}{rid}"
    except Unreachable as exc:
        code, payload, text = EXIT_UNREACHABLE, {"error": {"message": str(exc)}}, str(exc)
    except ClientError as exc:  # pragma: no cover - every kind is handled above
        code, payload, text = EXIT_API_ERROR, {"error": {"message": str(exc)}}, str(exc)
    except KeyboardInterrupt:
        code, payload = EXIT_INTERRUPTED, {"error": {"message": "interrupted"}}
        text = "interrupted; the job goes on (see `orchestrator backup watch`)"
    if opts.as_json:
        if payload is not None:
            click.echo(json.dumps(payload, indent=2, sort_keys=True))
    elif text:
        click.echo(text, err=code != EXIT_OK)
    sys.exit(code)


def _options(kw: dict) -> Options:
    return Options(kw.pop("endpoint"), kw.pop("token"), kw.pop("user_id"),
                   kw.pop("project_id"), kw.pop("auth_type"), kw.pop("cacert"),
                   kw.pop("insecure"), kw.pop("as_json"), kw.pop("timeout", 0.0),
                   {name: kw.pop(name) for name in _KEYSTONE_FIELDS})


# ----------------------------------------------------------------------------- text views

_SHOW_KEYS = ("id", "name", "status", "volume_id", "size", "is_incremental",
              "has_dependent_backups", "availability_zone", "container", "object_count",
              "created_at", "updated_at", "data_timestamp", "snapshot_id", "description",
              "fail_reason")


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def _show_text(backup: dict) -> str:
    lines = [f"{key:22} {backup.get(key) if backup.get(key) is not None else '-'}"
             for key in _SHOW_KEYS]
    progress = backup.get("progress") or {}
    if progress:
        line = f"{_size(progress.get('bytes_done'))} of {_size(progress.get('bytes_total'))}"
        if progress.get("percent") is not None:
            line += f" ({progress['percent']}%)"
        if progress.get("rate_bytes_per_s"):
            line += f", {_size(progress['rate_bytes_per_s'])}/s"
        if progress.get("bytes_skipped"):
            line += f", {_size(progress['bytes_skipped'])} holes skipped"
        if progress.get("operation"):
            line += f"  [{progress['operation']}, reported {progress.get('updated_at')}]"
        lines.append(f"{'progress':22} {line}")
        lines.append(f"{'stored':22} {_size(progress.get('stored_bytes'))}")
    return "\n".join(lines)


def _list_text(backups: list[dict]) -> str:
    header = ("ID", "Volume ID", "Status", "Name", "Size", "Incremental", "Created")
    rows = [header] + [(b["id"], b.get("volume_id") or "", b.get("status") or "",
                        b.get("name") or "", str(b.get("size") or ""),
                        "yes" if b.get("is_incremental") else "no", b.get("created_at") or "")
                       for b in backups]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


# ----------------------------------------------------------------------------- following


def _age(stamp: str | None) -> float | None:
    """Seconds since an ISO 8601 UTC ``...Z`` stamp (None if absent or unreadable)."""
    if not stamp:
        return None
    try:
        when = dt.datetime.fromisoformat(stamp.rstrip("Z")).replace(tzinfo=dt.UTC)
    except ValueError:
        return None
    return (dt.datetime.now(dt.UTC) - when).total_seconds()


class Follower:
    """Polls a backup until ``finished(backup)`` gives an exit status, drawing a bar."""

    def __init__(self, client: Client, backup_id: str, *, operation: str | None,
                 timeout: float, show: bool):
        self.client, self.backup_id, self.operation = client, backup_id, operation
        self.timeout, self.show = timeout, show

    def follow(self, finished: Callable[[dict | None], tuple[int, str] | None]
               ) -> tuple[dict | None, int, str]:
        deadline = time.monotonic() + self.timeout if self.timeout > 0 else None
        if not self.show:
            return self._loop(finished, deadline, None)
        from rich.console import Console
        from rich.progress import BarColumn
        from rich.progress import DownloadColumn
        from rich.progress import Progress
        from rich.progress import TaskProgressColumn
        from rich.progress import TextColumn
        from rich.progress import TimeRemainingColumn
        from rich.progress import TransferSpeedColumn
        console = Console(stderr=True)
        columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                   TaskProgressColumn(), TransferSpeedColumn(), TextColumn("ETA"),
                   TimeRemainingColumn(), TextColumn("{task.fields[note]}"))
        with Progress(*columns, console=console, refresh_per_second=4) as bar:
            task = bar.add_task(self.backup_id[:8], total=None, note="")
            return self._loop(finished, deadline, (bar, task))

    def _loop(self, finished, deadline, bar) -> tuple[dict | None, int, str]:
        while True:
            try:
                backup = self.client.get_backup(self.backup_id)
            except ApiError as exc:
                if exc.status != 404:
                    raise
                backup = None
            verdict = finished(backup)
            if bar is not None and backup is not None:
                self._draw(bar, backup, ended_well=verdict is not None and
                           verdict[0] == EXIT_OK)
            if verdict is not None:
                return backup, verdict[0], verdict[1]
            if deadline is not None and time.monotonic() >= deadline:
                status = backup["status"] if backup else "gone"
                return backup, EXIT_TIMEOUT, (f"timed out after {self.timeout:g} s; backup "
                                              f"{self.backup_id} is {status} (the job goes on)")
            time.sleep(POLL_S)

    def _draw(self, bar, backup: dict, *, ended_well: bool = False) -> None:
        progress, task = bar
        if ended_well:  # the last report may predate the end: show the whole
            total = progress.tasks[0].total or (backup.get("progress") or {}).get(
                "bytes_total") or None
            progress.update(task, description=f"done {(backup.get('name') or backup['id'])[:24]}",
                            total=total, completed=total or 0, note="")
            return
        p = backup.get("progress") or {}
        running = p.get("operation")
        mine = self.operation is None or running == self.operation
        label = f"{running or backup['status']} {(backup.get('name') or backup['id'])[:24]}"
        note = ""
        if mine and running:
            age = _age(p.get("updated_at"))
            if age is not None and age > STALE_AFTER_S:
                note = f"[yellow]no report for {age:.0f} s[/]"
            elif p.get("bytes_skipped"):
                note = f"{_size(p['bytes_skipped'])} holes"
        if mine and (running or backup["status"] in BACKUP_TRANSIENT):
            progress.update(task, description=label, total=p.get("bytes_total") or None,
                            completed=p.get("bytes_done") or 0, note=note)
        else:  # queued, or behind another job: nothing of ours to show yet
            progress.update(task, description=label, note=note or "waiting")


def _wait_for(client: Client, opts: Options, backup_id: str,
              finished: Callable[[dict | None], tuple[int, str] | None], *,
              operation: str | None = None, show: bool = True,
              on_error: Callable[[dict | None], dict] | None = None) -> tuple[dict | None, str]:
    """Follow ``backup_id`` until ``finished`` decides (or --timeout passes).

    Ended well: (the backup as it ended, the message). Otherwise raises Done with the exit
    status, the message and ``on_error(backup)`` (default ``{"backup": backup}``) plus
    the error, for --json. The bar is drawn when ``show`` and not --json.
    """
    final, code, message = Follower(client, backup_id, operation=operation,
                                    timeout=opts.timeout,
                                    show=show and not opts.as_json).follow(finished)
    if code != EXIT_OK:
        body = on_error(final) if on_error else {"backup": final}
        raise Done(code, message, {**body, "error": {"message": message}})
    return final, message


def _fail_reason(backup: dict | None) -> str:
    return (backup or {}).get("fail_reason") or "no reason given"


# ----------------------------------------------------------------------------- commands


@click.group()
def backup() -> None:
    """Backups over the public API (credentials and endpoint as the openstack and cinder
    CLIs take them: Keystone password auth and the catalog, a token, or noauth).

    Exit status: 0 ok, 2 bad usage (or incomplete credentials), 3 API error (or Keystone
    refused the credentials), 4 API or Keystone unreachable, 5 the job ended in error,
    6 --timeout passed, 130 interrupted.
    """


@backup.command("list")
@_common
@click.option("--all-projects", is_flag=True, help="every project's (admin)")
@click.option("--status", default=None)
@click.option("--volume-id", default=None)
@click.option("--name", default=None)
@click.option("--limit", type=int, default=None)
def backup_list(all_projects, status, volume_id, name, limit, **kw) -> None:
    """List backups (every page)."""
    opts = _options(kw)

    def action(client):
        rows = client.list_backups(all_projects=all_projects, status=status,
                                   volume_id=volume_id, name=name, limit=limit)
        return rows, _list_text(rows)
    _run(opts, action)


@backup.command("show")
@_common
@click.argument("backup_ref", metavar="BACKUP")
def backup_show(backup_ref, **kw) -> None:
    """Show a backup (by ID or name) with its progress."""
    opts = _options(kw)

    def action(client):
        b = client.find_backup(backup_ref)
        return b, _show_text(b)
    _run(opts, action)


@backup.command("create")
@_common
@_wait_options
@click.argument("volume_ref", metavar="VOLUME")
@click.option("--name", default=None)
@click.option("--description", default=None)
@click.option("--incremental", is_flag=True, help="build on the volume's newest backup")
@click.option("--force", is_flag=True, help="back up an in-use volume")
@click.option("--snapshot-id", default=None, help="back up this snapshot of the volume")
@click.option("--container", default=None)
@click.option("--metadata", "metadata", multiple=True, metavar="KEY=VALUE",
              help="repeatable")
def backup_create(volume_ref, name, description, incremental, force, snapshot_id, container,
                  metadata, wait, **kw) -> None:
    """Back up VOLUME (ID or name); with --wait, follow it to the end."""
    opts = _options(kw)
    pairs = {}
    for item in metadata:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--metadata")
        pairs[key] = value

    def action(client):
        volume = client.find_volume(volume_ref)
        b = client.create_backup(volume["id"], name=name, description=description,
                                 incremental=incremental or None, force=force or None,
                                 snapshot_id=snapshot_id, container=container,
                                 metadata=pairs or None)
        if not wait:
            return b, f"backup {b['id']} is {b.get('status', 'creating')}"

        def finished(cur):
            if cur is None:
                return EXIT_JOB_ERROR, f"backup {b['id']} was deleted while it was created"
            if cur["status"] == "available":
                return EXIT_OK, f"backup {b['id']} is available"
            if cur["status"] not in BACKUP_TRANSIENT:
                return EXIT_JOB_ERROR, (f"backup {b['id']} ended {cur['status']}: "
                                        f"{_fail_reason(cur)}")
            return None
        return _wait_for(client, opts, b["id"], finished, operation="backup_create")
    _run(opts, action)


@backup.command("restore")
@_common
@_wait_options
@click.argument("backup_ref", metavar="BACKUP")
@click.option("--volume", "volume_ref", default=None,
              help="restore into this volume (ID or name); default: a new one")
@click.option("--name", default=None, help="name of the new volume")
def backup_restore(backup_ref, volume_ref, name, wait, **kw) -> None:
    """Restore BACKUP into a volume; with --wait, follow it to the end."""
    opts = _options(kw)

    def action(client):
        b = client.find_backup(backup_ref)
        volume_id = client.find_volume(volume_ref)["id"] if volume_ref else None
        result = client.restore_backup(b["id"], volume_id=volume_id, name=name)
        target = result["volume_id"]
        if not wait:
            return result, f"restoring backup {b['id']} into volume {target}"
        state: dict = {}

        def finished(cur):
            if cur is not None and cur["status"] == "restoring":
                return None
            vol = client.get_volume(target)
            state["volume"] = vol
            if vol["status"] in VOLUME_TRANSIENT:
                return None
            if vol["status"] in ("available", "in-use"):
                return EXIT_OK, f"volume {target} restored from backup {b['id']}"
            return EXIT_JOB_ERROR, (f"restore of backup {b['id']} ended with volume {target} "
                                    f"{vol['status']}")
        payload = lambda _final: {"restore": result, "volume": state.get("volume")}
        _, message = _wait_for(client, opts, b["id"], finished, operation="backup_restore",
                               on_error=payload)
        return payload(None), message
    _run(opts, action)


@backup.command("delete")
@_common
@_wait_options
@click.argument("backup_refs", metavar="BACKUP...", nargs=-1, required=True)
@click.option("--force", is_flag=True, help="delete whatever its status (admin)")
def backup_delete(backup_refs, force, wait, **kw) -> None:
    """Delete backups; with --wait, until they are gone."""
    opts = _options(kw)

    def action(client):
        deleted = []
        for ref in backup_refs:
            b = client.find_backup(ref)
            client.delete_backup(b["id"], force=force)
            deleted.append(b["id"])
        if not wait:
            return {"deleting": deleted}, "\n".join(f"deleting backup {i}" for i in deleted)
        for backup_id in deleted:
            def finished(cur, backup_id=backup_id):
                if cur is None:
                    return EXIT_OK, f"backup {backup_id} deleted"
                if cur["status"] == "deleting":
                    return None
                return EXIT_JOB_ERROR, (f"backup {backup_id} ended {cur['status']}: "
                                        f"{_fail_reason(cur)}")
            done = deleted[:deleted.index(backup_id)]
            _wait_for(client, opts, backup_id, finished, show=False,
                      on_error=lambda _final, done=done: {"deleted": done})
        return {"deleted": deleted}, "\n".join(f"backup {i} deleted" for i in deleted)
    _run(opts, action)


@backup.command("watch")
@_common
@click.argument("backup_ref", metavar="BACKUP")
@click.option("--timeout", type=float, default=0.0, show_default=True,
              help="give up after this many seconds (0: never); exit status 6")
def backup_watch(backup_ref, **kw) -> None:
    """Follow what runs on BACKUP (create, restore, verify, delete) until it ends.

    Exit status 0 when the backup ends available (or deleted), 5 when it ends in error.
    """
    opts = _options(kw)

    def action(client):
        b = client.find_backup(backup_ref)

        def finished(cur):
            if cur is None:
                return EXIT_OK, f"backup {b['id']} deleted"
            running = (cur.get("progress") or {}).get("operation")
            if cur["status"] in BACKUP_TRANSIENT or running:
                return None
            if cur["status"] == "available":
                return EXIT_OK, f"backup {b['id']} is available"
            return EXIT_JOB_ERROR, f"backup {b['id']} is {cur['status']}: {_fail_reason(cur)}"
        return _wait_for(client, opts, b["id"], finished)
    _run(opts, action)

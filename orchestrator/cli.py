"""The `orchestrator` command: run the stack, serve, work, migrate, monitor."""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

import click
from sqlalchemy import inspect

from orchestrator import errors
from orchestrator import jobs
from orchestrator import logs as log_setup
from orchestrator import storage as store_rules
from orchestrator import tokens
from orchestrator.cli_backup import backup as backup_commands
from orchestrator.cli_policies import backup_policy
from orchestrator.client import default_endpoint
from orchestrator.config import Settings
from orchestrator.config import default_host
from orchestrator.config import without_password
from orchestrator.db import get_database
from orchestrator.db import utcnow
from orchestrator.dispatch import Publisher
from orchestrator.dispatch import dispatch
from orchestrator.embedded import RedisServer
from orchestrator.migrate import upgrade
from orchestrator.models import Job
from orchestrator.serve import api_command
from orchestrator.serve import api_environment
from orchestrator.serve import without_metrics_dir
from orchestrator.serve import worker_environment
from orchestrator.supervisor import StateDirBusy
from orchestrator.supervisor import StateDirLock
from orchestrator.supervisor import Supervisor
from orchestrator.tasks import make_celery


def _env(settings: Settings) -> dict:
    env = dict(os.environ)
    env.update(settings.as_env())
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


@click.group()
def main() -> None:
    """Cinder-compatible volume backup orchestrator."""


main.add_command(backup_policy)
main.add_command(backup_commands)


@main.group()
def db() -> None:
    """Database schema commands."""


@db.command("upgrade")
@click.option("--revision", default="head")
def db_upgrade(revision: str) -> None:
    """Run the alembic migrations up to REVISION."""
    settings = Settings.load()
    upgrade(settings.database_url, revision)
    click.echo(f"database at {revision}: {without_password(settings.database_url)}")


@main.command()
@click.option("--workers", "-w", type=int, default=None, help="API worker processes")
def api(workers: int | None) -> None:
    """Serve the HTTP API with granian on ORCH_API_HOST:ORCH_API_PORT."""
    settings = Settings.load()
    os.execvpe(sys.executable, api_command(settings, workers=workers),
               {**_env(settings), **api_environment(settings)})


@main.command(context_settings={"ignore_unknown_options": True}, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def worker(args) -> None:
    """A storage-node worker: --host, --zone, --concurrency, --maintenance (see --help)."""
    # The worker is its own program (orchestrator/ never imports workers/): become it.
    os.execv(sys.executable, [sys.executable, "-m", "workers", *args])


@main.command()
def beat() -> None:
    """The periodic scheduler (run exactly one per deployment)."""
    settings = Settings.load()
    Path(settings.state_dir).mkdir(parents=True, exist_ok=True)
    os.execvpe(sys.executable, _beat_args(settings), _env(settings))


def _beat_args(settings: Settings) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "orchestrator.celery_app",
            *(["--quiet"] if settings.log_format == "json" else []), "beat",
            "-s", str(Path(settings.state_dir) / "beat-schedule"), "-l", "WARNING"]


@main.command()
@click.option("--port", default=5555, type=int)
@click.option("--address", default="127.0.0.1", show_default=True)
def flower(port: int, address: str) -> None:
    """Flower against the configured broker (FLOWER_BASIC_AUTH or OAuth to open its API)."""
    settings = Settings.load()
    log = Path(settings.log_dir) / "flower.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    click.echo(f"Flower on http://{address}:{port} (log: {log})")
    os.execvpe(sys.executable, flower_command(port, address, log), flower_env(_env(settings)))


def flower_command(port: int, address: str = "127.0.0.1", log_file: Path | None = None
                   ) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "orchestrator.celery_app", "flower",
            f"--address={address}", f"--port={port}",
            *([f"--log_file_prefix={log_file}"] if log_file else [])]


# Flower's own variables pass through as they are (FLOWER_BASIC_AUTH, FLOWER_AUTH,
# FLOWER_AUTH_PROVIDER, FLOWER_OAUTH2_KEY/SECRET/REDIRECT_URI, ...); ORCH_FLOWER_* spell the
# same with this service's prefix and win over them.
FLOWER_ALIASES = ("BASIC_AUTH", "AUTH", "AUTH_PROVIDER", "OAUTH2_KEY", "OAUTH2_SECRET",
                  "OAUTH2_REDIRECT_URI", "COOKIE_SECRET", "UNAUTHENTICATED_API")


def flower_env(env: dict) -> dict:
    """Flower's environment: authentication options passed through, and its HTTP API
    (which can shut workers down and revoke tasks) closed to the unauthenticated unless
    FLOWER_UNAUTHENTICATED_API says otherwise."""
    env = dict(env)
    for name in FLOWER_ALIASES:
        value = env.get(f"ORCH_FLOWER_{name}")
        if value is not None:
            env[f"FLOWER_{name}"] = value
    env.setdefault("FLOWER_UNAUTHENTICATED_API", "false")
    return env


@main.command()
@click.option("--host", default=None, help="storage node name (default: this machine's)")
@click.option("--zone", default="nova", show_default=True)
def run(host: str | None, zone: str) -> None:
    """Run the whole stack on one machine: Redis, API, worker, maintenance worker, beat."""

    settings = Settings.load()
    log_setup.configure_from(settings)  # the supervisor's own lines (restarts, exits)
    state = Path(settings.state_dir)
    try:  # before anything else: a second stack must not touch the first one's socket
        lock = StateDirLock(state).acquire()
    except StateDirBusy as exc:
        click.echo(f"orchestrator: {exc}", err=True)
        sys.exit(1)
    logs = Path(settings.log_dir)
    logs.mkdir(parents=True, exist_ok=True)
    host = host or default_host()
    redis = None
    if "ORCH_BROKER_URL" not in os.environ:
        redis = RedisServer(str(state), log_path=logs / "redis.log").start()
        settings.broker_url = redis.url
    upgrade(settings.database_url)
    if settings.encryption and not settings.kek:
        from orchestrator.keys import create_kek_file
        if create_kek_file(settings.kek_file):
            click.echo(f"created the key encryption key {settings.kek_file} (mode 0600): "
                       "back it up; without it no encrypted backup can be restored",
                       err=True)
    node = f"worker@{host}"
    env = without_metrics_dir(_env(settings))  # each server keeps its metrics apart
    supervisor = Supervisor(env, logging.getLogger("orchestrator.supervisor").warning)
    supervisor.add("api", api_command(settings), logs / "api.log",
                   env={**env, **api_environment(settings)})
    supervisor.add("worker", [sys.executable, "-m", "workers", "--host", host, "--zone", zone],
                   logs / "worker.log", env={**env, **worker_environment(settings, node)})
    # One metrics port per machine: the storage worker's (the maintenance worker's health
    # shows in the API's service list as cinder-scheduler).
    supervisor.add("maintenance", [sys.executable, "-m", "workers", "--maintenance",
                                   "--host", host, "--metrics-port", "0"],
                   logs / "maintenance.log")
    supervisor.add("beat", _beat_args(settings), logs / "beat.log")

    stopping = {"flag": False}

    def stop(signum=None, frame=None):
        stopping["flag"] = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    endpoint = default_endpoint({}, settings)
    click.echo(f"""
Backup orchestrator running (state in {state}, logs in {logs}):
  redis        {without_password(settings.broker_url)}{'' if redis else ' (external)'}
  database     {without_password(settings.database_url)}
  api          {endpoint}   pid {supervisor.pid('api')}
  worker       host {host}, zone {zone}   pid {supervisor.pid('worker')}
  maintenance  pid {supervisor.pid('maintenance')}
  beat         pid {supervisor.pid('beat')}

{try_it(settings, endpoint)}
A process that exits is restarted; Ctrl-C stops everything.
""")
    try:
        while not stopping["flag"]:
            supervisor.poll()
            time.sleep(0.2)
    finally:
        click.echo("stopping...")
        _stop_jobs(settings, node, supervisor)
        if redis:
            redis.stop()
        lock.release()
        click.echo("stopped.")


def try_it(settings: Settings, endpoint: str) -> str:
    """The banner's first steps, in the commands that work in the configured auth mode."""
    if settings.auth == "token":
        return f"""Every call needs an API token (ORCH_AUTH=token). Issue one, then use it:
  .venv/bin/orchestrator token create --project demo --user demo --role member
  export OS_TOKEN=<the token printed> OS_PROJECT_ID=demo OS_ENDPOINT={endpoint}
  .venv/bin/cinder --os-auth-type admin_token --os-endpoint {endpoint} create --name vol1 1
  .venv/bin/orchestrator backup create vol1 --name b1 --wait
  .venv/bin/orchestrator backup list
  .venv/bin/orchestrator backup restore b1 --wait
"""
    return f"""Try it with the cinder CLI (from this project's virtualenv):
  export OS_AUTH_TYPE=noauth OS_USER_ID=demo OS_PROJECT_ID=demo CINDER_ENDPOINT={endpoint}
  .venv/bin/cinder create --name vol1 1
  .venv/bin/cinder backup-create --name b1 vol1
  .venv/bin/cinder backup-list
  .venv/bin/cinder backup-restore --name restored b1
or follow a backup's progress: .venv/bin/orchestrator backup create vol1 --wait
"""


def _stop_jobs(settings: Settings, node: str, supervisor: Supervisor) -> None:
    """Stop the stack so that no job is left in a transient state: running jobs are asked
    to stop (they end cancelled, their sources put back), the worker goes first, and
    whatever it could not end in time is failed here."""
    db = get_database(settings.database_url)
    try:
        with db.scope() as session:
            asked = jobs.cancel_leased_by(session, node)
        if asked:
            click.echo(f"asked {asked} running job(s) to stop", err=True)
    except Exception as exc:  # the database may be what failed: stop the processes anyway
        click.echo(f"could not ask the running jobs to stop: {exc}", err=True)
    supervisor.stop(timeout=20.0, order=("worker", "maintenance", "beat", "api"))
    try:
        with db.scope() as session:
            failed, _ = jobs.fail_leased_by(session, node, "the stack was stopped while the "
                                            "{what} ran; retry it", now=utcnow())
        if failed:
            click.echo(f"failed {len(failed)} job(s) the worker could not end in time",
                       err=True)
    except Exception as exc:
        click.echo(f"could not end the jobs left running: {exc}", err=True)


# ----------------------------------------------------------------------------- API tokens


def _parse_duration(text: str) -> float:
    """Seconds from `90`, `90s`, `15m`, `12h`, `30d`."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = text.strip().lower()
    scale = units.get(text[-1:])
    number = text[:-1] if scale else text
    try:
        value = float(number) * (scale or 1)
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is not a duration such as 3600, 45m, 12h or 30d") from None
    if value <= 0:
        raise click.BadParameter("the duration must be positive")
    return value


def _token_db():

    settings = Settings.load()
    db = get_database(settings.database_url)
    if not inspect(db.engine).has_table("api_tokens"):
        raise click.ClickException(f"{without_password(settings.database_url)} has no "
                                   "api_tokens table; run "
                                   "`orchestrator db upgrade` first.")
    return db


def _token_row(token, now) -> dict:
    iso = (lambda v: v.strftime("%Y-%m-%dT%H:%M:%S") + "Z" if v else None)
    return {"id": token.id, "user_id": token.user_id, "project_id": token.project_id,
            "roles": list(token.role_list), "state": tokens.state(token, now=now),
            "created_at": iso(token.created_at), "expires_at": iso(token.expires_at),
            "revoked_at": iso(token.revoked_at), "description": token.description}


@main.group()
def token() -> None:
    """API tokens for ORCH_AUTH=token (sent by clients as X-Auth-Token)."""


@token.command("create")
@click.option("--project", required=True, help="project the token acts in")
@click.option("--user", required=True, help="user id recorded on what the token creates")
@click.option("--role", "roles", multiple=True, required=True,
              type=click.Choice(["admin", "member", "reader"], case_sensitive=False),
              help="admin, member or reader (repeatable)")
@click.option("--expires-in", default=None, help="lifetime: seconds, or 45m, 12h, 30d")
@click.option("--description", default=None)
@click.option("--json", "as_json", is_flag=True, help="print JSON (includes the secret)")
def token_create(project: str, user: str, roles: tuple[str, ...], expires_in: str | None,
                 description: str | None, as_json: bool) -> None:
    """Issue a token; its secret is printed once and never stored."""

    db = _token_db()
    now = utcnow()
    expires_at = now + dt.timedelta(seconds=_parse_duration(expires_in)) if expires_in else None
    try:
        with db.scope() as s:
            row, secret = tokens.issue(s, user_id=user, project_id=project, roles=list(roles),
                                       now=now, expires_at=expires_at, description=description)
            info = _token_row(row, now)
    except errors.OrchestratorError as exc:
        raise click.ClickException(exc.message) from None
    if as_json:
        click.echo(json.dumps({**info, "token": secret}, indent=2))
        return
    click.echo(f"token:    {secret}\nid:       {info['id']}\nuser:     {user}\n"
               f"project:  {project}\nroles:    {','.join(info['roles'])}\n"
               f"expires:  {info['expires_at'] or 'never'}\n"
               "Keep the token secret: it is shown only now.")


@token.command("list")
@click.option("--project", default=None, help="only this project's tokens")
@click.option("--all", "include_inactive", is_flag=True, help="include expired and revoked")
@click.option("--json", "as_json", is_flag=True)
def token_list(project: str | None, include_inactive: bool, as_json: bool) -> None:
    """List tokens (never their secrets)."""

    db = _token_db()
    now = utcnow()
    with db.scope(write=False) as s:
        rows = [_token_row(t, now) for t in tokens.list_tokens(
            s, now=now, project_id=project, include_inactive=include_inactive)]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    header = ("id", "user_id", "project_id", "roles", "state", "expires_at")
    table = [header] + [(r["id"], r["user_id"], r["project_id"], ",".join(r["roles"]),
                         r["state"], r["expires_at"] or "never") for r in rows]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    for row in table:
        click.echo("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=False)).rstrip())


@token.command("revoke")
@click.argument("token_ids", nargs=-1, required=True)
def token_revoke(token_ids: tuple[str, ...]) -> None:
    """Revoke tokens by id; requests with them get 401 from now on."""
    db = _token_db()
    failed = False
    for token_id in token_ids:
        try:
            with db.scope() as s:
                tokens.revoke(s, token_id, now=utcnow())
            click.echo(f"revoked {token_id}")
        except errors.NotFound as exc:
            click.echo(exc.message, err=True)
            failed = True
    if failed:
        raise SystemExit(1)


@main.group()
def storage() -> None:
    """The backup store: garbage collection and reference counts (admin)."""


@storage.command("gc")
@click.option("--scope", type=click.Choice(["full", "released"]), default="full",
              show_default=True, help="released: only what deletes left; full: also sweep")
@click.option("--host", default=None, help="the backup host whose store to collect")
@click.option("--zone", default=None, help="any live backup host of this zone")
@click.option("--wait/--no-wait", default=True, show_default=True)
def storage_gc(scope: str, host: str | None, zone: str | None, wait: bool) -> None:
    """Queue a garbage collection of a backup host's store and print what it freed."""
    settings = Settings.load()
    database = get_database(settings.database_url)
    try:
        with database.scope() as session:
            job, new = store_rules.start_gc(session, settings, now=utcnow(), scope=scope,
                                            host=host, zone=zone)
            job_id = job.id
    except errors.OrchestratorError as exc:
        raise click.ClickException(str(exc)) from None
    if new:
        dispatch(database, Publisher(make_celery(settings)), [job], undo_on_failure=False)
    click.echo(f"collection {job_id} {'queued' if new else 'already active'} on {job.host}")
    while wait:
        with database.scope(write=False) as session:
            row = session.get(Job, job_id)
            state, result, error = row.state, row.result, row.error
        if state in ("succeeded", "failed", "cancelled"):
            click.echo(json.dumps({"id": job_id, "status": state, "result": result,
                                   "error": error}))
            if state != "succeeded":
                raise SystemExit(1)
            return
        time.sleep(0.5)


@storage.command("rebuild-refs", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def storage_rebuild_refs(args) -> None:
    """Set every backup's references to what its manifest in the store names
    (`python -m workers.rebuild`, run on a backup host; --dry-run reports only)."""
    os.execv(sys.executable, [sys.executable, "-m", "workers.rebuild", *args])


@main.command("keystone-register")
@click.option("--url", required=True,
              help="the API's v3 URL as clients reach it, e.g. "
                   "'http://api.example:8776/v3/%(project_id)s'")
@click.option("--region", default="RegionOne", show_default=True, envvar="OS_REGION_NAME")
@click.option("--interface", "interfaces", multiple=True,
              type=click.Choice(["public", "internal", "admin"]),
              help="endpoint interfaces (default: all three)")
@click.option("--os-auth-url", envvar="OS_AUTH_URL", required=True)
@click.option("--os-username", envvar="OS_USERNAME", required=True)
@click.option("--os-password", envvar="OS_PASSWORD", required=True,
              help="read from OS_PASSWORD (never printed)")
@click.option("--os-project-name", envvar="OS_PROJECT_NAME", required=True)
@click.option("--os-user-domain-name", envvar="OS_USER_DOMAIN_NAME", default="Default")
@click.option("--os-project-domain-name", envvar="OS_PROJECT_DOMAIN_NAME", default="Default")
def keystone_register(url: str, region: str, interfaces: tuple[str, ...], os_auth_url: str,
                      os_username: str, os_password: str, os_project_name: str,
                      os_user_domain_name: str, os_project_domain_name: str) -> None:
    """Register this service in Keystone's catalog (block-storage and volumev3).

    Authenticates like the openstack CLI (OS_* variables) as a Keystone admin; running
    it again updates the endpoints' URL in place.
    """
    from keystoneauth1 import exceptions as ks_errors

    from orchestrator import keystone

    sess = keystone.password_session(os_auth_url, os_username, os_password, os_project_name,
                                     os_user_domain_name, os_project_domain_name)
    try:
        done = keystone.register(sess, url, region, interfaces or keystone.INTERFACES)
    except ks_errors.ClientException as exc:
        raise click.ClickException(f"Keystone refused: {exc}") from None
    for r in done:
        click.echo(f"{r.service_type:14} {r.interface:9} {'created' if r.created else 'kept':8}"
                   f" {r.endpoint_id}  {r.url}")


@main.group()
def keys() -> None:
    """Per-project encryption keys: rotate data keys, re-wrap under a new KEK."""


@keys.command("rotate")
@click.option("--project", required=True, help="the project whose data key to rotate")
def keys_rotate(project: str) -> None:
    """New data key for the project's new backups (old ones keep theirs)."""
    from orchestrator import keys as keymod
    from orchestrator.db import utcnow
    settings = Settings.load()
    try:
        provider = keymod.kek_provider(settings)
        with get_database(settings.database_url).scope() as session:
            row = keymod.rotate(session, provider, project, utcnow())
            key_id = row.key_id
    except keymod.KeyError_ as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"project {project}: new data key {key_id}")


@keys.command("write-records", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def keys_write_records(args) -> None:
    """Write every project's key record (its wrapped keys) from SQL to this backup host's
    store (`python -m workers.keyrecords write`; --project P for one): after a rewrap or a
    rotation. A backup writes its project's record anyway; `orchestrator storage
    rebuild-refs` puts lost project_keys rows back from the records."""
    os.execv(sys.executable, [sys.executable, "-m", "workers.keyrecords", "write", *args])


@keys.command("rewrap")
@click.option("--new-kek-file", required=True, type=click.Path(exists=True, dir_okay=False),
              help="file holding the new KEK (base64 of 32 bytes)")
def keys_rewrap(new_kek_file: str) -> None:
    """Re-wrap every stored key under a new KEK (no backup data is touched); then
    point ORCH_KEK_FILE (or ORCH_KEK) at the new KEK."""
    from orchestrator import keys as keymod
    settings = Settings.load()
    try:
        old = keymod.kek_provider(settings)
        new = keymod.FileKekProvider(new_kek_file)
        with get_database(settings.database_url).scope() as session:
            changed = keymod.rewrap(session, old, new)
    except keymod.KeyError_ as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"re-wrapped {changed} key(s) under the new key encryption key")

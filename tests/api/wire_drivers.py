"""One scenario, three unmodified clients: python-cinderclient, the `cinder` CLI, openstacksdk.

Each driver exposes the same small vocabulary (create a volume, back it up,
list, export, restore, ...) implemented only with its client's public
surface, so ``run_scenario`` proves that every step works through every
client. Drivers return plain dicts so the scenario can compare them.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path


def wait_for(fetch, want: set[str], *, timeout: float = 90.0, what: str = "") -> dict | None:
    """Poll ``fetch()`` (a dict with ``status``, or None once gone) until its status is wanted."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fetch()
        if last is None:
            if "gone" in want:
                return None
        elif last["status"] in want:
            return last
        time.sleep(0.15)
    raise AssertionError(f"{what} stuck at {last and last.get('status')!r}, wanted {want}")


# ----------------------------------------------------------------------------- cinderclient


class CinderclientDriver:
    """python-cinderclient's Python API on a keystoneauth session."""

    name = "cinderclient"

    def __init__(self, stack, token: str, project: str, *, project_in_url: bool):
        from cinderclient import client as cinder_client
        from keystoneauth1 import session as ksa_session
        from keystoneauth1 import token_endpoint
        endpoint = stack.endpoint
        if stack.mode == "noauth":
            from cinderclient.contrib import noauth
            user, _, proj = token.partition(":")
            auth = noauth.CinderNoAuthPlugin(user_id=user, project_id=proj, endpoint=endpoint)
            kwargs = {} if project_in_url else {"os_endpoint": endpoint}
        else:
            url = f"{endpoint}/{project}" if project_in_url else endpoint
            auth = token_endpoint.Token(url, token)
            kwargs = {}
        self.sess = ksa_session.Session(auth=auth, timeout=60)
        self.c = cinder_client.Client("3.71", session=self.sess, **kwargs)
        from cinderclient import exceptions
        self.NotFound = exceptions.NotFound
        self.ClientException = exceptions.ClientException

    def create_volume(self, name: str, size: int = 1) -> str:
        return self.c.volumes.create(size, name=name).id

    def volume(self, vid: str) -> dict | None:
        try:
            return self.c.volumes.get(vid)._info
        except self.NotFound:
            return None

    def create_snapshot(self, volume_id: str, name: str) -> str:
        return self.c.volume_snapshots.create(volume_id, name=name).id

    def snapshot(self, sid: str) -> dict | None:
        try:
            return self.c.volume_snapshots.get(sid)._info
        except self.NotFound:
            return None

    def create_backup(self, volume_id: str, name: str, *, incremental: bool = False,
                      snapshot_id: str | None = None, metadata: dict | None = None) -> str:
        return self.c.backups.create(volume_id, name=name, incremental=incremental,
                                     snapshot_id=snapshot_id, metadata=metadata).id

    def backup(self, bid: str) -> dict | None:
        try:
            return self.c.backups.get(bid)._info
        except self.NotFound:
            return None

    def list_backups(self, *, sort: str | None = None, **filters) -> list[dict]:
        return [b._info for b in self.c.backups.list(search_opts=filters or None, sort=sort)]

    def update_backup(self, bid: str, **fields) -> None:
        self.c.backups.update(bid, **fields)

    def export(self, bid: str) -> tuple[str, str]:
        rec = self.c.backups.export_record(bid)
        return rec["backup_service"], rec["backup_url"]

    def import_(self, service: str, url: str) -> str:
        return self.c.backups.import_record(service, url)["id"]

    def delete_backup(self, bid: str) -> None:
        self.c.backups.delete(bid)

    def restore(self, bid: str, *, volume_id: str | None = None, name: str | None = None) -> str:
        return self.c.restores.restore(bid, volume_id=volume_id, name=name).volume_id

    def reset_state(self, bid: str, state: str) -> None:
        self.c.backups.reset_state(bid, state)

    def force_delete(self, bid: str) -> None:
        self.c.backups.delete(bid, force=True)

    def quota(self, project: str, usage: bool = False) -> dict:
        return self.c.quotas.get(project, usage=usage)._info

    def update_quota(self, project: str, **limits) -> None:
        self.c.quotas.update(project, **limits)

    def services(self) -> list[dict]:
        return [s._info for s in self.c.services.list()]

    def zones(self) -> list[dict]:
        return [z._info for z in self.c.availability_zones.list(detailed=False)]


# ----------------------------------------------------------------------------- cinder CLI


class CliDriver:
    """The `cinder` command as a subprocess, one process per step."""

    name = "cli"

    def __init__(self, stack, token: str, project: str, home: Path):
        self.bin = str(Path(sys.executable).parent / "cinder")
        base = {k: v for k, v in os.environ.items() if not k.startswith(("OS_", "CINDER_"))}
        base["HOME"] = str(home)  # the CLI writes a completion cache under ~/.cache
        self.pre: list[str] = []
        if stack.mode == "noauth":
            user, _, proj = token.partition(":")
            self.env = {**base, "OS_AUTH_TYPE": "noauth", "OS_USER_ID": user,
                        "OS_PROJECT_ID": proj, "CINDER_ENDPOINT": stack.endpoint}
        else:
            # keystoneauth's admin_token plugin sends X-Auth-Token: $OS_TOKEN. It must be
            # chosen with --os-auth-type, not OS_AUTH_TYPE: from the environment its
            # `endpoint` option would clash with the CLI's own --os-endpoint. cinderclient
            # insists on a project id; the server uses the token's.
            self.pre = ["--os-auth-type", "admin_token", "--os-endpoint", stack.endpoint]
            self.env = {**base, "OS_TOKEN": token, "OS_PROJECT_ID": project}

    def run(self, *args: str, check: bool = True) -> str:
        out = subprocess.run([self.bin, *self.pre, *args], env=self.env, capture_output=True,
                             text=True, timeout=90)
        if check:
            assert out.returncode == 0, f"cinder {' '.join(args)}:\n{out.stderr}{out.stdout}"
        return out.stdout if check else out.stdout + out.stderr

    @staticmethod
    def table(text: str) -> dict:
        """A `| Property | Value |` table as a dict."""
        out = {}
        for line in text.splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) == 2 and line.startswith("|") and cells[0] not in ("Property", "Field"):
                out[cells[0]] = cells[1]
        return out

    @staticmethod
    def rows(text: str) -> list[dict]:
        lines = [ln for ln in text.splitlines() if ln.startswith("|")]
        if not lines:
            return []
        header = [c.strip() for c in lines[0].strip().strip("|").split("|")]
        return [dict(zip(header, [c.strip() for c in ln.strip().strip("|").split("|")],
                         strict=False))
                for ln in lines[1:]]

    def _show(self, command: str, rid: str) -> dict | None:
        out = subprocess.run([self.bin, *self.pre, command, rid], env=self.env, capture_output=True,
                             text=True, timeout=90)
        if out.returncode != 0:
            if "ERROR: No " in out.stderr and "with a name or ID of" in out.stderr:
                return None
            raise AssertionError(f"cinder {command} {rid}: {out.stderr}")
        return self.table(out.stdout)

    def create_volume(self, name: str, size: int = 1) -> str:
        return self.table(self.run("create", "--name", name, str(size)))["id"]

    def volume(self, vid: str) -> dict | None:
        return self._show("show", vid)

    def create_snapshot(self, volume_id: str, name: str) -> str:
        return self.table(self.run("snapshot-create", "--name", name, volume_id))["id"]

    def snapshot(self, sid: str) -> dict | None:
        return self._show("snapshot-show", sid)

    def create_backup(self, volume_id: str, name: str, *, incremental: bool = False,
                      snapshot_id: str | None = None, metadata: dict | None = None) -> str:
        args = ["backup-create", "--name", name]
        if incremental:
            args.append("--incremental")
        if snapshot_id:
            args += ["--snapshot-id", snapshot_id]
        if metadata:
            args += ["--metadata", *[f"{k}={v}" for k, v in metadata.items()]]
        return self.table(self.run(*args, volume_id))["id"]

    def backup(self, bid: str) -> dict | None:
        info = self._show("backup-show", bid)
        if info is not None:
            info["is_incremental"] = info.get("is_incremental") == "True"
            if info.get("metadata"):
                info["metadata"] = json.loads(info["metadata"].replace("'", '"'))
        return info

    def list_backups(self, *, sort: str | None = None, **filters) -> list[dict]:
        args = ["backup-list"]
        for key, value in filters.items():
            args += [f"--{key.replace('_', '-')}", value]
        if sort:
            args += ["--sort", sort]
        return [{"id": r["ID"], "name": r["Name"], "status": r["Status"],
                 "volume_id": r["Volume ID"]} for r in self.rows(self.run(*args))]

    def update_backup(self, bid: str, **fields) -> None:
        args = ["backup-update"]
        if "name" in fields:
            args += ["--name", fields["name"]]
        if "description" in fields:
            args += ["--description", fields["description"]]
        if "metadata" in fields:
            args += ["--metadata", *[f"{k}={v}" for k, v in fields["metadata"].items()]]
        self.run(*args, bid)

    def export(self, bid: str) -> tuple[str, str]:
        rec = self.table(self.run("backup-export", bid))
        return rec["backup_service"], rec["backup_url"]

    def import_(self, service: str, url: str) -> str:
        return self.table(self.run("backup-import", service, url))["id"]

    def delete_backup(self, bid: str) -> None:
        self.run("backup-delete", bid)

    def restore(self, bid: str, *, volume_id: str | None = None, name: str | None = None) -> str:
        args = ["backup-restore"]
        if volume_id:
            args += ["--volume", volume_id]
        if name:
            args += ["--name", name]
        return self.table(self.run(*args, bid))["volume_id"]

    def reset_state(self, bid: str, state: str) -> None:
        self.run("backup-reset-state", "--state", state, bid)

    def force_delete(self, bid: str) -> None:
        self.run("backup-delete", "--force", bid)

    def quota(self, project: str, usage: bool = False) -> dict:
        if not usage:
            return {k: int(v) for k, v in self.table(self.run("quota-show", project)).items()
                    if v.lstrip("-").isdigit()}
        return {r["Type"]: {"in_use": int(r["In_use"]), "limit": int(r["Limit"])}
                for r in self.rows(self.run("quota-usage", project))}

    def update_quota(self, project: str, **limits) -> None:
        args = ["quota-update"]
        for key, value in limits.items():
            args += [f"--{key.replace('_', '-')}", str(value)]
        self.run(*args, project)

    def services(self) -> list[dict]:
        return [{"binary": r["Binary"], "host": r["Host"], "state": r["State"],
                 "status": r["Status"], "zone": r["Zone"]}
                for r in self.rows(self.run("service-list"))]

    def zones(self) -> list[dict]:
        return [{"zoneName": r["Name"], "zoneState": {"available": r["Status"] == "available"}}
                for r in self.rows(self.run("availability-zone-list"))]


# ----------------------------------------------------------------------------- openstacksdk


class SdkDriver:
    """openstacksdk's block_storage proxy (admin_token auth + endpoint override)."""

    name = "openstacksdk"

    def __init__(self, stack, token: str, project: str):
        import openstack
        from openstack import exceptions
        self.conn = openstack.connect(
            auth_type="admin_token",
            auth={"endpoint": stack.endpoint, "token": token},
            block_storage_endpoint_override=stack.endpoint,
            block_storage_api_version="3",
            load_yaml_config=False, load_envvars=False,
        )
        self.bs = self.conn.block_storage
        self.NotFound = exceptions.NotFoundException

    @staticmethod
    def _d(resource) -> dict:
        return resource.to_dict(computed=False)

    def create_volume(self, name: str, size: int = 1) -> str:
        return self.bs.create_volume(size=size, name=name).id

    def volume(self, vid: str) -> dict | None:
        try:
            return self._d(self.bs.get_volume(vid))
        except self.NotFound:
            return None

    def create_snapshot(self, volume_id: str, name: str) -> str:
        return self.bs.create_snapshot(volume_id=volume_id, name=name).id

    def snapshot(self, sid: str) -> dict | None:
        try:
            return self._d(self.bs.get_snapshot(sid))
        except self.NotFound:
            return None

    def create_backup(self, volume_id: str, name: str, *, incremental: bool = False,
                      snapshot_id: str | None = None, metadata: dict | None = None) -> str:
        attrs = {"volume_id": volume_id, "name": name}
        if incremental:
            attrs["is_incremental"] = True
        if snapshot_id:
            attrs["snapshot_id"] = snapshot_id
        if metadata:
            attrs["metadata"] = metadata
        return self.bs.create_backup(**attrs).id

    def backup(self, bid: str) -> dict | None:
        try:
            return self._d(self.bs.get_backup(bid))
        except self.NotFound:
            return None

    def list_backups(self, *, sort: str | None = None, **filters) -> list[dict]:
        query = dict(filters)
        if sort:
            query["sort"] = sort
        return [self._d(b) for b in self.bs.backups(details=True, **query)]

    def update_backup(self, bid: str, **fields) -> None:
        self.bs.update_backup(bid, **fields)

    def export(self, bid: str) -> tuple[str, str]:
        rec = self.bs.export_backup(bid)["backup-record"]
        return rec["backup_service"], rec["backup_url"]

    def import_(self, service: str, url: str) -> str:
        # Backup.import_record of openstacksdk 4.22 posts to the wrong path (contract §9):
        # use the SDK's own adapter for the documented call instead.
        r = self.bs.post("/backups/import_record", json={
            "backup-record": {"backup_service": service, "backup_url": url}},
            microversion="3.64")
        assert r.status_code == 201, r.text
        return r.json()["backup"]["id"]

    def delete_backup(self, bid: str) -> None:
        self.bs.delete_backup(bid, ignore_missing=False)

    def restore(self, bid: str, *, volume_id: str | None = None, name: str | None = None) -> str:
        return self.bs.restore_backup(bid, volume=volume_id, name=name).volume_id

    def reset_state(self, bid: str, state: str) -> None:
        self.bs.reset_backup_status(bid, state)

    def force_delete(self, bid: str) -> None:
        self.bs.delete_backup(bid, force=True)

    def quota(self, project: str, usage: bool = False) -> dict:
        qs = self.bs.get_quota_set(project, usage=usage)
        if usage:
            return {k: {"in_use": v, "limit": qs.to_dict()[k]}
                    for k, v in (qs.usage or {}).items()}
        return {k: v for k, v in qs.to_dict(computed=False).items() if isinstance(v, int)}

    def update_quota(self, project: str, **limits) -> None:
        self.bs.update_quota_set(project, **limits)

    def services(self) -> list[dict]:
        return [self._d(s) for s in self.bs.services()]

    def zones(self) -> list[dict]:
        return [{"zoneName": z.name, "zoneState": z.state}
                for z in self.bs.availability_zones()]

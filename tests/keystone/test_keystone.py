"""ORCH_AUTH=keystone against a real Keystone, through unmodified clients.

The openstack CLI and python-cinderclient authenticate with a password and find
the API in Keystone's catalog; auth_token validates every token with Keystone.
A member runs the full backup scenario, a reader may only look, another
project's backups are 404, an admin exports, imports and resets, expired and
revoked tokens are 401, and the operator's policy file changes who may create.
"""
from __future__ import annotations

import datetime as dt
import json
import subprocess
import time

import pytest
import requests
from cinderclient import exceptions as cinder_errors

pytestmark = [pytest.mark.slow,
              pytest.mark.filterwarnings("ignore::Warning:openstack"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def osc(cloud, user: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """The unmodified `openstack` command as ``user``."""
    out = subprocess.run([cloud.keystone.bin("openstack"), *args], env=cloud.os_env(user),
                         capture_output=True, text=True, timeout=120)
    if check:
        assert out.returncode == 0, f"openstack {' '.join(args)}:\n{out.stderr}{out.stdout}"
    return out


def osc_json(cloud, user: str, *args: str):
    return json.loads(osc(cloud, user, *args, "-f", "json").stdout)


def wait_until(fetch, done, what: str, timeout: float = 90.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fetch()
        if done(last):
            return last
        time.sleep(0.5)
    raise AssertionError(f"{what}: still {last}")


def available_volume(cloud, user: str, name: str) -> str:
    c = cloud.cinder(user)
    vol = c.volumes.create(1, name=name)
    wait_until(lambda: c.volumes.get(vol.id).status, lambda s: s == "available", name)
    return vol.id


def available_backup(c, volume_id: str, name: str) -> str:
    b = c.backups.create(volume_id, name=name)
    status = wait_until(lambda: c.backups.get(b.id).status,
                        lambda s: s in ("available", "error"), name)
    assert status == "available"
    return b.id


def test_the_catalog_leads_clients_to_the_api(cloud):
    catalog = cloud.session("alice").auth.get_access(cloud.session("alice")).service_catalog
    for service_type in ("block-storage", "volumev3"):
        url = catalog.url_for(service_type=service_type, interface="public")
        assert url == f"{cloud.api.url}/v3/{cloud.projects['alpha']}"
    # A request with no token is refused in Cinder's fault format; discovery is open.
    r = requests.get(f"{cloud.api.url}/v3/{cloud.projects['alpha']}/backups", timeout=30)
    assert r.status_code == 401 and "unauthorized" in r.json()
    assert requests.get(f"{cloud.api.url}/v3", timeout=30).status_code == 200


def test_keystone_register_is_idempotent_and_needs_an_admin(cloud):
    import sys
    from pathlib import Path
    command = [str(Path(sys.executable).parent / "orchestrator"), "keystone-register",
               "--url", f"{cloud.api.url}/v3/%(project_id)s", "--interface", "public"]
    admin = {**cloud.os_env("alice"), "OS_USERNAME": "admin",
             "OS_PASSWORD": "bootstrap-secret", "OS_PROJECT_NAME": "admin"}
    out = subprocess.run(command, env=admin, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("kept") == 2 and "created" not in out.stdout, out.stdout
    refused = subprocess.run(command, env=cloud.os_env("alice"), capture_output=True,
                             text=True, timeout=120)
    assert refused.returncode != 0 and "Keystone refused" in refused.stderr, refused.stderr
    assert "pw-alice" not in refused.stderr + refused.stdout


def test_member_full_scenario_with_the_openstack_cli(cloud):
    # Every step through `openstack`; the waits in between poll with cinderclient, which
    # costs no process start.
    c = cloud.cinder("alice")
    vol = osc_json(cloud, "alice", "volume", "create", "--size", "1", "osc-vol")
    wait_until(lambda: c.volumes.get(vol["id"]).status, lambda s: s == "available", "osc-vol")
    made = osc_json(cloud, "alice", "volume", "backup", "create", "--name", "osc-full",
                    "--description", "through the catalog", vol["id"])
    backup_id = made["id"]
    wait_until(lambda: c.backups.get(backup_id).status, lambda s: s in ("available", "error"),
               "osc-full")
    shown = osc_json(cloud, "alice", "volume", "backup", "show", backup_id)
    assert shown["status"] == "available" and shown["name"] == "osc-full"
    assert shown["volume_id"] == vol["id"] and shown["size"] == 1
    assert shown["description"] == "through the catalog"
    listed = osc_json(cloud, "alice", "volume", "backup", "list")
    assert backup_id in {b["ID"] for b in listed}

    osc(cloud, "alice", "volume", "backup", "restore", backup_id, vol["id"], "--force")
    wait_until(lambda: (c.backups.get(backup_id).status, c.volumes.get(vol["id"]).status),
               lambda s: s == ("available", "available"), "restore of osc-full")

    osc(cloud, "alice", "volume", "backup", "delete", backup_id)
    wait_until(lambda: backup_id in {b.id for b in c.backups.list()}, lambda x: not x,
               "osc-full deleted")
    assert osc(cloud, "alice", "volume", "backup", "show", backup_id, check=False).returncode
    assert backup_id not in {b["ID"] for b in
                             osc_json(cloud, "alice", "volume", "backup", "list")}


def test_member_scenario_with_cinderclient_and_the_cinder_cli(cloud):
    import sys
    from pathlib import Path
    c = cloud.cinder("alice")
    vol = available_volume(cloud, "alice", "cc-vol")
    backup_id = available_backup(c, vol, "cc-full")
    assert backup_id in {b.id for b in c.backups.list()}
    c.backups.update(backup_id, name="cc-renamed")
    assert c.backups.get(backup_id).name == "cc-renamed"
    restored = c.restores.restore(backup_id, name="cc-restored")
    wait_until(lambda: c.volumes.get(restored.volume_id).status, lambda s: s == "available",
               "restored volume")
    wait_until(lambda: c.backups.get(backup_id).status, lambda s: s == "available", "cc-full")
    # the `cinder` shell, password auth from OS_* alone
    cinder = str(Path(sys.executable).parent / "cinder")
    out = subprocess.run([cinder, "backup-list"], env=cloud.os_env("alice"),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and backup_id in out.stdout, out.stderr
    c.backups.delete(backup_id)
    wait_until(lambda: backup_id in {b.id for b in c.backups.list()}, lambda x: not x,
               "cc-full deleted")


def test_a_reader_may_list_and_show_but_not_create(cloud):
    member = cloud.cinder("alice")
    vol = available_volume(cloud, "alice", "reader-vol")
    backup_id = available_backup(member, vol, "reader-sees")
    reader = cloud.cinder("rita")
    assert backup_id in {b.id for b in reader.backups.list()}
    assert reader.backups.get(backup_id).name == "reader-sees"
    with pytest.raises(cinder_errors.Forbidden):
        reader.backups.create(vol, name="not-allowed")
    with pytest.raises(cinder_errors.Forbidden):
        reader.backups.delete(backup_id)
    listed = osc_json(cloud, "rita", "volume", "backup", "list")
    assert backup_id in {b["ID"] for b in listed}
    assert osc_json(cloud, "rita", "volume", "backup", "show", backup_id)["id"] == backup_id
    out = osc(cloud, "rita", "volume", "backup", "create", "--name", "nope", vol, check=False)
    assert out.returncode != 0 and "403" in out.stderr, out.stderr
    assert {b.name for b in member.backups.list()} >= {"reader-sees"}
    assert "not-allowed" not in {b.name for b in member.backups.list()}


def test_another_projects_backups_are_404(cloud):
    alice = cloud.cinder("alice")
    vol = available_volume(cloud, "alice", "private-vol")
    backup_id = available_backup(alice, vol, "private")
    bob = cloud.cinder("bob")
    with pytest.raises(cinder_errors.NotFound):
        bob.backups.get(backup_id)
    with pytest.raises(cinder_errors.NotFound):
        bob.backups.delete(backup_id)
    assert backup_id not in {b.id for b in bob.backups.list()}
    out = osc(cloud, "bob", "volume", "backup", "show", backup_id, check=False)
    assert out.returncode != 0
    assert alice.backups.get(backup_id).status == "available"


def test_an_admin_exports_imports_and_resets(cloud):
    alice = cloud.cinder("alice")
    vol = available_volume(cloud, "alice", "admin-vol")
    backup_id = available_backup(alice, vol, "admin-target")
    with pytest.raises(cinder_errors.Forbidden):
        alice.backups.export_record(backup_id)
    # Headers a caller sends in auth_token's name are dropped, never believed.
    spoofed = requests.get(
        f"{cloud.api.url}/v3/{cloud.projects['alpha']}/backups/{backup_id}/export_record",
        headers={"X-Auth-Token": cloud.session("alice").get_token(), "X-Roles": "admin",
                 "X-Identity-Status": "Confirmed", "X-User-Id": "ada"}, timeout=30)
    assert spoofed.status_code == 403, spoofed.text
    admin = cloud.cinder("ada")
    record = admin.backups.export_record(backup_id)
    assert record["backup_service"] and record["backup_url"]
    admin.backups.delete(backup_id)
    wait_until(lambda: backup_id in {b.id for b in admin.backups.list()}, lambda x: not x,
               "admin-target deleted")
    imported_id = admin.backups.import_record(record["backup_service"],
                                              record["backup_url"])["id"]
    assert imported_id == backup_id  # the record brings the backup back under its id
    # The delete removed the data, so the import then fails on it, as Cinder's would
    # (tests/api/test_wire_import.py imports a live one).
    got = wait_until(lambda: admin.backups.get(imported_id), lambda b: b.status in
                     ("available", "error"), "imported backup")
    assert got.status == "error" and got.name == "admin-target"
    with pytest.raises(cinder_errors.Forbidden):
        alice.backups.delete(imported_id, force=True)
    admin.backups.delete(imported_id, force=True)
    wait_until(lambda: imported_id in {b.id for b in alice.backups.list()}, lambda x: not x,
               "force-deleted import")

    other = available_backup(alice, vol, "to-reset")
    with pytest.raises(cinder_errors.Forbidden):
        alice.backups.reset_state(other, "error")
    assert alice.backups.get(other).status == "available"
    admin.backups.reset_state(other, "error")
    assert alice.backups.get(other).status == "error"
    # An admin sees the owning project (3.18's project attribute); a member does not.
    raw = admin.backups.get(other)._info
    assert raw.get("os-backup-project-attr:project_id") == cloud.projects["alpha"]
    assert "os-backup-project-attr:project_id" not in alice.backups.get(other)._info


def _token_of(cloud, auth) -> str:
    from keystoneauth1 import session
    return session.Session(auth=auth).get_token()


def _backups(cloud, token: str) -> requests.Response:
    return requests.get(f"{cloud.api.url}/v3/{cloud.projects['alpha']}/backups",
                        headers={"X-Auth-Token": token}, timeout=30)


def test_a_revoked_token_is_401(cloud):
    token = cloud.session("alice").get_token()
    assert _backups(cloud, token).status_code == 200
    cloud.identity.revoke(token)
    r = _backups(cloud, token)
    assert r.status_code == 401 and "unauthorized" in r.json(), r.text


def test_an_expired_token_is_401(cloud):
    from keystoneauth1.identity import v3
    # An application credential's tokens expire with it: a token that lives seconds.
    sess = cloud.session("alice")
    user_id = sess.get_user_id()
    expires = dt.datetime.now(dt.UTC).replace(tzinfo=None) + dt.timedelta(seconds=6)
    r = sess.post(f"{cloud.auth_url}/users/{user_id}/application_credentials", json={
        "application_credential": {"name": "short-lived", "secret": "app-secret",
                                   "expires_at": expires.isoformat()}})
    cred_id = r.json()["application_credential"]["id"]
    token = _token_of(cloud, v3.ApplicationCredential(
        auth_url=cloud.auth_url, application_credential_id=cred_id,
        application_credential_secret="app-secret"))
    assert _backups(cloud, token).status_code == 200
    time.sleep(max(0.0, (expires - dt.datetime.now(dt.UTC).replace(tzinfo=None))
                   .total_seconds()) + 1.5)
    r = _backups(cloud, token)
    assert r.status_code == 401 and "unauthorized" in r.json(), r.text
    assert _backups(cloud, "not-a-token").status_code == 401


def test_the_policy_file_changes_who_may_create(cloud):
    alice, rita = cloud.cinder("alice"), cloud.cinder("rita")
    vol = available_volume(cloud, "alice", "policy-vol")
    try:
        with pytest.raises(cinder_errors.Forbidden):
            rita.backups.create(vol, name="before")
        # opened to readers: no restart, no code
        cloud.set_policy('"backup:create": "rule:xena_system_admin_or_project_reader"\n')
        opened = rita.backups.create(vol, name="by-a-reader")
        wait_until(lambda: alice.backups.get(opened.id).status,
                   lambda s: s in ("available", "error"), "reader's backup")
        assert alice.backups.get(opened.id).status == "available"
        assert alice.backups.get(opened.id).name == "by-a-reader"
        # ... and closed to members
        cloud.set_policy('"backup:create": "role:admin"\n')
        with pytest.raises(cinder_errors.Forbidden) as refused:
            alice.backups.create(vol, name="by-a-member")
        assert "backup:create" in str(refused.value)
        assert "by-a-member" not in {b.name for b in alice.backups.list()}
    finally:
        cloud.set_policy("{}\n")
    available_backup(alice, vol, "defaults-again")


def test_memcached_holds_the_validated_tokens(cloud, tmp_path):
    """ORCH_KEYSTONE_MEMCACHED_SERVERS: auth_token keeps what Keystone said in memcached, and
    trusts it for ORCH_KEYSTONE_TOKEN_CACHE_TIME (so a revoked token works until then)."""
    import dataclasses
    import os
    import shutil
    import socket

    from orchestrator.embedded import free_port
    from orchestrator.http import create_app

    binary = shutil.which("memcached")
    if binary is None:
        pytest.skip("memcached leg skipped: no memcached on PATH (apt-get install memcached)")
    port = free_port()
    user = ["-u", "root"] if os.getuid() == 0 else []
    proc = subprocess.Popen([binary, "-l", "127.0.0.1", "-p", str(port), "-U", "0", *user],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def items() -> int:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"stats\r\n")
            data = b""
            while not data.endswith(b"END\r\n"):
                data += s.recv(65536)
        stats = dict(line.split()[1:3] for line in data.decode().splitlines()
                     if line.startswith("STAT "))
        return int(stats["curr_items"])

    try:
        wait_until(lambda: _answers(port), bool, "memcached", timeout=10)
        settings = dataclasses.replace(cloud.settings, policy_file="",
                                       keystone_memcached_servers=f"127.0.0.1:{port}",
                                       keystone_token_cache_time=300)
        client = create_app(settings).test_client()
        path = f"/v3/{cloud.projects['alpha']}/backups"
        token = cloud.session("alice").get_token()
        assert items() == 0
        assert client.get(path, headers={"X-Auth-Token": token}).status_code == 200
        assert items() >= 1
        cloud.identity.revoke(token)
        assert client.get(path, headers={"X-Auth-Token": token}).status_code == 200
        assert client.get(path, headers={"X-Auth-Token": "not-a-token"}).status_code == 401
    finally:
        proc.terminate()
        proc.wait(10)


def _answers(port: int) -> bool:
    import socket
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False

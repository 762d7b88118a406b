"""Every pair of mutating operations on one backup / volume at the same moment, on
PostgreSQL with real workers and the API under granian, over several rounds; after each
round the invariants hold:

* no 5xx, no deadlock (every request answers);
* once the jobs settle, no backup, volume or job is left in a transient state;
* quota usage equals a recount of the rows, nothing reserved;
* every `available` backup restores byte-identical to its volume;
* no object in the store without a live backup row.
"""
from __future__ import annotations

import hashlib
import itertools
import os
import tempfile
import threading
from pathlib import Path

import pytest
import requests
from orch_testlib import ApiProcess
from orch_testlib import make_settings
from orch_testlib import wait_for
from sqlalchemy import select

from orchestrator import keys
from orchestrator import quota
from orchestrator.db import get_database
from orchestrator.migrate import upgrade
from orchestrator.models import Backup
from orchestrator.models import Job
from orchestrator.models import Volume
from workers.datapath import BackupRef
from workers.node import backup_driver

pytestmark = pytest.mark.slow

PROJECT = "race"
ROUNDS = int(os.environ.get("ORCH_TEST_RACE_ROUNDS", "2"))
DATA = 2 << 20  # bytes of random data at the start of each 1 GiB sparse volume
OPS = ("create", "incremental", "delete", "force_delete", "restore", "reset", "import",
       "export", "update", "volume_delete")
PAIRS = list(itertools.combinations_with_replacement(OPS, 2))
TRANSIENT = {"creating", "deleting", "restoring", "backing-up", "restoring-backup"}


class Caller:
    def __init__(self, url: str, token: str):
        self.url, self.session = f"{url}/v3", requests.Session()
        self.session.headers.update({"X-Auth-Token": token,
                                     "OpenStack-API-Version": "volume 3.71"})

    def __call__(self, method: str, path: str, body=None) -> requests.Response:
        return self.session.request(method, self.url + path, json=body, timeout=120)


def _op(name: str, member: Caller, admin: Caller, target: dict):
    vid, bid = target["volume"], target["backup"]
    return {
        "create": lambda: member("POST", "/backups", {"backup": {"volume_id": vid}}),
        "incremental": lambda: member("POST", "/backups", {"backup": {
            "volume_id": vid, "incremental": True}}),
        "delete": lambda: member("DELETE", f"/backups/{bid}"),
        "force_delete": lambda: admin("POST", f"/backups/{bid}/action",
                                      {"os-force_delete": {}}),
        "restore": lambda: member("POST", f"/backups/{bid}/restore", {"restore": {}}),
        "reset": lambda: admin("POST", f"/backups/{bid}/action",
                               {"os-reset_status": {"status": "error"}}),
        "import": lambda: admin("POST", "/backups/import_record",
                                {"backup-record": target["record"]}),
        "export": lambda: admin("GET", f"/backups/{bid}/export_record"),
        "update": lambda: member("PUT", f"/backups/{bid}", {"backup": {"name": "renamed"}}),
        "volume_delete": lambda: member("DELETE", f"/volumes/{vid}?cascade=true"),
    }[name]


def _status(caller: Caller, kind: str, rid: str) -> str | None:
    r = caller("GET", f"/{kind}s/{rid}")
    return r.json()[kind]["status"] if r.status_code == 200 else None


def _targets(member: Caller, admin: Caller, settings, n: int) -> list[dict]:
    """n volumes with data and an available full backup each (and its export record)."""
    targets = []
    for _ in range(n):
        r = member("POST", "/volumes", {"volume": {"size": 1}})
        assert r.status_code == 202, r.text
        targets.append({"volume": r.json()["volume"]["id"]})
    for t in targets:
        wait_for(lambda t=t: _status(member, "volume", t["volume"]) == "available", 60, 0.1,
                 "volume")
        path = Path(settings.volume_path) / f"volume-{t['volume']}"
        with open(path, "r+b") as f:
            f.write(os.urandom(DATA))
        r = member("POST", "/backups", {"backup": {"volume_id": t["volume"]}})
        assert r.status_code == 202, r.text
        t["backup"] = r.json()["backup"]["id"]
    for t in targets:
        wait_for(lambda t=t: _status(member, "backup", t["backup"]) == "available", 120, 0.1,
                 "the first backups")
        t["record"] = admin("GET", f"/backups/{t['backup']}/export_record").json()[
            "backup-record"]
    return targets


def _settle(db, timeout: float = 180) -> None:
    def settled():
        with db.scope(write=False) as s:
            active = s.scalars(select(Job).where(
                Job.state.in_(("waiting", "queued", "running")))).all()
        return not active
    wait_for(settled, timeout, 0.2, "every job to end")


def _sha(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _check_invariants(db, settings, volume_sha: dict[str, str]) -> dict:
    with db.scope(write=False) as s:
        backups = s.scalars(select(Backup).where(Backup.deleted.is_(False))).all()
        volumes = s.scalars(select(Volume).where(Volume.deleted.is_(False))).all()
        stuck = [(b.id, b.status) for b in backups if b.status in TRANSIENT] + \
            [(v.id, v.status) for v in volumes if v.status in TRANSIENT]
        assert not stuck, f"left in a transient state: {stuck}"
        for project in {b.project_id for b in backups} | {v.project_id for v in volumes} | \
                {PROJECT}:
            for resource, (in_use, reserved) in quota.usage(s, project).items():
                assert (in_use, reserved) == (quota.recount(s, project, resource), 0), \
                    (project, resource, in_use, reserved)
        available = [(b.id, b.volume_id, b.container, b.service_metadata)
                     for b in backups if b.status == "available"]
        live = {b.id for b in backups}
        # Encrypted backups read with their own project's keys (an import registered the
        # carried keys for the importing project).
        provider = keys.kek_provider(settings)
        drivers = {}
        for b in backups:
            if b.status == "available" and b.encryption_key_id:
                rows = keys.project_rows(s, b.project_id)
                named = backup_driver(settings, keys.reading_keyring(
                    provider, rows, b.encryption_key_id)).read_manifest(
                    BackupRef(b.container, b.service_metadata)).get("digest_key_id")
                drivers[b.id] = backup_driver(settings, keys.reading_keyring(
                    provider, rows, b.encryption_key_id, named))
    plain = backup_driver(settings)
    restored = 0
    with tempfile.TemporaryDirectory() as tmp:
        for backup_id, volume_id, container, prefix in available:
            expected = volume_sha.get(volume_id)
            if expected is None:  # an imported record points at the original volume id
                continue
            target = Path(tmp) / backup_id
            with open(target, "wb") as f:
                f.truncate(1 << 30)
            drivers.get(backup_id, plain).restore(BackupRef(container, prefix), str(target),
                                                  target_is_zeroed=True)
            assert _sha(target) == expected, f"backup {backup_id} does not restore its volume"
            target.unlink()
            restored += 1
    orphans = [p for p in Path(settings.backup_path).rglob("backup_*")
               if p.is_dir() and any(x.is_file() for x in p.iterdir())
               and p.name.removeprefix("backup_") not in live]
    assert not orphans, f"objects without a live backup row: {orphans}"
    return {"available_restored": restored}


@pytest.mark.timeout(1200)  # two rounds of 55 pairs, each restoring every 1 GiB backup
def test_every_pair_of_operations_at_once(tmp_path, redis_server, start_worker_factory,
                                          postgres):
    settings = make_settings(tmp_path / "state", f"{redis_server.url[:-1]}3",
                             database_url=postgres.url)
    upgrade(settings.database_url)
    db = get_database(settings.database_url)
    with db.scope() as s:
        quota.set_limits(s, PROJECT, {r: -1 for r in quota.RESOURCES}, settings)
        quota.set_limits(s, "admin", {r: -1 for r in quota.RESOURCES}, settings)
    start = start_worker_factory(settings)
    start("race-node", "nova", concurrency=2)
    api = ApiProcess(settings, workers=2).wait_ready()
    member, admin = Caller(api.url, f"u:{PROJECT}"), Caller(api.url, "admin:admin")
    report = []
    try:
        for round_no in range(ROUNDS):
            targets = _targets(member, admin, settings, len(PAIRS))
            volume_sha = {t["volume"]: _sha(Path(settings.volume_path) /
                                            f"volume-{t['volume']}") for t in targets}
            barrier = threading.Barrier(2 * len(PAIRS))
            results: dict = {}

            def fire(key, fn, barrier=barrier, results=results):
                barrier.wait()
                try:
                    results[key] = fn().status_code
                except Exception as exc:  # a hung or dropped request is a failure too
                    results[key] = repr(exc)
            threads = []
            for (a, b), target in zip(PAIRS, targets, strict=True):
                for side, name in (("a", a), ("b", b)):
                    fn = _op(name, member, admin, target)
                    threads.append(threading.Thread(target=fire,
                                                    args=((a, b, side, name), fn)))
            for t in threads:
                t.start()
            for t in threads:
                t.join(180)
            bad = {k: v for k, v in results.items() if not isinstance(v, int) or v >= 500}
            assert not bad and len(results) == len(threads), bad
            codes: dict = {}
            for (_, _, _, name), code in results.items():
                codes.setdefault(name, {}).setdefault(code, 0)
                codes[name][code] += 1
            _settle(db)
            checked = _check_invariants(db, settings, volume_sha)
            report.append({"round": round_no, "pairs": len(PAIRS), "codes": codes, **checked})
    finally:
        api.stop()
    print(f"race matrix: {report}")

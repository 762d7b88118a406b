"""Live stacks for the wire tests: one API server and one worker per auth mode.

A stack is module-scoped (starting a worker costs seconds; stopping it with
the module keeps idle workers from loading the machine during other tests)
and each test works in projects of its own, so tests sharing a stack never
see each other's resources. ``Stack.creds(project, role)`` gives what a client sends as
X-Auth-Token in the stack's mode: ``user:project`` in noauth mode, a fresh
API token (issued through orchestrator.tokens) in token mode.
"""
from __future__ import annotations

import itertools

import pytest
import redis
from orch_testlib import ApiServer
from orch_testlib import Client
from orch_testlib import WorkerProcess
from orch_testlib import make_settings

from orchestrator import tokens
from orchestrator.db import get_database
from orchestrator.db import utcnow
from orchestrator.migrate import upgrade

# Redis databases of the stacks: 6-11 (the `settings` fixture uses 1, the quota race test 2,
# the fuzzer 12-13). A module has at most three stacks at a time.
_REDIS_DBS = itertools.cycle(range(6, 12))


class Stack:
    """A running API (+ optional worker) in one auth mode."""

    def __init__(self, settings, api: ApiServer, worker: WorkerProcess | None):
        self.settings, self.api, self.worker = settings, api, worker
        self.mode = settings.auth
        self.url = api.url
        self.endpoint = f"{api.url}/v3"
        self.db = get_database(settings.database_url)
        self._issued: dict[tuple, str] = {}
        self._world: World | None = None

    def creds(self, project: str, role: str = "member", user: str | None = None) -> str:
        """The X-Auth-Token value of a caller with ``role`` in ``project``."""
        user = user or ("admin" if role == "admin" else f"{role}-of-{project}")
        if self.mode == "noauth":
            # noauth: admin iff the user (or project) is in ORCH_ADMIN_NAMES ("admin").
            # There is no reader role in noauth mode except through X-Roles.
            return f"{user}:{project}"
        key = (project, role, user)
        if key not in self._issued:
            with self.db.scope() as s:
                _, secret = tokens.issue(s, user_id=user, project_id=project, roles=[role],
                                         now=utcnow())
            self._issued[key] = secret
        return self._issued[key]


    def client(self, project: str, role: str = "member", version: str = "3.71",
               **kw) -> Client:
        """orch_testlib's small HTTP client with this caller's credentials."""
        return Client(self.url, token=self.creds(project, role, **kw), version=version)

    def world(self) -> World:
        """Resources in projects alpha and beta, made once per stack through the API."""
        if self._world is None:
            self._world = World(self)
        return self._world


class World:
    """Per project (alpha, beta): a volume, a snapshot of it and two available backups."""

    PROJECTS = ("alpha", "beta")

    def __init__(self, stack: Stack):
        self.ids: dict[str, dict[str, str]] = {}
        for project in self.PROJECTS:
            c = stack.client(project)
            vol = c.create_volume(1, name=f"{project}-vol")
            assert vol["status"] == "available", vol
            r = c.post("/snapshots", {"snapshot": {"volume_id": vol["id"],
                                                   "name": f"{project}-snap"}})
            assert r.status_code == 202, r.text
            snap = c.wait("snapshot", r.json()["snapshot"]["id"], {"available"})
            backups = []
            for name in ("b1", "b2"):
                r = c.post("/backups", {"backup": {"volume_id": vol["id"],
                                                   "name": f"{project}-{name}",
                                                   "metadata": {"n": name}}})
                assert r.status_code == 202, r.text
                backups.append(c.wait("backup", r.json()["backup"]["id"], {"available"}))
                c.wait("volume", vol["id"], {"available"})
            self.ids[project] = {"volume": vol["id"], "snapshot": snap["id"],
                                 "backup": backups[0]["id"], "backup2": backups[1]["id"]}


def _start_stack(tmp_path_factory, redis_server, mode: str, *, worker: bool,
                 **overrides) -> tuple[Stack, list]:
    n = next(_REDIS_DBS)
    url = f"redis://127.0.0.1:{redis_server.port}/{n}"
    redis.Redis.from_url(url).flushdb()
    settings = make_settings(tmp_path_factory.mktemp(f"stack-{mode}"), url, auth=mode,
                             **overrides)
    upgrade(settings.database_url)
    api = ApiServer(settings).start()
    proc = None
    if worker:
        proc = WorkerProcess(settings, f"wire-{mode}", "nova").wait_ready()
    return Stack(settings, api, proc), [api, proc]


@pytest.fixture(scope="module")
def stacks(tmp_path_factory, redis_server):
    """Factory: ``stacks(mode, worker=True, **settings)``; every stack stops at module end."""
    started: list = []
    cache: dict = {}

    def get(mode: str, *, worker: bool = True, **overrides) -> Stack:
        key = (mode, worker, tuple(sorted(overrides.items())))
        if key not in cache:
            stack, parts = _start_stack(tmp_path_factory, redis_server, mode, worker=worker,
                                        **overrides)
            started.extend(p for p in parts if p is not None)
            cache[key] = stack
        return cache[key]

    yield get
    for part in reversed(started):
        part.stop()

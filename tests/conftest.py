"""Fixtures that build on each other: redis → settings → database → api → workers.

Everything is real: a private redis-server on a loopback port, SQLite files,
the Flask app served over HTTP by werkzeug in a thread, and workers started
as `python -m workers` subprocesses (prefork Celery pools).
"""
from __future__ import annotations

import shutil

import pytest
from orch_testlib import ApiServer
from orch_testlib import Client
from orch_testlib import ThrowawayPostgres
from orch_testlib import WorkerProcess
from orch_testlib import make_settings
from orch_testlib import postgres_admin_dsn

from orchestrator.db import get_database
from orchestrator.embedded import RedisServer
from orchestrator.embedded import free_port
from orchestrator.migrate import upgrade


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A private redis-server on a free 127.0.0.1 port for the whole session."""
    server = RedisServer(str(tmp_path_factory.mktemp("redis")), port=free_port(),
                         persist=False).start()
    yield server
    server.stop()


@pytest.fixture
def settings(tmp_path, redis_server):
    """Settings on a fresh state dir, SQLite file and a fresh Redis database."""
    import redis
    url = f"redis://127.0.0.1:{redis_server.port}/1"
    redis.Redis.from_url(url).flushdb()
    s = make_settings(tmp_path / "state", url)
    upgrade(s.database_url)
    return s


@pytest.fixture
def db(settings):
    return get_database(settings.database_url)


@pytest.fixture
def api_server(settings):
    server = ApiServer(settings).start()
    yield server
    server.stop()


@pytest.fixture
def client(api_server):
    return Client(api_server.url)


@pytest.fixture
def admin(api_server):
    return Client(api_server.url, token="admin:admin")


@pytest.fixture
def start_worker_factory():
    """Factory of factories: workers for any settings (e.g. a PostgreSQL database)."""
    procs: list[WorkerProcess] = []

    def for_settings(settings):
        def start(host: str = "node-a", zone: str = "nova", **kw) -> WorkerProcess:
            proc = WorkerProcess(settings, host, zone, **kw)
            procs.append(proc)
            return proc.wait_ready()
        return start

    yield for_settings
    for proc in procs:
        proc.stop()


@pytest.fixture
def start_worker(settings, start_worker_factory):
    """Factory: start a storage-node worker (host, zone) and wait until it consumes."""
    return start_worker_factory(settings)


@pytest.fixture
def worker(start_worker):
    return start_worker("node-a", "nova")


@pytest.fixture
def control_plane(settings):
    """The maintenance worker and beat: reaper, re-send, reservation expiry, reconcile."""
    from orch_testlib import BeatProcess
    maintenance = WorkerProcess(settings, "control", "nova", maintenance=True).wait_ready()
    beat = BeatProcess(settings)
    yield maintenance
    beat.stop()
    maintenance.stop()


@pytest.fixture(params=["redis", "rabbitmq"])
def broker(request, tmp_path):
    """Each failure test runs on Redis, and on RabbitMQ when 127.0.0.1:5672 answers."""
    from orch_testlib import Broker
    from orch_testlib import rabbitmq_url
    if request.param == "rabbitmq" and rabbitmq_url() is None:
        pytest.skip("RabbitMQ leg skipped: nothing answers on 127.0.0.1:5672")
    if request.param == "rabbitmq" and shutil.which("rabbitmqctl") is None:
        # The failure tests stop and start the broker with its control tool.
        pytest.skip("RabbitMQ leg skipped: rabbitmqctl is not installed (the port answers, "
                    "but these tests stop and start the broker with it)")
    b = Broker(request.param, tmp_path / "broker")
    yield b
    b.close()


@pytest.fixture
def broker_settings(tmp_path, broker):
    """Settings whose broker is the test's own stoppable broker."""
    s = make_settings(tmp_path / "state", broker.url)
    upgrade(s.database_url)
    return s


@pytest.fixture
def postgres():
    """A throwaway database on the local PostgreSQL (dropped afterwards), or a visible skip."""
    dsn = postgres_admin_dsn()
    if dsn is None:
        pytest.skip("PostgreSQL leg skipped: nothing answers on 127.0.0.1:5432")
    pg = ThrowawayPostgres(dsn)
    yield pg
    pg.close()

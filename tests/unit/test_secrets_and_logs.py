"""Secrets are never printed or logged; S3 keys left unset reach boto3 as no keys; log lines
are JSON with the bound request id."""
from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer

import pytest
from orch_testlib import ROOT
from orch_testlib import ThrowawayPostgres
from orch_testlib import postgres_admin_dsn

from orchestrator import logs
from orchestrator.config import Settings
from orchestrator.config import without_password
from orchestrator.embedded import free_port
from workers.node import store_args
from workers.stores import make_store

SECRET = "hunter2-Zq9"


@pytest.mark.parametrize("url, shown", [
    (f"postgresql+psycopg://orch:{SECRET}@db:5432/x", "postgresql+psycopg://orch:***@db:5432/x"),
    (f"postgresql://orch:p@{SECRET}@db/x", "postgresql://orch:***@db/x"),  # '@' unescaped
    (f"amqp://orch:{SECRET}/x@rabbit//", "amqp://orch:***@rabbit//"),
    (f"redis://:{SECRET}@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
    (f"redis://127.0.0.1/0?password={SECRET}&db=1", "redis://127.0.0.1/0?password=***&db=1"),
    (f"could not reach redis://u:{SECRET}@h/0 (timeout)", "could not reach redis://u:***@h/0 "
                                                          "(timeout)"),
])
def test_every_url_form_is_masked(url, shown):
    assert without_password(url) == shown and SECRET not in without_password(url)


def test_settings_never_show_their_secrets(tmp_path):
    s = Settings.from_env({"ORCH_STATE_DIR": str(tmp_path),
                           "ORCH_DATABASE_URL": f"postgresql+psycopg://o:{SECRET}@db/x",
                           "ORCH_BROKER_URL": f"amqp://o:{SECRET}@mq//",
                           "ORCH_S3_SECRET_KEY": SECRET})
    assert SECRET not in repr(s) and SECRET not in str(s)


def _db_upgrade(url: str, tmp_path) -> subprocess.CompletedProcess:
    env = {**os.environ, "ORCH_DATABASE_URL": url, "ORCH_STATE_DIR": str(tmp_path)}
    return subprocess.run([sys.executable, "-m", "orchestrator", "db", "upgrade"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)


def test_db_upgrade_never_prints_the_password_when_it_fails(tmp_path):
    url = f"postgresql+psycopg://orch:{SECRET}@127.0.0.1:{free_port()}/x?connect_timeout=1"
    result = _db_upgrade(url, tmp_path)
    assert result.returncode != 0
    assert SECRET not in result.stdout + result.stderr


def test_db_upgrade_never_prints_the_password_when_it_works(tmp_path):
    dsn = postgres_admin_dsn()
    if dsn is None:
        pytest.skip("no PostgreSQL on 127.0.0.1:5432: the successful upgrade leg is not run")
    pg = ThrowawayPostgres(dsn)
    try:  # the local server trusts loopback: any password is accepted and must not show
        url = pg.url.replace("@", f":{SECRET}@", 1)
        result = _db_upgrade(url, tmp_path)
        assert result.returncode == 0, result.stderr
        assert "database at head" in result.stdout and ":***@" in result.stdout
        assert SECRET not in result.stdout + result.stderr
    finally:
        pg.close()


class _Recorder(BaseHTTPRequestHandler):
    """An S3 endpoint that only remembers who signed each request, and says 404."""

    seen: list[str] = []

    def _any(self):
        type(self).seen.append(self.headers.get("Authorization", ""))
        body = b"<Error><Code>NoSuchKey</Code><Message>no</Message></Error>"
        self.send_response(404)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _any

    def log_message(self, *args):
        return


@pytest.fixture
def s3_recorder():
    _Recorder.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _signer_of_one_request(endpoint: str, settings: Settings) -> str:
    kind, args = store_args(settings)
    store = make_store(kind, **{**args, "retries": 1})
    try:
        store.get("v1/ab/some-object")
    except Exception:
        pass  # the 404 is expected: what matters is who signed the request
    assert _Recorder.seen, "no request reached the endpoint"
    return _Recorder.seen[-1]


def test_unset_s3_keys_leave_boto3_to_its_own_credential_chain(tmp_path, s3_recorder,
                                                               monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFROMTHEENVIRONMENT")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    settings = Settings(state_dir=str(tmp_path), backup_store="s3", s3_endpoint_url=s3_recorder,
                        s3_bucket="b")
    assert store_args(settings)[1]["access_key"] is None
    assert "Credential=AKIAFROMTHEENVIRONMENT/" in _signer_of_one_request(s3_recorder, settings)

    configured = Settings(state_dir=str(tmp_path), backup_store="s3",
                          s3_endpoint_url=s3_recorder, s3_bucket="b",
                          s3_access_key="AKIACONFIGURED", s3_secret_key=SECRET)
    assert "Credential=AKIACONFIGURED/" in _signer_of_one_request(s3_recorder, configured)


# ----------------------------------------------------------------------------- log lines


def _logged(fmt: str, emit) -> str:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        logs.configure("INFO", fmt, stream=stream)
        emit(logging.getLogger("orchestrator.test"))
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    return stream.getvalue()


def test_json_lines_carry_the_bound_ids_and_mask_urls():
    rid, jid = f"req-{uuid.uuid4()}", str(uuid.uuid4())

    def emit(log):
        log.info("outside")
        with logs.bound(rid, jid):
            log.warning("connecting to %s", f"redis://:{SECRET}@h/0")
            try:
                raise RuntimeError(f"postgresql://u:{SECRET}@db/x refused")
            except RuntimeError:
                log.exception("it broke")
        log.info("after")
    lines = [json.loads(line) for line in _logged("json", emit).splitlines()]
    assert [line["message"] for line in lines] == [
        "outside", "connecting to redis://:***@h/0", "it broke", "after"]
    assert "request_id" not in lines[0] and "request_id" not in lines[3]
    assert all(line["request_id"] == rid and line["job_id"] == jid for line in lines[1:3])
    assert "RuntimeError" in lines[2]["exc"] and SECRET not in json.dumps(lines)
    assert lines[1]["level"] == "WARNING" and lines[1]["ts"].endswith("Z")


def test_text_lines_for_development():
    rid = f"req-{uuid.uuid4()}"

    def emit(log):
        with logs.bound(rid):
            log.info("hello %s", f"amqp://u:{SECRET}@mq//")
    text = _logged("text", emit)
    assert rid in text and "amqp://u:***@mq//" in text and SECRET not in text
    assert not text.startswith("{")


@pytest.mark.parametrize("value, valid", [
    (f"req-{uuid.uuid4()}", True), (f"req-{uuid.uuid4()}".upper(), False),
    (str(uuid.uuid4()), False), ("req-", False), (None, False), ("req-" + "a" * 36, False),
    (f"req-{uuid.uuid4()} ", False),
])
def test_request_ids_are_req_and_a_uuid(value, valid):
    assert logs.valid_request_id(value) == (value if valid else None)

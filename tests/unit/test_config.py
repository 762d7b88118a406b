"""Settings are validated when a process starts: one clear line, before anything runs."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from orchestrator.config import Settings
from orchestrator.config import without_password


@pytest.mark.parametrize("variable, value, needle", [
    ("ORCH_BACKUP_COMPRESSION", "lz4", "must be one of zstd, zlib, none (not 'lz4')"),
    ("ORCH_BACKUP_STORE", "tape", "must be one of posix, s3"),
    ("ORCH_AUTH", "keystone-ish", "must be one of noauth, token"),
    ("ORCH_LOG_LEVEL", "chatty", "must be one of DEBUG"),
    ("ORCH_API_WORKERS", "0", "between 1 and 256"),
    ("ORCH_LEASE_TTL", "soon", "could not convert"),
    ("ORCH_QUOTA_BACKUPS", "-2", "between -1"),
    ("ORCH_BACKUP_USE_SAME_HOST", "perhaps", "not a boolean"),
    ("ORCH_BROKER_URL", "http://user:hunter2@example.invalid/", "ORCH_BROKER_URL"),
    ("ORCH_DATABASE_URL", "not a url", "not a database URL"),
    ("ORCH_LOG_FORMAT", "xml", "must be one of json, text"),
    ("ORCH_WORKER_METRICS_PORT", "70000", "between 0 and 65535"),
    ("ORCH_BACKUP_STALE_AFTER", "1", "between 60"),
])
def test_a_bad_value_is_refused_naming_its_variable(tmp_path, variable, value, needle):
    with pytest.raises(ValueError) as err:
        Settings.from_env({variable: value, "ORCH_STATE_DIR": str(tmp_path)})
    assert variable in str(err.value) and needle in str(err.value)
    assert "hunter2" not in str(err.value)


def test_the_defaults_are_valid(tmp_path):
    Settings.from_env({"ORCH_STATE_DIR": str(tmp_path)})


def test_passwords_are_never_printed():
    assert without_password("postgresql+psycopg://orch:s3cret@db/x") == \
        "postgresql+psycopg://orch:***@db/x"
    assert without_password("sqlite:///var/x.db") == "sqlite:///var/x.db"


@pytest.mark.parametrize("command", [["-m", "orchestrator", "run"], ["-m", "orchestrator", "api"],
                                     ["-m", "workers"], ["-m", "workers", "--maintenance"]])
def test_every_process_refuses_a_bad_value_before_it_starts(tmp_path, command):
    env = {**os.environ, "ORCH_STATE_DIR": str(tmp_path / "state"),
           "ORCH_BACKUP_COMPRESSION": "lz4"}
    done = subprocess.run([sys.executable, *command], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "ORCH_BACKUP_COMPRESSION" in lines[0], done.stderr
    assert not (tmp_path / "state").exists()  # nothing started, nothing written

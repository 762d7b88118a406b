"""A real Keystone for the tests: its own virtualenv (cached), SQLite, fernet keys, loopback.

``keystone_venv()`` installs requirements-keystone.txt into a virtualenv under
the user's cache directory (``ORCH_TEST_KEYSTONE_VENV`` to choose another) once;
a stamp holding the requirements' hash makes later runs reuse it. ``Keystone``
writes a keystone.conf and fresh fernet and credential keys into a temporary
directory, takes the schema ``keystone-manage db_sync`` made (once, kept in the
virtualenv), runs ``keystone-manage bootstrap`` and serves the public WSGI
application with werkzeug from that virtualenv.
"""
from __future__ import annotations

import base64
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import requests

from orchestrator.embedded import free_port

HERE = Path(__file__).resolve().parent
REQUIREMENTS = HERE / "requirements-keystone.txt"
ADMIN_PASSWORD = "bootstrap-secret"


class KeystoneUnavailable(Exception):
    """The Keystone package could not be installed here."""


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "orchestrator-tests"


def keystone_venv() -> Path:
    """The virtualenv with Keystone and the openstack CLI, installed on first use.

    :raises KeystoneUnavailable: pip could not install the packages.
    """
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()[:12]
    venv = Path(os.environ.get("ORCH_TEST_KEYSTONE_VENV") or
                _cache_root() / f"keystone-venv-{digest}")
    stamp = venv / f".installed-{digest}"
    if stamp.exists():
        return venv
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f".{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run may be installing the same venv
        if stamp.exists():
            return venv
        python = sys.executable
        steps = [[python, "-m", "venv", "--clear", str(venv)],
                 [str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                  "-r", str(REQUIREMENTS)]]
        for step in steps:
            out = subprocess.run(step, capture_output=True, text=True, timeout=900)
            if out.returncode != 0:
                tail = "\n".join(line for line in (out.stderr + out.stdout).splitlines()
                                 if not line.startswith("WARNING: Location"))[-2000:]
                raise KeystoneUnavailable(f"{' '.join(step[:4])} failed:\n{tail}")
        stamp.write_text(REQUIREMENTS.read_text())
    return venv


CONF = """\
[DEFAULT]
log_file = {dir}/keystone.log
[database]
connection = sqlite:///{dir}/keystone.db
[fernet_tokens]
key_repository = {dir}/fernet-keys
[fernet_receipts]
key_repository = {dir}/fernet-keys
[credential]
key_repository = {dir}/credential-keys
[identity]
# the fewest bcrypt rounds: every password authentication of the tests costs little
password_hash_rounds = 4
[token]
expiration = 3600
"""


class Keystone:
    """One Keystone server: bootstrap admin ``admin`` / ADMIN_PASSWORD in project ``admin``."""

    def __init__(self, venv: Path, directory: Path):
        self.venv, self.dir = venv, directory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v3"
        self.conf = directory / "keystone.conf"
        self.proc: subprocess.Popen | None = None

    def bin(self, name: str) -> str:
        return str(self.venv / "bin" / name)

    def _manage(self, *args: str) -> None:
        out = subprocess.run([self.bin("keystone-manage"), "--config-file", str(self.conf),
                              *args], capture_output=True, text=True, timeout=300)
        if out.returncode != 0:
            raise AssertionError(f"keystone-manage {args[0]}: {out.stderr[-3000:]}")

    def start(self) -> Keystone:
        self.dir.mkdir(parents=True, exist_ok=True)
        for sub in ("fernet-keys", "credential-keys"):
            keys = self.dir / sub
            keys.mkdir(mode=0o700, exist_ok=True)
            # what `keystone-manage fernet_setup` writes: a staged (0) and a primary key
            for index in ("0", "1"):
                (keys / index).write_bytes(base64.urlsafe_b64encode(os.urandom(32)))
                (keys / index).chmod(0o600)
        self.conf.write_text(CONF.format(dir=self.dir))
        self._schema()
        self._manage("bootstrap", "--bootstrap-password", ADMIN_PASSWORD,
                     "--bootstrap-region-id", "RegionOne",
                     "--bootstrap-public-url", self.url, "--bootstrap-internal-url", self.url)
        with open(self.dir / "serve.log", "ab") as log:
            self.proc = subprocess.Popen([self.bin("python"), str(HERE / "serve_keystone.py"),
                                          str(self.conf), str(self.port)],
                                         stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"keystone exited:\n{self.log()}")
            try:
                if requests.get(self.url, timeout=2).status_code == 200:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"keystone did not answer:\n{self.log()}")

    def _schema(self) -> None:
        """``keystone-manage db_sync``, run once into the venv's directory and copied."""
        template = self.venv / "keystone-schema.db"
        if not template.exists():
            self._manage("db_sync")
            partial = template.with_suffix(f".{os.getpid()}.tmp")
            shutil.copyfile(self.dir / "keystone.db", partial)
            os.replace(partial, template)
            return
        shutil.copyfile(template, self.dir / "keystone.db")

    def log(self) -> str:
        text = ""
        for name in ("serve.log", "keystone.log"):
            path = self.dir / name
            if path.exists():
                text += path.read_text(errors="replace")[-3000:]
        return text

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class Identity:
    """Keystone's REST API as its bootstrap admin (projects, users, roles, tokens)."""

    def __init__(self, keystone: Keystone):
        from orchestrator.keystone import password_session
        self.url = keystone.url
        self.session = password_session(keystone.url, "admin", ADMIN_PASSWORD, "admin")
        self._roles: dict[str, str] = {}

    def _call(self, method: str, path: str, **kw):
        return self.session.request(f"{self.url}{path}", method, **kw)

    def role_id(self, name: str) -> str:
        if name not in self._roles:
            found = self._call("GET", "/roles", params={"name": name}).json()["roles"]
            if found:
                self._roles[name] = found[0]["id"]
            else:
                self._roles[name] = self._call("POST", "/roles", json={
                    "role": {"name": name}}).json()["role"]["id"]
        return self._roles[name]

    def project(self, name: str) -> str:
        found = self._call("GET", "/projects", params={"name": name}).json()["projects"]
        if found:
            return found[0]["id"]
        return self._call("POST", "/projects", json={"project": {
            "name": name, "domain_id": "default"}}).json()["project"]["id"]

    def user(self, name: str, password: str, project_id: str, *roles: str) -> str:
        user_id = self._call("POST", "/users", json={"user": {
            "name": name, "password": password, "domain_id": "default",
            "default_project_id": project_id}}).json()["user"]["id"]
        for role in roles:
            self._call("PUT", f"/projects/{project_id}/users/{user_id}/roles/"
                       f"{self.role_id(role)}")
        return user_id

    def revoke(self, token: str) -> None:
        self._call("DELETE", "/auth/tokens", headers={"X-Subject-Token": token})

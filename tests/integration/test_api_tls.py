"""The API over HTTPS: ORCH_API_TLS_CERT/KEY handed to granian, a self-signed certificate."""
from __future__ import annotations

import datetime as dt
import ipaddress
import os
import signal
import subprocess
import sys
import time

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from orch_testlib import ROOT
from orch_testlib import make_settings

from orchestrator.config import Settings
from orchestrator.embedded import free_port
from orchestrator.migrate import upgrade
from orchestrator.serve import api_command


def self_signed(directory) -> tuple[str, str]:
    """A certificate for 127.0.0.1 and its PKCS#8 key (what granian takes), as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "api.crt", directory / "api.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return str(cert_path), str(key_path)


def test_settings_want_both_tls_files(tmp_path):
    cert, key = self_signed(tmp_path)
    with pytest.raises(ValueError, match="ORCH_API_TLS_CERT and ORCH_API_TLS_KEY"):
        Settings(state_dir=str(tmp_path), api_tls_cert=cert)
    with pytest.raises(ValueError, match="ORCH_API_TLS_KEY: cannot read"):
        Settings(state_dir=str(tmp_path), api_tls_cert=cert, api_tls_key=str(tmp_path / "no"))
    s = Settings(state_dir=str(tmp_path), api_tls_cert=cert, api_tls_key=key)
    argv = api_command(s)
    assert argv[argv.index("--ssl-certificate") + 1] == cert
    assert argv[argv.index("--ssl-keyfile") + 1] == key
    assert "--ssl-certificate" not in api_command(Settings(state_dir=str(tmp_path)))


def test_api_serves_https_with_the_configured_certificate(tmp_path):
    cert, key = self_signed(tmp_path)
    port = free_port()
    settings = make_settings(tmp_path / "state", "memory://", api_tls_cert=cert,
                             api_tls_key=key, api_port=port)
    upgrade(settings.database_url)
    env = {**os.environ, **settings.as_env()}
    log = open(tmp_path / "api.log", "ab")  # noqa: SIM115 (the child keeps it)
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "api", "-w", "1"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"https://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        r = None
        while time.monotonic() < deadline and r is None:
            assert proc.poll() is None, (tmp_path / "api.log").read_text()[-3000:]
            try:
                r = requests.get(f"{url}/v3/backups", verify=cert, timeout=2,
                                 headers={"X-Auth-Token": "demo:demo"})
            except requests.exceptions.ConnectionError:
                time.sleep(0.2)
        assert r is not None, "the API did not answer over HTTPS"
        assert r.status_code == 200 and r.json() == {"backups": []}
        # Links name the scheme the request came in on.
        versions = requests.get(f"{url}/", verify=cert, timeout=5).json()
        assert any(link["href"].startswith("https://")
                   for v in versions["versions"] for link in v["links"]), versions
        # A client that does not trust the certificate is refused, and plain HTTP gets no API.
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(f"{url}/", timeout=5)
        try:
            plain = requests.get(f"http://127.0.0.1:{port}/", timeout=5).status_code
        except requests.exceptions.RequestException:
            plain = None
        assert plain in (None, 400), f"plain HTTP answered {plain}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)

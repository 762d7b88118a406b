"""contrib/: the systemd units and the Procfile name commands and options that exist."""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNITS = sorted((ROOT / "contrib" / "systemd").glob("*.service"))
VENV_IN_UNITS = "/opt/orchestrator/venv"
ENV_IN_UNITS = "/etc/orchestrator/orchestrator.env"


def _commands() -> list[tuple[str, list[str]]]:
    """(where, argv after `orchestrator`) of every unit's ExecStart and Procfile line."""
    out = []
    for unit in UNITS:
        for line in unit.read_text().splitlines():
            if line.startswith("ExecStart="):
                argv = shlex.split(line.split("=", 1)[1])
                assert argv[0] == f"{VENV_IN_UNITS}/bin/orchestrator", (unit.name, argv)
                out.append((unit.name, argv[1:]))
    for line in (ROOT / "contrib" / "Procfile").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, command = line.partition(":")
            argv = shlex.split(command)
            assert argv[0] == "orchestrator", line
            out.append((f"Procfile {name}", argv[1:]))
    return out


def test_every_process_has_a_unit_and_a_procfile_line():
    names = {u.name for u in UNITS}
    assert {"orchestrator-api.service", "orchestrator-worker.service",
            "orchestrator-maintenance.service", "orchestrator-beat.service",
            "orchestrator-migrate.service"} <= names
    procfile = {where.split()[1] for where, _ in _commands() if where.startswith("Procfile")}
    assert procfile >= {"api", "worker", "maintenance", "beat"}


@pytest.mark.parametrize("where,argv", _commands(), ids=lambda v: v if isinstance(v, str)
                         else " ".join(v))
def test_command_and_its_options_exist(where, argv):
    r = subprocess.run([sys.executable, "-m", "orchestrator", *argv, "--help"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"{where}: orchestrator {' '.join(argv)}: {r.stderr}"
    assert re.search(r"(?i)usage:", r.stdout), r.stdout


def test_the_environment_file_holds_only_known_settings():
    from orchestrator.config import Settings
    known = {f"ORCH_{f.upper()}" for f in Settings.__dataclass_fields__}
    text = (ROOT / "contrib" / "systemd" / "orchestrator.env").read_text()
    names = re.findall(r"^#?(ORCH_[A-Z0-9_]+)=", text, re.M)
    assert names and set(names) <= known, set(names) - known
    assert re.search(r"^ORCH_AUTH=token$", text, re.M)  # a fleet never runs noauth


def test_systemd_accepts_the_units(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian's systemd package)")
    venv = Path(sys.executable).parent.parent
    for unit in UNITS:  # point the units at this checkout's venv and environment file
        text = unit.read_text().replace(VENV_IN_UNITS, str(venv)).replace(
            ENV_IN_UNITS, str(ROOT / "contrib" / "systemd" / "orchestrator.env"))
        (tmp_path / unit.name).write_text(text)
    r = subprocess.run([analyze, "verify", "--man=no", *sorted(
        str(p) for p in tmp_path.glob("*.service"))], capture_output=True, text=True,
        timeout=120, cwd=tmp_path)
    # Unknown keys and bad values are only warnings: any output is a finding.
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr

"""The data path and the stores import neither Flask, Celery, SQLAlchemy nor orchestrator."""
import json
import subprocess
import sys

from dp_helpers import ROOT

FORBIDDEN = ("flask", "celery", "sqlalchemy", "orchestrator")
CHILD = f"""
import json, sys
sys.path.insert(0, {ROOT!r})
import workers.datapath, workers.stores
from workers.datapath import backup, catalog, codec, config, driver, errors, format, names
from workers.datapath import progress, refs, restore, results, verify, volume_io
from workers.stores import base, memory, posix, s3
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {FORBIDDEN!r})))
"""


def test_data_path_imports_nothing_of_the_control_plane():
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                         check=True, timeout=60)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []

"""Memory stays bounded: 4 GiB sparse volume holding 512 MiB, in a subprocess."""
import os
import random
import subprocess
import sys
import textwrap

from dp_helpers import ROOT
from dp_helpers import MiB

CHILD = textwrap.dedent("""
    import sys, json
    sys.path.insert(0, sys.argv[1])
    from workers.datapath import ChunkedDriver
    from workers.stores import make_store
    drv = ChunkedDriver(make_store("posix", path=sys.argv[3]))
    res = drv.backup(sys.argv[2], backup_id="mem-test", volume_id="v", size_bytes=4 << 30)
    # VmHWM is this process's own peak (a new address space at exec); ru_maxrss is not:
    # Linux carries it across exec and RUSAGE_CHILDREN is the peak of every child so far.
    hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
    print(json.dumps({"data_bytes": res.data_bytes, "stored": res.stored_bytes,
                      "peak_kib": int(hwm.split()[1])}))
""")


def test_backup_4gib_sparse_under_300mib_rss(tmp_path):
    vol = tmp_path / "vol"
    rng = random.Random(7)
    chunk = rng.randbytes(4 * MiB)
    with open(vol, "wb") as f:
        f.truncate(4 << 30)
        for k in range(8):                 # 8 extents of 64 MiB spread over 4 GiB
            f.seek(k * 512 * MiB + 3 * MiB)
            for j in range(16):
                f.write(chunk[j:] + chunk[:j])   # distinct, incompressible blocks
    proc = subprocess.run([sys.executable, "-c", CHILD, ROOT, str(vol), str(tmp_path / "store")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    import json
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["data_bytes"] == 512 * MiB
    assert out["stored"] > 512 * MiB       # random data: everything was really stored
    peak_mib = out["peak_kib"] / 1024
    assert peak_mib < 300, f"peak RSS {peak_mib:.0f} MiB"
    os.unlink(vol)

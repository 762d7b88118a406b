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


OP_CHILD = textwrap.dedent("""
    import sys, json
    sys.path.insert(0, sys.argv[1])
    from workers.datapath import BackupRef, ChunkedDriver
    from workers.stores import make_store
    op, vol, store, size, target = sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), \\
        sys.argv[6]
    # 4 KiB blocks: four times the digests of the default, so a map of the whole volume
    # would show; a small in-flight bound, so both sizes reach the pipeline's steady state
    drv = ChunkedDriver(make_store("posix", path=store), block_size=4096,
                        index_span=64 << 20, max_inflight_bytes=16 << 20)
    ref = BackupRef("mem", "backup_mem1")
    if op == "backup":
        drv.backup(vol, backup_id="mem1", volume_id="v", size_bytes=size, container="mem")
    elif op == "incremental":
        drv.backup(vol, backup_id="mem2", volume_id="v", size_bytes=size, container="mem",
                   parent=ref)
    elif op == "restore":
        drv.restore(ref, target)
    else:
        assert drv.verify(ref).ok
    hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
    print(json.dumps({"peak_kib": int(hwm.split()[1])}))
""")


def _peaks(tmp_path, data_mib):
    """Peak RSS (MiB) of a backup, an incremental, a restore and a verify of a 4 GiB
    volume holding ``data_mib`` MiB of distinct, incompressible blocks."""
    size = 4 << 30
    vol = tmp_path / f"vol{data_mib}"
    chunk = random.Random(data_mib).randbytes(4 * MiB)
    with open(vol, "wb") as f:
        f.truncate(size)
        for k in range(data_mib // 4):
            f.seek(k * (size // (data_mib // 4)))
            f.write(chunk[k % 4096:] + chunk[:k % 4096])
    store = tmp_path / f"store{data_mib}"
    target = tmp_path / f"restored{data_mib}"
    peaks = {}
    for op in ("backup", "incremental", "restore", "verify"):
        proc = subprocess.run([sys.executable, "-c", OP_CHILD, ROOT, op, str(vol), str(store),
                               str(size), str(target)], capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, proc.stderr
        peaks[op] = int(proc.stdout.strip().splitlines()[-1].split(":")[1].rstrip("}")) / 1024
        if op == "restore":
            assert target.stat().st_size == size
            target.unlink()
    vol.unlink()
    return peaks


def test_peak_rss_does_not_grow_with_the_data(tmp_path):
    """Eight times the data (and digests): backup, incremental, restore and verify peak
    at the same RSS, give or take noise (version 1 held the whole manifest and a digest
    map: ~25 MiB more here)."""
    small = _peaks(tmp_path, 128)
    big = _peaks(tmp_path, 1024)
    print("peak RSS MiB", small, big)
    for op in small:
        assert big[op] - small[op] < 12, (op, small, big)
        assert big[op] < 300, (op, big)

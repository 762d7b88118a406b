#!/usr/bin/env python3
"""Benchmark of the backup data path (workers/datapath) on a POSIX store.

    bench/datapath.py [--size-mib 1024] [--runs 3] [--workdir DIR] [--keep] [--quick]

Makes the images with volume_workload.py (base, and a copy with one 4 KiB page
changed in 1 % of the 32 KiB blocks), then runs, each --runs times, a full
backup of the base image, an incremental of the modified image, a restore of
that incremental (checked by the SHA-256 of the whole image) and a full backup
of a 1 TiB sparse volume holding the base image's content.  Every backup and
restore runs in a fresh child process, which reports its own elapsed time and
peak RSS.  Throughputs are logical volume bytes per second (MiB/s).

Then, in the same run:

* ``peak_rss_mib_by_size``: peak RSS of a full backup of a volume of 1, 4 and 16
  times --size-mib (keys: the sizes in MiB), each the base image tiled that
  many times (holes kept), so the data grows with the volume;
* ``concurrent4_ratio``: 4 full backups of the base image in 4 processes at once
  (one store, as on one node; each process starts its backup at the same instant,
  once all four are set up, so no process's imports are counted in another's span):
  their aggregate throughput ÷ that of one backup
  alone, run side by side (median over --runs); ``concurrent4_rss_mib``: the
  sum of the 4 processes' peak RSS;
* ``limit_ratio``: full_mib_s ÷ 2 / (1/sha256_mib_s + 1/zstd1_mib_s), the
  single-thread kernel figures measured on the same data in this run, just before
  each full backup (medians of those samples);
* ``encrypted_full_ratio`` and the ``*_encrypted`` figures (bench/datapath_crypto.py).

``--store-dir /dev/shm`` puts the stores in memory: the figures are then the
data path's, not the disk's (this machine's disk writes at 250 to 1000 MB/s from
one minute to the next, and a full backup writes 0.43 GB per GiB).

``--quick`` runs everything small (256 MiB, one run, sizes ×1/×2/×4) to check
the script. The last line printed is one JSON object with the medians; it also
holds the load average before and after (the machine may be shared).
"""
import argparse
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import datapath_crypto

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MiB = 1024 * 1024
GiB = 1024 * MiB
TiB = 1024 * GiB


def find_workload():
    cands = [os.environ.get("VOLUME_WORKLOAD", ""),
             os.path.join(ROOT, "..", "shared", "bench", "volume_workload.py"),
             os.path.join(ROOT, "shared", "bench", "volume_workload.py"),
             "/work/shared/bench/volume_workload.py"]
    for c in cands:
        if c and os.path.isfile(c):
            return os.path.abspath(c)
    sys.exit("volume_workload.py not found (set VOLUME_WORKLOAD=...)")


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- child

def peak_rss_mib():
    """Peak RSS of this process image: VmHWM (ru_maxrss also counts the RSS the
    parent had when it forked us, so it overstates a child's own peak)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(spec):
    sys.path.insert(0, ROOT)
    from workers.datapath import BackupRef
    from workers.datapath import ChunkedDriver
    from workers.stores import make_store
    drv = ChunkedDriver(make_store("posix", path=spec["store"]), **spec.get("options", {}))
    drv = datapath_crypto.maybe_encrypting(drv, spec)
    if spec.get("start_at"):
        # Children started together wait here, set up, for one instant: the span they
        # report is their backups', not the others' start-up (as on a running node).
        time.sleep(max(0.0, spec["start_at"] - time.time()))
    wall0 = time.time()
    t0 = time.perf_counter()
    if spec["op"] == "backup":
        parent = BackupRef(*spec["parent"]) if spec.get("parent") else None
        r = drv.backup(spec["source"], backup_id=spec["backup_id"], volume_id="bench-vol",
                       size_bytes=spec["size"], parent=parent, container=spec.get("container"))
        out = {"container": r.container, "prefix": r.prefix, "stored_bytes": r.stored_bytes,
               "object_count": r.object_count, "incremental": r.incremental,
               "message": r.message, "data_bytes": r.data_bytes, "changed_bytes": r.changed_bytes}
    elif spec["op"] == "restore":
        r = drv.restore(BackupRef(*spec["ref"]), spec["target"],
                        target_is_zeroed=spec.get("target_is_zeroed", False))
        out = {"bytes_written": r.bytes_written, "zeroed_bytes": r.zeroed_bytes,
               "objects_read": r.objects_read}
    else:
        raise SystemExit(f"unknown op {spec['op']}")
    out["elapsed_s"] = time.perf_counter() - t0
    out["t_start"], out["t_end"] = wall0, time.time()
    out["maxrss_mib"] = peak_rss_mib()
    print(json.dumps(out))


def run_child(spec):
    return run_children([spec])[0]


def run_children(specs, together=False):
    """Run the specs in child processes at the same time; their outputs, in order.
    With ``together`` the children start their work at one instant, once all are set up."""
    os.sync()    # no writeback of earlier steps competes with the measured one
    if together:
        start_at = time.time() + 3.0      # after the children's imports
        specs = [dict(spec, start_at=start_at) for spec in specs]
    procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), "--child",
                               json.dumps(spec)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for spec in specs]
    outs = []
    for p in procs:
        stdout, stderr = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"child failed: {stderr[-3000:]}")
        outs.append(json.loads(stdout.strip().splitlines()[-1]))
    return outs


# --------------------------------------------------------------------------- limits

def data_sample(path, want):
    """Up to ``want`` bytes of the non-hole content of ``path``."""
    from workers.datapath.volume_io import data_extents
    parts, got = [], 0
    fd = os.open(path, os.O_RDONLY)
    try:
        for offset, length in data_extents(fd, os.fstat(fd).st_size):
            take = min(length, want - got)
            parts.append(os.pread(fd, take, offset))
            got += take
            if got >= want:
                break
    finally:
        os.close(fd)
    return b"".join(parts)


def single_thread_limits(base, zstd_level):
    import zstandard
    size = os.path.getsize(base)
    # warm sequential read of the whole image, 8 MiB at a time
    buf = bytearray(8 * MiB)
    best = 0
    for _ in range(2):
        t = time.perf_counter()
        with open(base, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass
        best = max(best, size / MiB / (time.perf_counter() - t))
    sample = data_sample(base, 256 * MiB)
    t = time.perf_counter()
    hashlib.sha256(sample).digest()
    sha = len(sample) / MiB / (time.perf_counter() - t)
    res = {"read_mib_s": round(best), "sha256_mib_s": round(sha)}
    for lvl in sorted({3, zstd_level}):
        c = zstandard.ZstdCompressor(level=lvl)
        t = time.perf_counter()
        for i in range(0, len(sample), 4 * MiB):
            c.compress(sample[i:i + 4 * MiB])
        res[f"zstd{lvl}_mib_s"] = round(len(sample) / MiB / (time.perf_counter() - t))
    res["zstd_mib_s"] = res["zstd3_mib_s"]
    return res


# --------------------------------------------------------------------------- images

def make_sparse_tib(base, dst, pieces=16):
    """1 TiB sparse file holding the base image's content, in ``pieces`` slices
    spread evenly over the TiB (holes of the base stay holes)."""
    from workers.datapath.volume_io import data_extents
    size = os.path.getsize(base)
    piece = size // pieces
    stride = TiB // pieces
    with open(base, "rb") as src, open(dst, "wb") as out:
        out.truncate(TiB)
        sfd, ofd = src.fileno(), out.fileno()
        extents = list(data_extents(sfd, size))
        for k in range(pieces):
            lo, hi = k * piece, (k + 1) * piece if k < pieces - 1 else size
            for offset, length in extents:
                s, e = max(offset, lo), min(offset + length, hi)
                while s < e:
                    n = min(8 * MiB, e - s)
                    os.pwrite(ofd, os.pread(sfd, n, s), k * stride + (s - lo))
                    s += n


def make_tiled(base, dst, copies):
    """A volume of ``copies`` times the base image, each copy the base's content at
    k * its size (holes stay holes)."""
    from workers.datapath.volume_io import data_extents
    size = os.path.getsize(base)
    with open(base, "rb") as src, open(dst, "wb") as out:
        out.truncate(copies * size)
        sfd, ofd = src.fileno(), out.fileno()
        extents = list(data_extents(sfd, size))
        for k in range(copies):
            for offset, length in extents:
                done = 0
                while done < length:
                    n = os.copy_file_range(sfd, ofd, length - done, offset + done,
                                           k * size + offset + done)
                    if n <= 0:
                        raise OSError("copy_file_range copied nothing")
                    done += n
    return copies * size


def sql_side_figures(work, size_mib, base):
    """The figures that need the control plane's reference counting: delete_middle_s
    (delete of a middle backup of a 10-deep chain of the base image), gc_s,
    gc_objects_freed and gc_bytes_freed (GC of a store holding 100 backups), measured
    with the functions the delete and store_gc jobs run (bench/gc_figures.py)."""
    sys.path.insert(0, HERE)
    import gc_figures
    return gc_figures.measure(work, size_mib=size_mib, source=base)


def sha256_file(path, size):
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        left = size
        while left:
            b = f.read(min(8 * MiB, left))
            if not b:
                break
            h.update(b)
            left -= len(b)
    return h.hexdigest()


# --------------------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workdir", default=None, help="parent of the temporary directory")
    ap.add_argument("--store-dir", default=None,
                    help="parent of the stores' directories (default: the temporary "
                         "directory). /dev/shm takes the disk out of the figures")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--block-size", type=int, default=16 * 1024)
    ap.add_argument("--compression", default="zstd")
    ap.add_argument("--level", type=int, default=None)
    ap.add_argument("--skip-sparse", action="store_true")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--quick", action="store_true",
                    help="small sizes and one run, to check the script")
    ap.add_argument("--rss-multiples", default="1,4,16",
                    help="volume sizes (multiples of --size-mib) of peak_rss_mib_by_size")
    ap.add_argument("--skip-rss-sizes", action="store_true")
    ap.add_argument("--skip-concurrent", action="store_true")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(json.loads(a.child))

    sys.path.insert(0, ROOT)
    if a.quick:
        a.size_mib, a.runs, a.rss_multiples = 256, 1, "1,2,4"
    multiples = [int(m) for m in a.rss_multiples.split(",")]
    load_start = os.getloadavg()
    size = a.size_mib * MiB
    parent_dir = a.workdir or ("/work" if os.path.isdir("/work") else tempfile.gettempdir())
    free = shutil.disk_usage(parent_dir).free
    need = 5 * size + 512 * MiB + (0 if a.skip_rss_sizes else 2 * max(multiples) * size)
    if free < need:
        sys.exit(f"not enough free disk in {parent_dir}: {free >> 20} MiB free, need ~{need >> 20}")
    work = tempfile.mkdtemp(prefix="bench-datapath-", dir=parent_dir)
    stores = tempfile.mkdtemp(prefix="bench-stores-", dir=a.store_dir) if a.store_dir \
        else work
    log(f"workdir {work} ({free >> 30} GiB free), stores under {stores}")
    options = {"threads": a.threads, "block_size": a.block_size, "compression": a.compression}
    if a.level is not None:
        options["compression_level"] = a.level
    try:
        base, mod = os.path.join(work, "base.img"), os.path.join(work, "mod.img")
        t = time.perf_counter()
        p = subprocess.run([sys.executable, find_workload(), base, "--size-mib", str(a.size_mib),
                            "--modified", mod, "--percent", "1"], check=True,
                           capture_output=True, text=True)
        workload = json.loads(p.stdout.strip().splitlines()[-1])
        log(f"images made in {time.perf_counter() - t:.1f}s: {json.dumps(workload)}")
        from workers.datapath.codec import Codec
        level = Codec(a.compression if a.compression != "none" else "zstd", a.level).level
        kernel_level = level if a.compression == "zstd" else 3
        limit_samples = []

        def backup(store, source, bid, vsize, parent=None):
            return run_child({"op": "backup", "store": store, "source": source, "backup_id": bid,
                              "size": vsize, "parent": parent, "options": options})

        full, inc, rest, sparse = [], [], [], []
        keep_full = None
        for i in range(a.runs):
            # The kernels are timed beside every full backup (this machine's speed
            # drifts); the limit is the median of those samples, as full_mib_s is.
            limit_samples.append(single_thread_limits(base, kernel_level))
            log(f"single-thread limits: {limit_samples[-1]}")
            store = os.path.join(stores, f"store-full{i}")
            r = backup(store, base, f"full{i}", size)
            full.append(r)
            log(f"full #{i}: {r['elapsed_s']:.2f}s {size / MiB / r['elapsed_s']:.0f} MiB/s "
                f"stored {r['stored_bytes']} rss {r['maxrss_mib']:.0f} MiB")
            if keep_full is None:
                keep_full = (store, r)
            else:
                shutil.rmtree(store)
        store, fr = keep_full
        parent = [fr["container"], fr["prefix"]]
        want = sha256_file(mod, size)
        for i in range(a.runs):
            r = backup(store, mod, f"inc{i}", size, parent)
            assert r["incremental"], r
            inc.append(r)
            log(f"incremental #{i}: {r['elapsed_s']:.2f}s {size / MiB / r['elapsed_s']:.0f} MiB/s "
                f"stored {r['stored_bytes']} changed {r['changed_bytes']}")
        ref = [inc[-1]["container"], inc[-1]["prefix"]]
        for i in range(a.runs):
            target = os.path.join(work, "restore.img")
            with open(target, "wb") as f:     # an existing (sparse) volume
                f.truncate(size)
            r = run_child({"op": "restore", "store": store, "ref": ref, "target": target,
                           "options": options, "target_is_zeroed": False})
            got = sha256_file(target, size)
            if got != want:
                raise SystemExit(f"restore #{i} produced wrong data: {got} != {want}")
            rest.append(r)
            log(f"restore #{i}: {r['elapsed_s']:.2f}s {size / MiB / r['elapsed_s']:.0f} MiB/s "
                f"sha256 ok rss {r['maxrss_mib']:.0f} MiB")
            os.unlink(target)
        shutil.rmtree(store)
        if not a.skip_sparse:
            tib = os.path.join(work, "sparse-1tib.img")
            make_sparse_tib(base, tib)
            for i in range(a.runs):
                s2 = os.path.join(stores, f"store-sparse{i}")
                r = backup(s2, tib, f"sparse{i}", TiB)
                sparse.append(r)
                log(f"sparse 1 TiB #{i}: {r['elapsed_s']:.2f}s stored {r['stored_bytes']} "
                    f"rss {r['maxrss_mib']:.0f} MiB")
                shutil.rmtree(s2)
            os.unlink(tib)

        rss_by_size = {}
        if not a.skip_rss_sizes:
            for m in multiples:
                tiled = base if m == 1 else os.path.join(work, f"tiled{m}.img")
                vsize = size if m == 1 else make_tiled(base, tiled, m)
                s3 = os.path.join(stores, f"store-rss{m}")
                r = backup(s3, tiled, f"rss{m}", vsize)
                rss_by_size[str(m * a.size_mib)] = round(r["maxrss_mib"], 1)
                log(f"full of {m * a.size_mib} MiB: {r['elapsed_s']:.2f}s "
                    f"{vsize / MiB / r['elapsed_s']:.0f} MiB/s rss {r['maxrss_mib']:.0f} MiB")
                shutil.rmtree(s3)
                if tiled != base:
                    os.unlink(tiled)

        conc_ratios, conc_rss = [], []
        if not a.skip_concurrent:
            for i in range(a.runs):
                s4 = os.path.join(stores, f"store-conc{i}")
                alone = backup(s4, base, f"alone{i}", size)
                together = run_children([
                    {"op": "backup", "store": s4, "source": base, "backup_id": f"c{i}x{k}",
                     "size": size, "parent": None, "options": options} for k in range(4)],
                    together=True)
                span = max(r["t_end"] for r in together) - min(r["t_start"] for r in together)
                ratio = (4 * size / span) / (size / alone["elapsed_s"])
                conc_ratios.append(ratio)
                conc_rss.append(sum(r["maxrss_mib"] for r in together))
                log(f"concurrent4 #{i}: alone {alone['elapsed_s']:.2f}s, 4 together {span:.2f}s "
                    f"ratio {ratio:.3f} rss {conc_rss[-1]:.0f} MiB")
                shutil.rmtree(s4)

        med = statistics.median
        full_mib_s = size / MiB / med(r["elapsed_s"] for r in full)
        limits = {k: round(statistics.median(sample[k] for sample in limit_samples))
                  for k in limit_samples[0]}
        kernel_limit = 2 / (1 / limits["sha256_mib_s"] + 1 / limits["zstd1_mib_s"]) \
            if "zstd1_mib_s" in limits else None
        out = {
            "size_mib": a.size_mib,
            "full_mib_s": round(size / MiB / med(r["elapsed_s"] for r in full), 1),
            "incremental_mib_s": round(size / MiB / med(r["elapsed_s"] for r in inc), 1),
            "restore_mib_s": round(size / MiB / med(r["elapsed_s"] for r in rest), 1),
            "full_stored_bytes": int(med(r["stored_bytes"] for r in full)),
            "incremental_stored_bytes": int(med(r["stored_bytes"] for r in inc)),
            "peak_rss_mib": round(med(r["maxrss_mib"] for r in full), 1),
            "sparse_1tib_s": round(med(r["elapsed_s"] for r in sparse), 3) if sparse else None,
            "sparse_1gib_s": round(med(r["elapsed_s"] for r in full), 3),
            "read_mib_s": limits["read_mib_s"],
            "sha256_mib_s": limits["sha256_mib_s"],
            "zstd_mib_s": limits["zstd_mib_s"],
            "zstd_level": level if a.compression == "zstd" else None,
            f"zstd{level}_mib_s": limits.get(f"zstd{level}_mib_s"),
            "restore_peak_rss_mib": round(med(r["maxrss_mib"] for r in rest), 1),
            "block_size": a.block_size, "threads": a.threads, "compression": a.compression,
            "runs": a.runs,
            "zstd1_mib_s": limits.get("zstd1_mib_s"),
            "limit_mib_s": round(kernel_limit, 1) if kernel_limit else None,
            "limit_ratio": round(full_mib_s / kernel_limit, 3) if kernel_limit else None,
            "peak_rss_mib_by_size": rss_by_size or None,
            "concurrent4_ratio": round(med(conc_ratios), 3) if conc_ratios else None,
            "concurrent4_rss_mib": round(med(conc_rss), 1) if conc_rss else None,
            "loadavg_start": [round(x, 2) for x in load_start],
            "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        }
        # delete_middle_s, gc_s, gc_objects_freed, gc_bytes_freed: see sql_side_figures
        out.update(sql_side_figures(work, a.size_mib, base))
        out.update(datapath_crypto.encrypted_figures(run_child, sha256_file, work, base, mod,
                                                     size, options, a.runs, log,
                                                     stores=stores))
        out["store_dir"] = a.store_dir or parent_dir
        print(json.dumps(out), flush=True)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
            if stores != work:
                shutil.rmtree(stores, ignore_errors=True)


if __name__ == "__main__":
    main()

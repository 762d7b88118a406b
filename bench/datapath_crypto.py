"""Encryption figures of bench/datapath.py: the same full, incremental and restore
measurements on an encrypting driver (workers/stores/encrypted.py, AES-256-GCM per
object, HMAC-SHA256 block digests), run side by side with the plain ones.

Kept apart from datapath.py so that file only calls two functions.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import statistics
import sys

MiB = 1024 * 1024


def maybe_encrypting(driver, spec: dict):
    """The child's driver, encrypting when the spec says so (keys derived from the
    spec's seed, so the backup and restore children hold the same keyring)."""
    seed = spec.get("encrypted")
    if not seed:
        return driver
    from orchestrator.keys import Keyring
    from workers.stores.encrypted import encrypting

    def key(label: str) -> bytes:
        return hashlib.sha256(f"{seed}:{label}".encode()).digest()
    return encrypting(driver, Keyring("bench", "bench-data", {"bench-data": key("data")},
                                      "bench-identity", key("identity")))


def encrypted_figures(run_child, sha256_file, work: str, base: str, mod: str, size: int,
                      options: dict, runs: int, log=lambda *a: None, *,
                      stores: str | None = None) -> dict:
    """full_mib_s_encrypted, incremental_mib_s_encrypted, restore_mib_s_encrypted
    (medians of ``runs``), the restore checked byte for byte; and
    ``encrypted_full_ratio``: encrypted ÷ plain full backup throughput, the two run
    alternately (one pair per run), the median of the pairs' ratios. Stores go under
    ``stores`` (default ``work``), the restore target under ``work``."""
    seed = os.urandom(16).hex()
    stores = stores or work

    def backup(store, source, bid, parent=None, encrypted=True):
        spec = {"op": "backup", "store": store, "source": source, "backup_id": bid,
                "size": size, "parent": parent, "options": options}
        if encrypted:
            spec["encrypted"] = seed
        return run_child(spec)

    full, inc, rest, ratios = [], [], [], []
    store = None
    for i in range(runs):
        plain_store = os.path.join(stores, f"store-plain-full{i}")
        plain = backup(plain_store, base, f"pfull{i}", encrypted=False)
        shutil.rmtree(plain_store)
        s = os.path.join(stores, f"store-enc-full{i}")
        full.append(backup(s, base, f"efull{i}"))
        ratios.append(plain["elapsed_s"] / full[-1]["elapsed_s"])
        log(f"encrypted full #{i}: {size / MiB / full[-1]['elapsed_s']:.0f} MiB/s "
            f"(plain beside it {size / MiB / plain['elapsed_s']:.0f} MiB/s)")
        if store is None:
            store, first = s, full[-1]
        else:
            shutil.rmtree(s)
    parent = [first["container"], first["prefix"]]
    for i in range(runs):
        r = backup(store, mod, f"einc{i}", parent)
        if not r["incremental"]:
            raise RuntimeError(f"encrypted incremental took a full backup: {r['message']}")
        inc.append(r)
        log(f"encrypted incremental #{i}: {size / MiB / r['elapsed_s']:.0f} MiB/s")
    ref = [inc[-1]["container"], inc[-1]["prefix"]]
    want = sha256_file(mod, size)
    for i in range(runs):
        target = os.path.join(work, "restore-enc.img")
        with open(target, "wb") as f:
            f.truncate(size)
        r = run_child({"op": "restore", "store": store, "ref": ref, "target": target,
                       "options": options, "target_is_zeroed": False, "encrypted": seed})
        if sha256_file(target, size) != want:
            sys.exit(f"encrypted restore #{i} produced wrong data")
        rest.append(r)
        log(f"encrypted restore #{i}: {size / MiB / r['elapsed_s']:.0f} MiB/s")
        os.unlink(target)
    shutil.rmtree(store)
    med = statistics.median
    return {
        "full_mib_s_encrypted": round(size / MiB / med(r["elapsed_s"] for r in full), 1),
        "incremental_mib_s_encrypted": round(size / MiB / med(r["elapsed_s"] for r in inc), 1),
        "restore_mib_s_encrypted": round(size / MiB / med(r["elapsed_s"] for r in rest), 1),
        "encrypted_full_ratio": round(med(ratios), 3),
    }

"""Rebuild tests/datapath/data/format-v1 with the data path of some tree.

    python tests/datapath/make_format_v1_fixture.py /path/to/tree OUTDIR

The committed fixture was made with the tree at commit 390cbe3 (workers/drivers,
before the data path became a package), so test_datapath_format_v1.py checks
that backups written by that code still restore, verify and delete.
"""
import hashlib
import importlib
import json
import os
import sys
import tempfile
import zlib

import format_v1_images as images

# Each backup: id, compression, parent index (None: full), image stage, driver options.
SMALL = {"block_size": 4096, "segment_size": 64 * 1024, "pack_size": 48 * 1024}
PLAN = [
    ("v1full", "zstd", None, 0, SMALL),
    ("v1inc1", "zstd", 0, 1, SMALL),
    ("v1inc2", "zlib", 1, 2, SMALL),
    ("v1inc3", "none", 2, 3, SMALL),
    ("v1dflt", "zstd", None, 3, {}),
]


def main(tree: str, out: str) -> None:
    """Back up every stage of the image into a POSIX store at ``out``/store."""
    sys.path.insert(0, tree)
    try:
        api = importlib.import_module("workers.datapath")
        stores = importlib.import_module("workers.stores")
    except ImportError:
        api = stores = importlib.import_module("workers.drivers")
    import zstandard
    store = stores.make_store("posix", path=os.path.join(out, "store"))
    backups = []
    with tempfile.TemporaryDirectory() as work:
        image = os.path.join(work, "volume.img")
        for backup_id, compression, parent_index, stage, options in PLAN:
            images.build_image(image, stage)
            with open(image, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            driver = api.ChunkedDriver(store, compression=compression, **options)
            parent = backups[parent_index]["ref"] if parent_index is not None else None
            result = driver.backup(image, backup_id=backup_id, volume_id="fixture-volume",
                                   size_bytes=images.SIZE, parent=parent,
                                   volume_meta={"display_name": "fixture", "stage": stage})
            assert result.incremental == (parent is not None), result.message
            backups.append({"backup_id": backup_id, "ref": list(result.ref),
                            "compression": compression, "stage": stage,
                            "parent": parent, "options": options, "sha256": digest,
                            "stored_bytes": result.stored_bytes})
    meta = {"made_with": "commit 390cbe3 (workers/drivers/chunked.py)",
            "size_bytes": images.SIZE, "zstandard": zstandard.__version__,
            "zlib": zlib.ZLIB_RUNTIME_VERSION, "backups": backups}
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

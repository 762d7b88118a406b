"""The version-1 manifest's named types round-trip through encode/decode, byte for byte
(version 1 is still read; test_datapath_format_v2.py covers what is written now)."""
import base64
import hashlib
import json

import pytest
from dp_helpers import KiB

from workers.datapath import DIGEST_LEN
from workers.datapath import FORMAT
from workers.datapath import BackupRef
from workers.datapath import Frame
from workers.datapath import IntegrityError
from workers.datapath import InvalidBackup
from workers.datapath import Manifest
from workers.datapath import ZeroedRun
from workers.datapath import decode_manifest
from workers.datapath import encode_manifest
from workers.datapath.format import BackupStats
from workers.datapath.format import PackObject
from workers.datapath.format import ParentLink
from workers.datapath.format import check_manifest
from workers.datapath.format import encode_digests

REF = BackupRef("ab/cd/abcdef", "backup_abcdef")
BLOCK = 4 * KiB
SEGMENT = 16 * KiB


def _digests(*blocks):
    return encode_digests(b"".join(hashlib.sha256(b).digest() for b in blocks))


def _manifest(**changes):
    fields = dict(
        driver="orchestrator.drivers.chunked", backup_id="abcdef", volume_id="vol-1",
        created_at="2026-01-02T03:04:05+00:00",
        container=REF.container, prefix=REF.prefix, size_bytes=10 * BLOCK + 100,
        block_size=BLOCK, segment_size=SEGMENT, compression="zstd", compression_level=1,
        incremental=True,
        parent=ParentLink("ab/cd/abcd00", "backup_abcd00", "abcd00"), chain_depth=2,
        volume_meta={"display_name": "db", "bootable": False},
        objects=[PackObject("data-00000000", 300, "a" * 64),
                 PackObject("data-00000001", 50, "b" * 64)],
        frames=[Frame(0, 0, 120, 0, 2, _digests(b"x", b"y")),
                Frame(0, 120, 180, 5, 3, _digests(b"a", b"b", b"c")),
                Frame(1, 0, 50, 10, 1, _digests(b"tail"))],
        zeroed=[ZeroedRun(2, 2), ZeroedRun(8, 1)],
        stats=BackupStats(data_bytes=7 * BLOCK, changed_bytes=6 * BLOCK, pack_bytes=350))
    fields.update(changes)
    return Manifest(**fields)


def test_frame_and_zeroed_run_are_the_wire_lists():
    frame = Frame(pack_index=1, pack_offset=20, compressed_length=30, first_block=40,
                  block_count=2, digests=_digests(b"p", b"q"))
    assert json.loads(json.dumps(frame)) == [1, 20, 30, 40, 2, frame.digests]
    assert Frame(*json.loads(json.dumps(frame))) == frame
    assert frame.end_block == 42
    assert frame.block_digests() == hashlib.sha256(b"p").digest() + hashlib.sha256(b"q").digest()
    run = ZeroedRun(first_block=7, block_count=3)
    assert json.loads(json.dumps(run)) == [7, 3]


def test_manifest_round_trips_through_encode_and_decode():
    manifest = _manifest()
    raw = encode_manifest(manifest.to_body())
    body = decode_manifest(raw)
    again = check_manifest(body, REF)
    assert again == manifest                   # every named field, frames and runs included
    assert again.body is body
    assert all(type(f) is Frame for f in again.frames)
    assert all(type(z) is ZeroedRun for z in again.zeroed)
    assert encode_manifest(again.to_body()) == raw          # byte for byte
    assert again.ref == REF and again.parent.ref == BackupRef("ab/cd/abcd00", "backup_abcd00")
    assert again.block_count == 11 and again.blocks_per_segment == 4
    assert again.block_range_bytes(10, 1) == 100             # the partial last block


def test_manifest_wire_layout():
    body = json.loads(encode_manifest(_manifest().to_body()).split(b"\n#sha256:")[0])
    assert sorted(body) == sorted([
        "format", "version", "driver", "backup_id", "volume_id", "created_at", "container",
        "prefix", "size_bytes", "block_size", "segment_size", "digest", "compression",
        "compression_level", "incremental", "parent", "chain_depth", "volume_meta",
        "objects", "frames", "zeroed", "stats"])
    assert (body["format"], body["version"], body["driver"], body["digest"]) == \
        (FORMAT, 1, "orchestrator.drivers.chunked", "sha256")
    assert body["objects"][0] == {"name": "data-00000000", "size": 300, "sha256": "a" * 64}
    assert body["parent"] == {"container": "ab/cd/abcd00", "prefix": "backup_abcd00",
                              "backup_id": "abcd00"}
    assert body["frames"][1][:5] == [0, 120, 180, 5, 3]
    assert body["zeroed"] == [[2, 2], [8, 1]]
    assert body["stats"] == {"data_bytes": 7 * BLOCK, "changed_bytes": 6 * BLOCK,
                             "pack_bytes": 350}


def test_full_backup_manifest_round_trips():
    manifest = _manifest(parent=None, chain_depth=0, incremental=False, zeroed=[])
    body = decode_manifest(encode_manifest(manifest.to_body()))
    assert body["parent"] is None
    assert check_manifest(body, REF) == manifest


@pytest.mark.parametrize("change,match", [
    (dict(frames=[Frame(2, 0, 1, 0, 1, _digests(b"x"))]), "outside its object"),
    (dict(frames=[Frame(0, 290, 20, 0, 1, _digests(b"x"))]), "outside its object"),
    (dict(frames=[Frame(0, 0, 10, 3, 2, _digests(b"x", b"y"))]), "bad block range"),
    (dict(frames=[Frame(0, 0, 10, 10, 2, _digests(b"x", b"y"))]), "bad block range"),
    (dict(zeroed=[ZeroedRun(10, 2)]), "bad zeroed range"),
    (dict(chain_depth=0), "disagree"),
    (dict(compression="lz4"), "unknown compression"),
])
def test_check_manifest_names_what_is_wrong(change, match):
    body = decode_manifest(encode_manifest(_manifest(**change).to_body()))
    with pytest.raises(InvalidBackup, match=match):
        check_manifest(body, REF)


def test_check_manifest_refuses_other_backups_and_malformed_frames():
    body = decode_manifest(encode_manifest(_manifest().to_body()))
    with pytest.raises(InvalidBackup, match="belongs to"):
        check_manifest(body, BackupRef("ab/cd/abcdef", "backup_other"))
    body["frames"][0] = body["frames"][0][:5]
    with pytest.raises(InvalidBackup, match="malformed"):
        check_manifest(body, REF)


def test_frame_digest_list_is_checked_when_used():
    assert len(Frame(0, 0, 1, 0, 2, _digests(b"x", b"y")).block_digests()) == 2 * DIGEST_LEN
    with pytest.raises(InvalidBackup, match="wrong length"):
        Frame(0, 0, 1, 0, 3, _digests(b"x", b"y")).block_digests()
    with pytest.raises(InvalidBackup, match="base64"):
        Frame(0, 0, 1, 0, 1, "not base64!").block_digests()
    assert base64.b64decode(_digests(b"x")) == hashlib.sha256(b"x").digest()


def test_damaged_manifest_bytes_are_integrity_errors():
    raw = encode_manifest(_manifest().to_body())
    with pytest.raises(IntegrityError, match="checksum"):
        decode_manifest(raw.replace(b'"zstd"', b'"zlib"'))
    with pytest.raises(IntegrityError, match="truncated"):
        decode_manifest(raw[:-5])

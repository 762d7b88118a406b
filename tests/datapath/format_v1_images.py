"""The volume images behind the committed format-v1 fixture (tests/datapath/data/format-v1).

Standard library only, deterministic: the same stage always gives the same
bytes, so the fixture can be rebuilt (make_format_v1_fixture.py) and the current
code can be checked to write what the old code wrote.

Stage 0 is a sparse image with text-like data, a random run, a repeating
pattern, explicit zeros, holes and a partial last block; each later stage
changes some blocks, zeroes others and touches the last block.
"""
import random

KiB = 1024
MiB = 1024 * KiB

SIZE = 3 * MiB + 1000            # the last 4 KiB block is partial
STAGES = 4
_WORDS = [b"volume", b"backup", b"chunk", b"frame", b"pack", b"block", b"zero", b"digest",
          b"manifest", b"restore", b"verify", b"segment", b"sparse", b"node", b"az-1"]


def _text(rng: random.Random, length: int) -> bytes:
    """Log-like lines from a small vocabulary (zstd and zlib shrink them well)."""
    out = bytearray()
    line = 0
    while len(out) < length:
        words = b" ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 9)))
        out += b"%06d %s\n" % (line, words)
        line += 1
    return bytes(out[:length])


def _write(f, offset: int, data: bytes) -> None:
    f.seek(offset)
    f.write(data)


def _stage_0(f, rng: random.Random) -> None:
    f.truncate(SIZE)
    _write(f, 0, _text(rng, 192 * KiB))
    _write(f, 1 * MiB, rng.randbytes(24 * KiB))
    _write(f, 1536 * KiB, b"\x5a\xa5pattern-" * (256 * KiB // 10))
    _write(f, 2 * MiB, bytes(64 * KiB))                       # explicit zeros, not a hole
    _write(f, SIZE - 500, _text(rng, 500))                    # inside the partial block


def _stage_1(f, rng: random.Random) -> None:
    _write(f, 10 * KiB, rng.randbytes(100))
    _write(f, 64 * KiB - 50, _text(rng, 100))                 # across a segment boundary
    _write(f, 1600 * KiB, bytes(40 * KiB))                    # data made zero: zeroed runs
    _write(f, 100 * KiB, bytes(12 * KiB))
    _write(f, 2600 * KiB, _text(rng, 8 * KiB))                # new data in a hole


def _stage_2(f, rng: random.Random) -> None:
    _write(f, 1 * MiB + 4 * KiB, rng.randbytes(4 * KiB))
    _write(f, 1600 * KiB, _text(rng, 8 * KiB))                # zeroed before, data again
    _write(f, SIZE - 300, b"\xee" * 300)                      # the partial last block


def _stage_3(f, rng: random.Random) -> None:
    _write(f, 150 * KiB, _text(rng, 2 * KiB))
    _write(f, 2600 * KiB, bytes(8 * KiB))


def build_image(path: str, stage: int) -> None:
    """Write the image as it is after ``stage`` (0 .. STAGES-1) to ``path``."""
    with open(path, "wb") as f:
        for number, step in enumerate((_stage_0, _stage_1, _stage_2, _stage_3)[:stage + 1]):
            step(f, random.Random(1000 + number))

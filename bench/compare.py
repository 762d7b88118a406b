"""Run one benchmark on this tree and on an earlier commit, alternating, and compare.

    python bench/compare.py --base 390cbe3 --rounds 3 -- bench/api.py --db sqlite ...

The earlier commit is checked out in a temporary git worktree; each round runs
the benchmark there and here (then here and there, so neither side always runs
first), each with its own tree first on PYTHONPATH, and reads the JSON object
the benchmark prints as its last line. The last line printed here is a JSON
object: per numeric key the median of each side and new/base.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_once(tree: Path, command: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run([sys.executable, *command], cwd=str(tree), env=env, text=True,
                          capture_output=True)
    lines = [ln for ln in done.stdout.strip().splitlines() if ln.strip()]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{tree}: {' '.join(command)} failed ({done.returncode}):\n"
                         f"{done.stderr[-3000:]}")
    return json.loads(lines[-1])


def numeric(result: dict, prefix: str = "") -> dict[str, float]:
    """The numbers of a (nested) result, keyed by their dotted path."""
    out: dict[str, float] = {}
    for key, value in result.items():
        path = f"{prefix}{key}"
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            out[path] = float(value)
        elif isinstance(value, dict):
            out.update(numeric(value, f"{path}."))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", required=True, help="the commit to compare with")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("command", nargs=argparse.REMAINDER,
                        help="-- the benchmark script and its arguments")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the benchmark after --")
    runs: dict[str, list[dict[str, float]]] = {"base": [], "new": []}
    with tempfile.TemporaryDirectory(prefix="bench-base-") as tmp:
        base = Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base),
                        args.base], check=True, capture_output=True)
        shared = ROOT.parent / "shared"  # the benchmarks read ../shared/bench
        if shared.exists():
            os.symlink(shared, Path(tmp) / "shared")
        base_bench = Path(base) / command[0]
        if not base_bench.exists():  # the benchmark itself may be newer than the base
            base_bench.parent.mkdir(parents=True, exist_ok=True)
            base_bench.write_bytes((ROOT / command[0]).read_bytes())
        try:
            for round_no in range(args.rounds):
                order = [("base", base), ("new", ROOT)]
                for side, tree in order if round_no % 2 == 0 else reversed(order):
                    result = numeric(run_once(tree, command))
                    runs[side].append(result)
                    print(json.dumps({"round": round_no, "side": side, **result}),
                          file=sys.stderr, flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                            str(base)], check=False, capture_output=True)
    summary = {}
    for key in sorted(set(runs["base"][0]) & set(runs["new"][0])):
        base_median = statistics.median(r[key] for r in runs["base"] if key in r)
        new_median = statistics.median(r[key] for r in runs["new"] if key in r)
        summary[key] = {"base": round(base_median, 3), "new": round(new_median, 3),
                        "new_over_base": round(new_median / base_median, 3)
                        if base_median else None}
    print(json.dumps({"base": args.base, "rounds": args.rounds, "command": command,
                      "figures": summary}))


if __name__ == "__main__":
    main()

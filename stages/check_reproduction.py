"""Reproduce pipeline stages and check the two promises that hold on any machine.

    check-reproduction [TARGET ...] [--tolerance 0.01]
    python -m stages.check_reproduction evaluate@toy

1. **Same params, same bytes on this machine.** ``dvc repro TARGET`` runs what is out of
   date, then ``dvc repro -f TARGET`` runs every stage again: each output must come out
   byte for byte as the first run wrote it. A time stamp, an unseeded draw or an
   unordered listing in an output fails here, on whatever machine runs it.
2. **The committed metrics, on any machine.** Every metrics file that git tracks must
   agree with the committed one: the same keys, the same strings and whole numbers, and
   fractional numbers within ``--tolerance``. TensorFlow's CPU kernels round differently
   on other instruction sets (AVX-512, AVX2, SSE4.1) and in other releases, so the
   trained models' bytes are only comparable on one machine with one set of versions;
   what they score is comparable everywhere.

It also says whether the outputs match the committed ``dvc.lock`` byte for byte (they do
on a CPU like the one that wrote it, with the versions of ``constraints.txt``), but that
is information, not a verdict. Afterwards ``dvc.lock`` and ``metrics/`` are restored to
the commit, so ``git status`` is as before (the workspace keeps this machine's outputs,
which ``dvc status`` then lists as modified). Exit status 0 when both promises hold, 1
when one does not, 2 when the check cannot run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import yaml

from stages.cli import run_stage
from stages.errors import StageError
from stages.run_pipeline import repro

LOCK_FILE = Path("dvc.lock")
METRICS_DIR = Path("metrics")


def dvc_repro(*args: str) -> list[str]:
    """``dvc repro ARGS`` in the repository, its output shown as it comes; returns the
    stages it ran."""
    print(f"$ dvc repro {' '.join(args)}", flush=True)
    status, log = repro(list(args))
    if status != 0:
        raise StageError(f"dvc repro {' '.join(args)} exited with {status}")
    return log.ran


def committed(path: Path) -> str | None:
    """A file's text at HEAD, or None when git does not track it there."""
    result = subprocess.run(["git", "show", f"HEAD:{path.as_posix()}"], capture_output=True, text=True)
    return result.stdout if result.returncode == 0 else None


def output_hashes(lock_text: str | None, stages: list[str]) -> dict[str, str]:
    """``{output path: md5}`` of every output of ``stages`` in a dvc.lock's text."""
    locked = (yaml.safe_load(lock_text) or {}).get("stages", {}) if lock_text else {}
    return {out["path"]: out.get("md5", "") for name in stages for out in locked.get(name, {}).get("outs", [])}


def leaves(data: object, prefix: str = "") -> Iterator[tuple[str, object]]:
    """``(dotted key, value)`` for every leaf of a JSON document."""
    if isinstance(data, Mapping):
        for key, value in data.items():
            yield from leaves(value, f"{prefix}{key}.")
    else:
        yield prefix.rstrip("."), data


def metric_differences(old: object, new: object, tolerance: float) -> tuple[list[str], float]:
    """What differs between two metrics documents beyond ``tolerance``, one line each, and
    the largest difference of a fractional number. Keys, strings, booleans and whole
    numbers must be equal; fractional numbers within ``tolerance``."""
    old_leaves, new_leaves = dict(leaves(old)), dict(leaves(new))
    lines = [f"{key}: missing" for key in sorted(old_leaves.keys() - new_leaves.keys())]
    lines += [f"{key}: not in the commit" for key in sorted(new_leaves.keys() - old_leaves.keys())]
    largest = 0.0
    for key in sorted(old_leaves.keys() & new_leaves.keys()):
        was, now = old_leaves[key], new_leaves[key]
        fractional = isinstance(was, float) or isinstance(now, float)
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (was, now))
        if numbers and fractional:
            largest = max(largest, abs(now - was))
            if abs(now - was) > tolerance:
                lines.append(f"{key}: {was} committed, {now} now (more than {tolerance:g} apart)")
        elif was != now:
            lines.append(f"{key}: {was!r} committed, {now!r} now")
    return lines, largest


def compare_metrics(tolerance: float) -> tuple[int, list[str], float]:
    """The number of git-tracked metrics files, what in them moved from the commit, and the
    largest difference of a fractional metric."""
    tracked = subprocess.run(["git", "ls-files", "--", str(METRICS_DIR)], capture_output=True, text=True,
                             check=True).stdout.split()
    problems, largest = [], 0.0
    for name in tracked:
        path = Path(name)
        if not path.is_file():
            problems.append(f"{path}: not written")
            continue
        lines, difference = metric_differences(json.loads(committed(path) or "{}"), json.loads(path.read_text()),
                                               tolerance)
        problems += [f"{path}: {line}" for line in lines]
        largest = max(largest, difference)
    return len(tracked), problems, largest


def changed_outputs(before: Mapping[str, str], after: Mapping[str, str]) -> list[str]:
    return sorted(path for path in before.keys() | after.keys() if before.get(path) != after.get(path))


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="check-reproduction", description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="*", help="stages to reproduce, as for dvc repro (default: all)")
    parser.add_argument("--tolerance", type=float, default=0.01,
                        help="how far a fractional metric may be from the committed one (default 0.01)")
    args = parser.parse_args(argv)
    committed_lock = committed(LOCK_FILE)
    if not LOCK_FILE.is_file() and committed_lock is None:
        raise StageError(f"{LOCK_FILE}: not found (run from the project root)")
    try:
        dvc_repro(*args.targets)
        first_lock = LOCK_FILE.read_text()
        reproduced = dvc_repro("--force", *args.targets)  # every stage the targets need
        first, second = output_hashes(first_lock, reproduced), output_hashes(LOCK_FILE.read_text(), reproduced)
        n_files, moved, largest = compare_metrics(args.tolerance)
    finally:  # leave git's files as they were, whatever happened
        subprocess.run(["git", "checkout", "HEAD", "--", str(LOCK_FILE), str(METRICS_DIR)], capture_output=True)

    rerun_changed = changed_outputs(first, second)
    print(f"\nsame machine: {len(first) - len(rerun_changed)} of {len(first)} outputs came out "
          "byte-identical when every stage ran again")
    for path in rerun_changed:
        print(f"  DIFFERS {path}: {first.get(path)} then {second.get(path)}")
    against_commit = changed_outputs(output_hashes(committed_lock, reproduced), first)
    against_commit = [path for path in against_commit if path in first]
    print(f"committed dvc.lock: {len(first) - len(against_commit)} of {len(first)} outputs byte-identical"
          + (" (another CPU or other library versions wrote the rest: only their metrics are compared)"
             if against_commit else ""))
    print(f"metrics: {n_files} committed files, "
          + (f"{len(moved)} values moved by more than {args.tolerance:g}:" if moved
             else f"every value within {args.tolerance:g} of the commit")
          + f" (largest difference {largest:.4g})")
    for line in moved:
        print(f"  MOVED {line}")
    if rerun_changed or moved:
        print("check-reproduction: FAILED")
        sys.exit(1)
    print("check-reproduction: passed")


def cli() -> None:
    run_stage(main)


if __name__ == "__main__":
    cli()

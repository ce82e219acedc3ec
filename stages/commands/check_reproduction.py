"""Reproduce pipeline stages and check the two promises that hold on any machine.

    check-reproduction [TARGET ...] [--tolerance 0.01]
    python -m stages.commands.check_reproduction evaluate@toy

1. **Same params, same bytes on this machine.** ``dvc repro -f TARGET`` runs every stage,
   then runs every stage again: each output must come out byte for byte as the first run
   wrote it (outputs already in the workspace may come from ``dvc pull`` or another CPU,
   so the first run is forced too). A time stamp, an unseeded draw or an
   unordered listing in an output fails here, on whatever machine runs it.
2. **The metrics the workspace held, on any machine.** Every metrics file under
   ``metrics/`` must agree with what it held before the check: the same keys, the same
   strings and whole numbers, and fractional numbers within ``--tolerance``. On a clean
   working tree those are the committed metrics; with an uncommitted experiment (its
   params, ``dvc.lock`` and metrics changed), the experiment's own. TensorFlow's CPU
   kernels round differently on other instruction sets (AVX-512, AVX2, SSE4.1) and in
   other releases, so the trained models' bytes are only comparable on one machine with
   one set of versions; what they score is comparable everywhere.

It also says whether the outputs match the ``dvc.lock`` of before the check byte for
byte (they do on a CPU like the one that wrote it, with the versions of
``constraints.txt``), but that is information, not a verdict. It fails, too, when DVC's
output does not name every stage the targets need (DVC's own graph says which) as run:
then it could not tell which outputs to compare.

Whatever happens, Ctrl-C and errors included, it ends by putting back the bytes that
``dvc.lock``, ``params.yaml``, every file under ``metrics/`` and every other file git
tracks that ``dvc repro`` may rewrite held before it ran (deleting those that did not
exist), and their entries in git's index (with core.autostage set, DVC stages the lock
files it changes); so ``git status`` is as before, committed or not. The workspace keeps
this machine's outputs, which ``dvc status`` then lists as modified. Exit status 0 when
both promises hold, 1 when one does not, 2 when the check cannot run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import yaml
from dvc.dvcfile import PROJECT_FILE
from dvc.exceptions import DvcException
from dvc.repo import Repo
from dvc.repo.reproduce import collect_stages, get_active_graph, plan_repro

from stages.commands.run_pipeline import repro
from stages.shared.config import StageError, one_line
from stages.shared.runner import run_stage

LOCK_FILE = Path("dvc.lock")
PARAMS_FILE = Path("params.yaml")
METRICS_DIR = Path("metrics")

Snapshot = dict[Path, bytes | None]  # a file's bytes, or None when it did not exist


def dvc_repro(*args: str) -> list[str]:
    """``dvc repro ARGS`` in the repository, its output shown as it comes; returns the
    stages its output names as run."""
    print(f"$ dvc repro {' '.join(args)}", flush=True)
    status, log = repro(list(args))
    if status != 0:
        raise StageError(f"dvc repro {' '.join(args)} exited with {status}")
    return log.ran


def stages_and_outputs(targets: list[str]) -> tuple[list[str], list[Path]]:
    """From DVC's own graph: the stages ``dvc repro --force TARGETS`` runs (planned as
    dvc repro plans them; frozen stages and data that ``.dvc`` files track have no command
    to run), and the output paths of every stage of the repository."""
    try:
        with Repo() as repo:
            graph = get_active_graph(repo.index.graph)
            planned = plan_repro(graph, collect_stages(repo, targets or [PROJECT_FILE]))
            stages = [stage.addressing for stage in planned if stage.cmd and not stage.frozen]
            outputs = [
                Path(os.path.relpath(out.fs_path, repo.root_dir)) for stage in repo.index.stages for out in stage.outs
            ]
    except DvcException as err:
        raise StageError(f"{' '.join(targets) or PROJECT_FILE}: {one_line(err)}") from err
    return stages, outputs


def files_under(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file())


def files_dvc_may_rewrite(outputs: Iterable[Path]) -> list[Path]:
    """dvc.lock, params.yaml, every file under metrics/, and every file git tracks that a
    ``dvc repro`` may rewrite: a lock file, a .gitignore (DVC lists its outputs there), or
    an output that git keeps instead of DVC's cache."""
    listed = subprocess.run(["git", "ls-files", "-z"], capture_output=True, text=True, check=True).stdout
    tracked = [Path(name) for name in listed.split("\0") if name]
    rewritable = [
        path
        for path in tracked
        if path.name in (LOCK_FILE.name, ".gitignore")
        or any(path == output or output in path.parents for output in outputs)
    ]
    return sorted({LOCK_FILE, PARAMS_FILE, *files_under(METRICS_DIR), *rewritable})


def take_snapshot(paths: Iterable[Path]) -> Snapshot:
    return {path: path.read_bytes() if path.is_file() else None for path in paths}


def restore(snapshot: Snapshot) -> None:
    """Put back every file's bytes as in ``snapshot``: delete those that did not exist then,
    and files that have appeared under metrics/ since."""
    for path in set(files_under(METRICS_DIR)) - snapshot.keys():
        path.unlink()
    for path, content in snapshot.items():
        if content is None:
            path.unlink(missing_ok=True)
        elif not path.is_file() or path.read_bytes() != content:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)


def index_entries(paths: Iterable[Path]) -> dict[Path, str]:
    """Git's index entry of each of ``paths`` (and of the files under them) that it holds, as
    ``git update-index --cacheinfo`` takes it: ``MODE,BLOB``."""
    listed = subprocess.run(
        ["git", "--literal-pathspecs", "ls-files", "--stage", "-z", "--", *map(str, paths)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    entries = {}
    for record in filter(None, listed.split("\0")):
        info, name = record.split("\t", 1)
        mode, blob, _ = info.split()
        entries[Path(name)] = f"{mode},{blob}"
    return entries


def restore_index(entries: Mapping[Path, str], paths: Iterable[Path]) -> None:
    """Put git's index entries of ``paths`` back as ``entries``: with core.autostage set,
    as in this project, ``dvc repro`` stages the lock files it writes."""
    now = index_entries(paths)
    for path in now.keys() - entries.keys():
        subprocess.run(["git", "update-index", "--force-remove", "--", str(path)], check=True)
    for path, entry in entries.items():
        if now.get(path) != entry:
            subprocess.run(["git", "update-index", "--add", "--cacheinfo", f"{entry},{path}"], check=True)


def committed(path: Path) -> bytes | None:
    """A file's bytes at HEAD, or None when git does not track it there."""
    result = subprocess.run(["git", "show", f"HEAD:{path.as_posix()}"], capture_output=True)
    return result.stdout if result.returncode == 0 else None


def uncommitted(snapshot: Snapshot) -> list[Path]:
    """The files of ``snapshot`` whose bytes are not the commit's."""
    return [path for path, content in snapshot.items() if content != committed(path)]


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
    lines += [f"{key}: not there before" for key in sorted(new_leaves.keys() - old_leaves.keys())]
    largest = 0.0
    for key in sorted(old_leaves.keys() & new_leaves.keys()):
        was, now = old_leaves[key], new_leaves[key]
        fractional = isinstance(was, float) or isinstance(now, float)
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (was, now))
        if numbers and fractional:
            largest = max(largest, abs(now - was))
            if abs(now - was) > tolerance:
                lines.append(f"{key}: {was} before, {now} now (more than {tolerance:g} apart)")
        elif was != now:
            lines.append(f"{key}: {was!r} before, {now!r} now")
    return lines, largest


def compare_metrics(before: Snapshot, tolerance: float) -> tuple[int, list[str], float]:
    """The number of metrics files (JSON under metrics/) the workspace held before the check,
    what in them moved since, and the largest difference of a fractional metric."""
    metrics = {
        path: content
        for path, content in before.items()
        if METRICS_DIR in path.parents and path.suffix == ".json" and content is not None
    }
    problems, largest = [], 0.0
    for path, content in sorted(metrics.items()):
        if not path.is_file():
            problems.append(f"{path}: not written")
            continue
        lines, difference = metric_differences(json.loads(content), json.loads(path.read_bytes()), tolerance)
        problems += [f"{path}: {line}" for line in lines]
        largest = max(largest, difference)
    return len(metrics), problems, largest


def check_stages_ran(targets: list[str], needed: list[str], reproduced: list[str]) -> None:
    """Stop unless DVC's output named as run every stage the targets need: a check of the
    outputs of stages it cannot name would pass having checked nothing."""
    missing = [stage for stage in needed if stage not in reproduced]
    if missing:
        raise StageError(
            f"{' '.join(['dvc repro --force', *targets])}: DVC's output named {len(needed) - len(missing)} of the "
            f"{len(needed)} stages it had to run ({', '.join(missing)} missing); was its \"Running stage '...'\" "
            "line reworded? (docs/ci.md lists the DVC versions tried)"
        )


def changed_outputs(before: Mapping[str, str], after: Mapping[str, str]) -> list[str]:
    return sorted(path for path in before.keys() | after.keys() if before.get(path) != after.get(path))


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="check-reproduction", description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="*", help="stages to reproduce, as for dvc repro (default: all)")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=0.01,
        help="how far a fractional metric may move from what the workspace held (default 0.01)",
    )
    args = parser.parse_args(argv)
    if not LOCK_FILE.is_file():
        raise StageError(f"{LOCK_FILE}: not found (run from the project root, after a first dvc repro)")
    needed, outputs = stages_and_outputs(args.targets)
    if not needed:
        raise StageError(f"{' '.join(args.targets) or PROJECT_FILE}: no stage to run (only frozen ones, or data)")
    files = files_dvc_may_rewrite(outputs)
    index_paths = [*files, METRICS_DIR]  # and files that appear under metrics/
    before, staged = take_snapshot(files), index_entries(index_paths)
    try:
        # Both runs forced: outputs that were there before (pulled, or written with another
        # CPU's kernels) are not this machine's first run.
        check_stages_ran(args.targets, needed, dvc_repro("--force", *args.targets))
        first_lock = LOCK_FILE.read_text()
        check_stages_ran(args.targets, needed, dvc_repro("--force", *args.targets))
        first, second = output_hashes(first_lock, needed), output_hashes(LOCK_FILE.read_text(), needed)
        n_files, moved, largest = compare_metrics(before, args.tolerance)
    finally:  # leave git's files as they were, whatever happened
        restore(before)
        restore_index(staged, index_paths)

    changes = uncommitted(before)
    print(
        "\ncompared with the workspace before the check: "
        + (
            f"uncommitted changes to {', '.join(map(str, changes))}, not the commit"
            if changes
            else "the commit's dvc.lock and metrics"
        )
    )
    rerun_changed = changed_outputs(first, second)
    print(
        f"same machine: {len(first) - len(rerun_changed)} of {len(first)} outputs came out "
        "byte-identical when every stage ran again"
    )
    for path in rerun_changed:
        print(f"  DIFFERS {path}: {first.get(path)} then {second.get(path)}")
    against_before = changed_outputs(output_hashes(before[LOCK_FILE].decode(), needed), first)
    against_before = [path for path in against_before if path in first]
    print(
        f"dvc.lock before the check: {len(first) - len(against_before)} of {len(first)} outputs byte-identical"
        + (
            " (another CPU, other library versions or other inputs wrote the rest: only their metrics are compared)"
            if against_before
            else ""
        )
    )
    print(
        f"metrics: {n_files} files, "
        + (
            f"{len(moved)} values moved by more than {args.tolerance:g}:"
            if moved
            else f"every value within {args.tolerance:g} of before the check"
        )
        + f" (largest difference {largest:.4g})"
    )
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

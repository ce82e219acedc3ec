"""Every output's md5 of the full pipeline on tiny data and of the toy stages at full size,
run from scratch in temporary copies of a checkout: the check that a change which must not
alter any output (a refactor, a move of modules) does not.

    python tools/output_md5s.py WORK_FOLDER > before.json    # in the checkout before the change
    python tools/output_md5s.py WORK_FOLDER > after.json     # and after it, on the same machine

Prints ``{"tiny": {path: md5}, "toy": {...}}``. The tiny params and data are the
tests' (``small_pipeline_params``, ``write_tiny_inputs`` in tests/conftest.py), so the two
runs compare like with like; a model's bytes depend on the CPU, so compare on one machine.
WORK_FOLDER is emptied first and keeps both repositories afterwards.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's own tests

from stages.commands.check_reproduction import output_hashes
from tests.conftest import dvc, edit_params, make_project_repo, small_pipeline_params, write_tiny_inputs


def output_md5s(repo: Path, stages: set[str]) -> dict[str, str]:
    """``{path: md5}`` of every output in ``repo``'s dvc.lock, which must hold every stage
    named in ``stages`` (a ``foreach`` stage by its name before the ``@``): an empty or
    partial lock would compare equal having compared nothing."""
    lock = (repo / "dvc.lock").read_text()
    locked = list(yaml.safe_load(lock)["stages"])
    missing = stages - {name.split("@")[0] for name in locked}
    if missing:
        raise SystemExit(f"{repo}/dvc.lock: no entry for {sorted(missing)}")
    return output_hashes(lock, locked)


def main() -> None:
    work = Path(sys.argv[1]).resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    tiny = make_project_repo(work / "tiny")
    edit_params(tiny, small_pipeline_params())
    write_tiny_inputs(tiny)
    (tiny / "dvc.lock").unlink(missing_ok=True)  # from scratch: nothing restored from the committed lock
    dvc(tiny, "repro")
    toy = make_project_repo(work / "toy")
    (toy / "dvc.lock").unlink(missing_ok=True)
    dvc(toy, "repro", "evaluate@toy")
    every_stage = set(yaml.safe_load((tiny / "dvc.yaml").read_text())["stages"])
    md5s = {"tiny": output_md5s(tiny, every_stage), "toy": output_md5s(toy, {"generate_toy", "train_toy", "evaluate"})}
    print(json.dumps(md5s, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()

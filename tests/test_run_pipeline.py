"""run-pipeline: `dvc repro --keep-going` that ends by naming what could not run and why."""

from __future__ import annotations

import sys

import yaml

from stages.run_pipeline import ReproLog
from tests.conftest import dvc, git, run

FAIL = "import sys; print('error: could not download X (no network); set section.key to a local file', file=sys.stderr); sys.exit(2)"


def test_a_failed_stage_stops_only_what_needs_it_and_the_summary_names_its_reason(tmp_path):
    git(tmp_path, "init", "-q", "-b", "main")
    dvc(tmp_path, "init", "-q")
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "download": {"cmd": f'python -c "{FAIL}"', "outs": ["data.txt"]},
        "train": {"cmd": "cp data.txt model.txt", "deps": ["data.txt"], "outs": ["model.txt"]},
        "toy": {"cmd": "echo toy > toy.txt", "outs": ["toy.txt"]},
    }}))
    result = run([sys.executable, "-m", "stages.run_pipeline"], tmp_path, check=False)
    assert result.returncode != 0
    assert (tmp_path / "toy.txt").read_text() == "toy\n"  # the stage that needs no download ran
    assert not (tmp_path / "model.txt").exists()
    assert result.stdout.splitlines()[-4:] == [
        "run-pipeline: 1 stage(s) could not run:",
        "  download: could not download X (no network); set section.key to a local file",
        "  skipped, as they need those: train",
        "Every other stage ran or was up to date; see docs/offline.md for local copies of the data.",
    ]


def test_a_failure_without_an_error_line_is_still_named():
    log = ReproLog()
    for line in ["Running stage 'a':", "Traceback (most recent call last):",
                 "WARNING: failed to run: python -m stages.a, exited with 1", "Running stage 'b':"]:
        log.read(line)
    assert log.failed == {"a": ["exited with 1 (its output is above)"]}

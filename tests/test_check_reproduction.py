"""check-reproduction, the CI check that holds on any machine, on a two-stage DVC repository
made here: it passes when a forced rerun writes the same bytes and the metrics are the
committed ones, and fails on a time stamp in an output or on a metric that moved."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from stages.check_reproduction import metric_differences
from tests.conftest import dvc, git, run

# A stage that writes `text` (Python source of an expression) to out.txt, and a metrics stage.
PIPELINE = {
    "stages": {
        "make": {"cmd": None, "outs": ["out.txt"]},
        "score": {
            "cmd": "python -c \"import json; json.dump({'heldout': {'accuracy': 0.9, 'n': 30}}, open('metrics/m.json', 'w'))\"",
            "deps": ["out.txt"],
            "metrics": [{"metrics/m.json": {"cache": False}}],
        },
    }
}


def make_repo(tmp_path: Path, output_expression: str) -> Path:
    repo = tmp_path / "repo"
    (repo / "metrics").mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    dvc(repo, "init", "-q")
    pipeline = json.loads(json.dumps(PIPELINE))
    pipeline["stages"]["make"]["cmd"] = f"python -c \"open('out.txt', 'w').write(str({output_expression}))\""
    (repo / "dvc.yaml").write_text(yaml.safe_dump(pipeline))
    dvc(repo, "repro")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "a run")
    return repo


def check(repo: Path, *args: str):
    return run([sys.executable, "-m", "stages.check_reproduction", *args], repo, check=False)


def test_same_bytes_and_committed_metrics_pass_and_git_status_stays_clean(tmp_path):
    repo = make_repo(tmp_path, "sum(range(10))")
    result = check(repo)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "same machine: 2 of 2 outputs came out byte-identical" in result.stdout
    assert "committed dvc.lock: 2 of 2 outputs byte-identical" in result.stdout
    # A target: only the outputs of the stages it reproduces are counted.
    one_stage = check(repo, "make")
    assert one_stage.returncode == 0, one_stage.stdout + one_stage.stderr
    assert "same machine: 1 of 1 outputs came out byte-identical" in one_stage.stdout
    assert "committed dvc.lock: 1 of 1 outputs byte-identical" in one_stage.stdout
    assert git(repo, "status", "--porcelain").stdout == ""


def test_a_time_stamp_in_an_output_fails(tmp_path):
    repo = make_repo(tmp_path, "__import__('time').time_ns()")
    result = check(repo)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "same machine: 1 of 2 outputs" in result.stdout and "DIFFERS out.txt" in result.stdout
    assert result.stdout.rstrip().endswith("check-reproduction: FAILED")
    assert git(repo, "status", "--porcelain").stdout == ""  # dvc.lock restored


def test_a_metric_that_moved_fails(tmp_path):
    repo = make_repo(tmp_path, "1")
    committed = json.loads((repo / "metrics/m.json").read_text())
    committed["heldout"]["accuracy"] = 0.95  # what an earlier run scored
    (repo / "metrics/m.json").write_text(json.dumps(committed))
    git(repo, "commit", "-q", "-am", "metrics of another run")
    result = check(repo, "score")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "MOVED metrics/m.json: heldout.accuracy: 0.95 committed, 0.9 now" in result.stdout
    assert git(repo, "status", "--porcelain").stdout == ""


@pytest.mark.parametrize(("old", "new", "expected", "largest"), [
    ({"a": 0.9}, {"a": 0.905}, [], 0.005),
    ({"a": 0.9}, {"a": 0.92}, ["a: 0.9 committed, 0.92 now (more than 0.01 apart)"], 0.02),
    ({"a": {"n": 30}}, {"a": {"n": 31}}, ["a.n: 30 committed, 31 now"], 0),
    ({"a": {"protocol": "test split"}}, {"a": {"protocol": "cv"}}, ["a.protocol: 'test split' committed, 'cv' now"], 0),
    ({"a": 1, "b": 0.5}, {"a": 1}, ["b: missing"], 0),
    ({"a": 1}, {"a": 1, "c": 2}, ["c: not in the commit"], 0),
])
def test_metric_differences(old, new, expected, largest):
    lines, difference = metric_differences(old, new, tolerance=0.01)
    assert lines == expected and difference == pytest.approx(largest)

"""The whole pipeline under DVC on tiny local data, run as the users' CI workflow runs it
(examples/ci/github-actions.yml: every `run:` step but the install and the pull-request
comment) on three machines that share a Git origin and a folder DVC remote; then, on the
first, same params same bytes, metrics diff after a param change, the run cache and the
threshold check."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import (
    PROJECT,
    dvc,
    edit_params,
    git,
    run,
    small_pipeline_params,
    stages_run,
    tool_env,
    toy_names,
    write_tiny_inputs,
)

pytestmark = pytest.mark.slow

TOY_STAGES = [f"{stage}@{name}" for stage in ("generate_toy", "train_toy") for name in toy_names()] + ["evaluate@toy"]
OTHER_STAGES = [
    "augment_train_mnist",
    "extract_vgg_features",
    "find_near_copies",
    "fit_knn",
    "train_head",
    "evaluate@mnist",
    "evaluate@breast",
]
ALL_STAGES = sorted(TOY_STAGES + OTHER_STAGES)
# DVC keeps no run cache for a stage with an output outside its cache: the evaluate stages'
# metrics are git's (cache: false), so those stages run wherever their inputs are new to
# the workspace (in seconds: they only score predictions).
EVALUATE_STAGES = ["evaluate@breast", "evaluate@mnist", "evaluate@toy"]
CACHEABLE_STAGES = sorted(set(ALL_STAGES) - set(EVALUATE_STAGES))
WORKFLOW = PROJECT / "examples/ci/github-actions.yml"
# Steps a test cannot take, and why.
NOT_RUN_STEPS = {
    "Install": "the tests run in the project's installed environment",
    "Post the diff on the pull request": "needs GitHub's API",
}
# Bounds the tiny data reaches (the project's own are for the real data): the two breast
# classes differ in brightness, which any classifier tells apart.
TINY_BOUNDS = {
    "metrics/breast/knn.json": {"heldout.accuracy": {"min": 0.9}},
    "metrics/breast/head.json": {"heldout.roc_auc": {"min": 0.9}},
}
TINY_INPUTS = ("data/local/mnist/tiny.npz", "data/local/breast/tiny.npz")


def workflow_steps() -> list[tuple[str, str]]:
    """(name, script) of each `run:` step of the users' workflow that a test can take."""
    steps = [step for job in yaml.safe_load(WORKFLOW.read_text())["jobs"].values() for step in job["steps"]]
    scripts = [(step["name"], step["run"]) for step in steps if "run" in step]
    assert set(NOT_RUN_STEPS) <= {name for name, _ in scripts}
    return [(name, script) for name, script in scripts if name not in NOT_RUN_STEPS]


def run_workflow(clone: Path) -> dict[str, subprocess.CompletedProcess]:
    """Take the workflow's steps in order, as GitHub Actions does (bash -e, pipefail), up to
    the first that fails. Returns each step's result by name."""
    env = {**tool_env(), "GITHUB_STEP_SUMMARY": str(clone.parent / f"{clone.name}-summary.md")}
    results = {}
    for name, script in workflow_steps():
        results[name] = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
            cwd=clone,
            env=env,
            capture_output=True,
            text=True,
        )
        if results[name].returncode != 0:
            break
    return results


def machine(tmp_path: Path, origin: Path, name: str, data_from: Path) -> Path:
    """A fresh clone of the origin with the machine's own copies of the tiny data (which
    git does not track), taken from ``data_from``."""
    clone = tmp_path / name
    git(tmp_path, "clone", "-q", str(origin), str(clone))
    for local in TINY_INPUTS:
        shutil.copy2(data_from / local, clone / local)
    return clone


def check_thresholds(repo: Path, bounds: dict) -> subprocess.CompletedProcess:
    (repo / "thresholds.yaml").write_text(yaml.safe_dump(bounds))
    return run([sys.executable, "-m", "stages.commands.check_thresholds"], repo, check=False)


def test_ci_workflow_then_same_bytes_diff_run_cache_and_thresholds(project_repo, toy_run, tmp_path):
    repo = project_repo
    edit_params(repo, small_pipeline_params())
    write_tiny_inputs(repo)
    (repo / "thresholds.yaml").write_text(yaml.safe_dump(TINY_BOUNDS))
    remote = tmp_path / "dvc-remote"
    dvc(repo, "remote", "add", "-d", "storage", str(remote))
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "tiny params, bounds and a DVC remote")
    origin = tmp_path / "origin.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(origin))
    git(repo, "push", "-q", str(origin), "main")
    # The toy stages ran before with these params and this code (the session's toy run),
    # and that run pushed its run cache.
    earlier = tmp_path / "earlier"
    shutil.copytree(toy_run[0], earlier, symlinks=True)
    dvc(earlier, "remote", "add", "-d", "storage", str(remote))
    dvc(earlier, "push", "--run-cache")

    # Machine a: the toy stages come from the remote's run cache, the others run.
    a = machine(tmp_path, origin, "a", data_from=repo)
    steps = run_workflow(a)
    for name, result in steps.items():
        assert result.returncode == 0, f"{name}\n{result.stdout}\n{result.stderr}"
    assert list(steps) == [name for name, _ in workflow_steps()]
    reproduced = steps["Reproduce the pipeline"].stdout
    assert stages_run(reproduced) == sorted(OTHER_STAGES + ["evaluate@toy"])
    assert all(f"Stage '{stage}' is cached - skipping run" in reproduced for stage in TOY_STAGES[:-1])
    assert "all thresholds met" in steps["Check metric thresholds"].stdout
    assert "## Metrics (this branch vs main)" in (tmp_path / "a-summary.md").read_text()

    shown = json.loads(dvc(a, "metrics", "show", "--json").stdout)[""]["data"]
    # One file per classifier, all with the same metric names.
    files = [f"metrics/toy/{name}.json" for name in toy_names()] + [
        "metrics/mnist/cnn.json",
        "metrics/breast/knn.json",
        "metrics/breast/head.json",
    ]
    assert sorted(shown) == sorted(files)
    for file in files:
        heldout = shown[file]["data"]["heldout"]
        assert {"protocol", "n", "accuracy", "balanced_accuracy", "recall", "log_loss"} <= set(heldout), file
    assert shown["metrics/mnist/cnn.json"]["data"]["heldout"]["n"] == 40  # the tiny test set
    for classifier in ("knn", "head"):
        breast = shown[f"metrics/breast/{classifier}.json"]["data"]
        assert breast["heldout"]["protocol"] == "test split" and breast["heldout"]["n"] == 12
        assert breast["cv"]["n"] == 30  # the non-test images
    # Both classifiers are drawn on the plots page: one ROC curve each, a confusion matrix each.
    assert sorted(set(pd.read_csv(a / "plots/breast/evaluation/roc.csv")["model"])) == ["head", "knn"]
    assert sorted(p.name for p in (a / "plots/breast/evaluation/confusion").iterdir()) == ["head.csv", "knn.csv"]

    # Machine b, the same commit: every stage with a run cache is restored from what a
    # pushed, and only the evaluate stages run.
    b = machine(tmp_path, origin, "b", data_from=repo)
    steps = run_workflow(b)
    assert all(result.returncode == 0 for result in steps.values()), steps
    reproduced = steps["Reproduce the pipeline"].stdout
    assert stages_run(reproduced) == EVALUATE_STAGES
    assert all(f"Stage '{stage}' is cached - skipping run" in reproduced for stage in CACHEABLE_STAGES)
    assert (b / "dvc.lock").read_text() == (a / "dvc.lock").read_text()
    assert "Data and pipelines are up to date." in dvc(b, "status").stdout

    # Machine c, with a remote it cannot reach: the workflow stops at once, before any stage.
    c = machine(tmp_path, origin, "c", data_from=repo)
    dvc(c, "remote", "modify", "storage", "url", str(tmp_path / "unmounted" / "dvc-remote"))
    steps = run_workflow(c)
    assert list(steps) == ["Check that the DVC remote answers"] and steps[list(steps)[0]].returncode == 2
    assert "cannot reach the DVC remote" in steps["Check that the DVC remote answers"].stderr
    assert not (c / "dvc.lock").exists()

    # Same params, same bytes on one machine: a forced rerun of every stage but the toy
    # ones (which CI's check-reproduction reruns at full size) leaves dvc.lock as it was.
    lock = (a / "dvc.lock").read_text()
    git(a, "add", "-A")
    git(a, "commit", "-q", "-m", "first run")
    forced = dvc(a, "repro", "--force", "evaluate@mnist", "evaluate@breast")
    assert stages_run(forced.stdout) == sorted(OTHER_STAGES)
    assert (a / "dvc.lock").read_text() == lock
    assert git(a, "status", "--porcelain").stdout == ""
    assert dvc(a, "metrics", "diff").stdout == ""

    # Every bound in the project's thresholds.yaml names a metric the pipeline writes.
    project_bounds = run(
        [sys.executable, "-m", "stages.commands.check_thresholds", "--thresholds", str(PROJECT / "thresholds.yaml")],
        a,
        check=False,
    )
    assert "MISSING" not in project_bounds.stdout, project_bounds.stdout

    # The threshold check: passes on met bounds, fails on a raised one, and on a missing metric.
    mnist_accuracy = json.loads((a / "metrics/mnist/cnn.json").read_text())["heldout"]["accuracy"]
    ok = check_thresholds(a, {"metrics/mnist/cnn.json": {"heldout.accuracy": {"min": mnist_accuracy}}})
    assert ok.returncode == 0 and ok.stdout.splitlines()[-1] == "all thresholds met"
    raised = check_thresholds(a, {"metrics/mnist/cnn.json": {"heldout.accuracy": {"min": mnist_accuracy + 0.01}}})
    assert raised.returncode == 1 and " FAIL" in raised.stdout.splitlines()[2]
    missing = check_thresholds(a, {"metrics/mnist/cnn.json": {"heldout.no_such_metric": {"min": 0}}})
    assert missing.returncode == 1 and "MISSING" in missing.stdout
    assert "up to date" in dvc(a, "status").stdout  # changing a threshold reruns nothing
    git(a, "checkout", "-q", "thresholds.yaml")
    # Turning the extraction's speed knobs reruns nothing: they change no byte of its outputs.
    for key, value in {"extract_vgg_features.workers": 1, "extract_vgg_features.chunk_size": 7}.items():
        edit_params(a, {key: value})
        assert "Data and pipelines are up to date." in dvc(a, "status").stdout, key
    git(a, "checkout", "-q", "params.yaml")

    # KNN params: only fit_knn and what reads its results rerun; the features and the head are kept.
    edit_params(a, {"fit_knn.k": 5})
    changed = stages_run(dvc(a, "repro").stdout)
    # (evaluate@breast reruns only if the tiny data's predictions changed: DVC skips a
    # stage whose inputs are the same bytes.)
    assert "fit_knn" in changed and set(changed) <= {"fit_knn", "evaluate@breast"}
    assert "fit_knn.k" in dvc(a, "params", "diff").stdout
    metrics_diff = json.loads(dvc(a, "metrics", "diff", "--json").stdout)
    assert set(metrics_diff) <= {"metrics/breast/knn.json"}
    # The folds both classifiers share: both rerun, the features are kept.
    edit_params(a, {"breast_cv_folds": 4})
    changed = dvc(a, "repro")
    assert stages_run(changed.stdout) == ["evaluate@breast", "fit_knn", "train_head"]
    metrics_diff = json.loads(dvc(a, "metrics", "diff", "--json").stdout)
    assert metrics_diff["metrics/breast/head.json"]["cv.folds"] == {"old": 3, "new": 4, "diff": 1}

    # The near-copy threshold: the groups are found again and the classifiers refit on them
    # if they changed, but the extraction, which the groups do not read, is kept.
    edit_params(a, {"find_near_copies.min_correlation": 0.12})
    changed = stages_run(dvc(a, "repro").stdout)
    assert "find_near_copies" in changed and "extract_vgg_features" not in changed
    assert set(changed) <= {"find_near_copies", "fit_knn", "train_head", "evaluate@breast"}

    # Back to the committed params: the run cache restores the earlier outputs instead of refitting.
    edit_params(a, {"fit_knn.k": 3, "breast_cv_folds": 3, "find_near_copies.min_correlation": 0.95})
    restored = dvc(a, "repro")
    assert stages_run(restored.stdout) == []
    assert "Stage 'fit_knn' is cached - skipping run" in restored.stdout
    assert "Stage 'train_head' is cached - skipping run" in restored.stdout
    assert git(a, "status", "--porcelain").stdout == ""  # the committed metrics, byte for byte

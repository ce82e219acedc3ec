"""The whole pipeline under DVC in a temporary repository, on tiny local data:
metrics diff after a param change, the run cache, a remote, and the threshold check."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
import yaml

from tests.conftest import dvc, edit_params, git, run, small_pipeline_params, stages_run, write_tiny_inputs

pytestmark = pytest.mark.slow

ALL_STAGES = sorted(
    [f"{stage}@{name}" for stage in ("generate_toy", "train_toy") for name in ("2blop", "blop_circle", "4blop")]
    + ["augment_train_mnist", "extract_vgg_features", "fit_knn"]
    + [f"evaluate@{exercise}" for exercise in ("toy", "mnist", "breast")]
)


def check_thresholds(repo, bounds: dict) -> object:
    (repo / "thresholds.yaml").write_text(yaml.safe_dump(bounds))
    return run([sys.executable, "-m", "stages.check_thresholds"], repo, check=False)


def test_full_pipeline_diff_run_cache_remote_and_thresholds(project_repo, tmp_path):
    repo = project_repo
    edit_params(repo, small_pipeline_params())
    write_tiny_inputs(repo)

    first = dvc(repo, "repro")
    assert stages_run(first.stdout) == ALL_STAGES
    for exercise in ("toy", "mnist", "breast"):
        assert (repo / f"metrics/{exercise}.json").is_file()
    shown = json.loads(dvc(repo, "metrics", "show", "--json").stdout)[""]["data"]
    assert 0 <= shown["metrics/mnist.json"]["data"]["cnn"]["test_accuracy"] <= 1
    assert 0 <= shown["metrics/breast.json"]["data"]["knn"]["test"]["accuracy"] <= 1
    assert shown["metrics/toy.json"]["data"]["2blop"]["params"] == 41

    # Every bound in the project's thresholds.yaml names a metric the pipeline writes.
    project_bounds = run([sys.executable, "-m", "stages.check_thresholds"], repo, check=False)
    assert "MISSING" not in project_bounds.stdout, project_bounds.stdout

    # The threshold check: passes on met bounds, fails on a raised one, and on a missing metric.
    mnist_accuracy = json.loads((repo / "metrics/mnist.json").read_text())["cnn"]["test_accuracy"]
    ok = check_thresholds(repo, {"metrics/mnist.json": {"cnn.test_accuracy": {"min": mnist_accuracy}}})
    assert ok.returncode == 0 and ok.stdout.splitlines()[-1] == "all thresholds met"
    raised = check_thresholds(repo, {"metrics/mnist.json": {"cnn.test_accuracy": {"min": mnist_accuracy + 0.01}}})
    assert raised.returncode == 1 and " FAIL" in raised.stdout.splitlines()[2]
    missing = check_thresholds(repo, {"metrics/mnist.json": {"cnn.no_such_metric": {"min": 0}}})
    assert missing.returncode == 1 and "MISSING" in missing.stdout
    assert "up to date" in dvc(repo, "status").stdout  # changing a threshold reruns nothing

    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "first run")

    # KNN params: only fit_knn and what reads its results rerun; the features are kept.
    edit_params(repo, {"fit_knn.k": 5, "fit_knn.cv_folds": 4})
    changed = dvc(repo, "repro")
    assert stages_run(changed.stdout) == ["evaluate@breast", "fit_knn"]
    assert "fit_knn.k" in dvc(repo, "params", "diff").stdout
    metrics_diff = json.loads(dvc(repo, "metrics", "diff", "--json").stdout)
    assert metrics_diff["metrics/breast.json"]["knn.cv.folds"] == {"old": 3, "new": 4, "diff": 1}
    assert "metrics/toy.json" not in metrics_diff and "metrics/mnist.json" not in metrics_diff

    # Back to the committed params: the run cache restores the earlier outputs instead of refitting.
    edit_params(repo, {"fit_knn.k": 3, "fit_knn.cv_folds": 3})
    restored = dvc(repo, "repro")
    assert stages_run(restored.stdout) == []
    assert "Stage 'fit_knn' is cached - skipping run" in restored.stdout
    assert git(repo, "status", "--porcelain").stdout == ""  # the committed metrics, byte for byte

    # A second machine: push to a folder remote, clone, pull; nothing is out of date.
    dvc(repo, "remote", "add", "-d", "shared", str(tmp_path / "remote"))
    git(repo, "commit", "-q", "-am", "add a remote")
    dvc(repo, "push")
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(repo), str(clone))
    for local in ("data/local/mnist/tiny.npz", "data/local/breast/tiny.npz"):  # the box's own copies
        shutil.copy2(repo / local, clone / local)
    dvc(clone, "pull")
    assert "Data and pipelines are up to date." in dvc(clone, "status").stdout
    assert stages_run(dvc(clone, "repro").stdout) == []
    assert (clone / "models/mnist/model.keras").is_file()

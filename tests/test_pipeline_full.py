"""The whole pipeline under DVC in a temporary repository, on tiny local data: the same
params give the same dvc.lock, metrics diff after a param change, the run cache, a
remote, and the threshold check."""

from __future__ import annotations

import json
import shutil
import sys

import pandas as pd
import pytest
import yaml

from tests.conftest import (
    dvc,
    edit_params,
    git,
    run,
    small_pipeline_params,
    stages_run,
    toy_names,
    write_tiny_image_folder,
    write_tiny_inputs,
)

pytestmark = pytest.mark.slow

ALL_STAGES = sorted(
    [f"{stage}@{name}" for stage in ("generate_toy", "train_toy") for name in toy_names()]
    + ["augment_train_mnist", "extract_vgg_features", "fit_knn", "train_head"]
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
    shown = json.loads(dvc(repo, "metrics", "show", "--json").stdout)[""]["data"]
    # One file per classifier, all with the same metric names.
    files = [f"metrics/toy/{name}.json" for name in toy_names()] + [
        "metrics/mnist/cnn.json", "metrics/breast/knn.json", "metrics/breast/head.json"
    ]
    assert sorted(shown) == sorted(files)
    for file in files:
        heldout = shown[file]["data"]["heldout"]
        assert {"protocol", "n", "accuracy", "balanced_accuracy", "recall", "log_loss"} <= set(heldout), file
        assert 0 <= heldout["accuracy"] <= 1
    for classifier in ("knn", "head"):
        breast = shown[f"metrics/breast/{classifier}.json"]["data"]
        assert breast["heldout"]["protocol"] == "test split" and "roc_auc" in breast["heldout"]
        assert breast["cv"]["n"] == 30  # the non-test images
    # Both classifiers are drawn on the plots page: one ROC curve each, a confusion matrix each.
    assert sorted(set(pd.read_csv(repo / "plots/breast/evaluation/roc.csv")["model"])) == ["head", "knn"]
    assert sorted(p.name for p in (repo / "plots/breast/evaluation/confusion").iterdir()) == ["head.csv", "knn.csv"]

    # Same params, same bytes: a forced rerun of every stage leaves dvc.lock as it was.
    lock = (repo / "dvc.lock").read_text()
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "first run")
    forced = dvc(repo, "repro", "-f")
    assert stages_run(forced.stdout) == ALL_STAGES
    assert (repo / "dvc.lock").read_text() == lock
    assert git(repo, "status", "--porcelain").stdout == ""
    assert dvc(repo, "metrics", "diff").stdout == ""

    # Every bound in the project's thresholds.yaml names a metric the pipeline writes.
    project_bounds = run([sys.executable, "-m", "stages.check_thresholds"], repo, check=False)
    assert "MISSING" not in project_bounds.stdout, project_bounds.stdout

    # The threshold check: passes on met bounds, fails on a raised one, and on a missing metric.
    mnist_accuracy = json.loads((repo / "metrics/mnist/cnn.json").read_text())["heldout"]["accuracy"]
    ok = check_thresholds(repo, {"metrics/mnist/cnn.json": {"heldout.accuracy": {"min": mnist_accuracy}}})
    assert ok.returncode == 0 and ok.stdout.splitlines()[-1] == "all thresholds met"
    raised = check_thresholds(repo, {"metrics/mnist/cnn.json": {"heldout.accuracy": {"min": mnist_accuracy + 0.01}}})
    assert raised.returncode == 1 and " FAIL" in raised.stdout.splitlines()[2]
    missing = check_thresholds(repo, {"metrics/mnist/cnn.json": {"heldout.no_such_metric": {"min": 0}}})
    assert missing.returncode == 1 and "MISSING" in missing.stdout
    assert "up to date" in dvc(repo, "status").stdout  # changing a threshold reruns nothing
    git(repo, "checkout", "-q", "thresholds.yaml")

    # KNN params: only fit_knn and what reads its results rerun; the features and the head are kept.
    edit_params(repo, {"fit_knn.k": 5})
    changed = stages_run(dvc(repo, "repro").stdout)
    # (evaluate@breast reruns only if the tiny data's predictions changed: DVC skips a
    # stage whose inputs are the same bytes.)
    assert "fit_knn" in changed and set(changed) <= {"fit_knn", "evaluate@breast"}
    assert "fit_knn.k" in dvc(repo, "params", "diff").stdout
    metrics_diff = json.loads(dvc(repo, "metrics", "diff", "--json").stdout)
    assert set(metrics_diff) <= {"metrics/breast/knn.json"}
    # The folds both classifiers share: both rerun, the features are kept.
    edit_params(repo, {"breast_cv_folds": 4})
    changed = dvc(repo, "repro")
    assert stages_run(changed.stdout) == ["evaluate@breast", "fit_knn", "train_head"]
    metrics_diff = json.loads(dvc(repo, "metrics", "diff", "--json").stdout)
    assert metrics_diff["metrics/breast/head.json"]["cv.folds"] == {"old": 3, "new": 4, "diff": 1}

    # Back to the committed params: the run cache restores the earlier outputs instead of refitting.
    edit_params(repo, {"fit_knn.k": 3, "breast_cv_folds": 3})
    restored = dvc(repo, "repro")
    assert stages_run(restored.stdout) == []
    assert "Stage 'fit_knn' is cached - skipping run" in restored.stdout
    assert "Stage 'train_head' is cached - skipping run" in restored.stdout
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

    # A lab's own folder of images, with no test split: the breast bounds still find
    # their metrics, now from cross-validation, and the metrics say so.
    write_tiny_image_folder(repo / "data/local/breast/lab")
    edit_params(repo, {"extract_vgg_features.data": "data/local/breast/lab"})
    lab = dvc(repo, "repro", "evaluate@breast")
    assert stages_run(lab.stdout) == ["evaluate@breast", "extract_vgg_features", "fit_knn", "train_head"]
    for classifier in ("knn", "head"):
        heldout = json.loads((repo / f"metrics/breast/{classifier}.json").read_text())["heldout"]
        assert heldout["protocol"] == "3-fold stratified cross-validation" and heldout["n"] == 20
    folder_bounds = run([sys.executable, "-m", "stages.check_thresholds", "--only", "metrics/breast"], repo,
                        check=False)
    assert "MISSING" not in folder_bounds.stdout and "metrics/breast/knn.json:heldout." in folder_bounds.stdout

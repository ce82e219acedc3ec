"""`dvc repro` of the toy stages in a temporary copy of the project: outputs, caching, reruns."""

from __future__ import annotations

import json

import pytest

from tests.conftest import dvc, edit_params, git, stages_run

TOY_STAGES = [f"{stage}@{name}" for stage in ("generate_toy", "train_toy") for name in ("2blop", "4blop", "blop_circle")]
SMALL = {f"train_toy.{name}.epochs": 3 for name in ("2blop", "blop_circle", "4blop")} | {
    f"generate_toy.{name}.n_samples": 120 for name in ("2blop", "blop_circle", "4blop")
}

pytestmark = pytest.mark.slow


def test_toy_pipeline_runs_caches_and_reruns_only_what_changed(project_repo):
    edit_params(project_repo, SMALL)
    first = dvc(project_repo, "repro", "evaluate@toy")
    assert stages_run(first.stdout) == sorted([*TOY_STAGES, "evaluate@toy"])

    metrics = json.loads((project_repo / "metrics/toy.json").read_text())
    assert [metrics[name]["params"] for name in ("2blop", "blop_circle", "4blop")] == [41, 287, 287]
    for name in ("2blop", "blop_circle", "4blop"):
        assert metrics[name]["n_heldout"] == 30
        assert 0 <= metrics[name]["heldout_accuracy"] <= 1
        for output in (f"data/toy/{name}.npz", f"models/toy/{name}.keras", f"plots/toy/{name}/boundary.png"):
            assert (project_repo / output).is_file(), output
        assert len((project_repo / f"plots/toy/{name}/history.csv").read_text().splitlines()) == 1 + 3
    # Generated files are DVC's, ignored by git; the metrics JSON is git's.
    ignored = git(project_repo, "status", "--porcelain", "--ignored").stdout
    assert "!! data/toy/" in ignored and "!! models/" in ignored and "?? metrics/" in ignored

    again = dvc(project_repo, "repro", "evaluate@toy")
    assert stages_run(again.stdout) == []

    edit_params(project_repo, {"generate_toy.4blop.n_samples": 160})
    changed = dvc(project_repo, "repro", "evaluate@toy")
    assert stages_run(changed.stdout) == ["evaluate@toy", "generate_toy@4blop", "train_toy@4blop"]
    assert json.loads((project_repo / "metrics/toy.json").read_text())["4blop"]["n_heldout"] == 40

    edit_params(project_repo, {"train_toy.2blop.epochs": 4})
    changed = dvc(project_repo, "repro", "evaluate@toy")
    assert stages_run(changed.stdout) == ["evaluate@toy", "train_toy@2blop"]

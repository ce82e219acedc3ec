"""`dvc repro` and `dvc exp run` of the toy stages in a temporary copy of the project:
outputs, caching, reruns of only what changed, a param set with -S, a queued sweep."""

from __future__ import annotations

import json

import pytest

from tests.conftest import dvc, edit_params, git, stage_paths, stages_run, toy_names

TOY = toy_names()
TOY_STAGES = [f"{stage}@{name}" for stage in ("generate_toy", "train_toy") for name in TOY]
SMALL = {f"train_toy.{name}.epochs": 3 for name in TOY} | {f"generate_toy.{name}.n_samples": 120 for name in TOY}

pytestmark = pytest.mark.slow


def heldout(repo, name: str) -> dict:
    return json.loads((repo / f"metrics/toy/{name}.json").read_text())["heldout"]


def test_toy_pipeline_runs_caches_and_reruns_only_what_changed(project_repo):
    edit_params(project_repo, SMALL)
    first = dvc(project_repo, "repro", "evaluate@toy")
    assert stages_run(first.stdout) == sorted([*TOY_STAGES, "evaluate@toy"])
    assert "oneDNN" not in first.stdout + first.stderr and "cuInit" not in first.stdout + first.stderr

    for name in TOY:
        assert heldout(project_repo, name)["n"] == 30
        assert 0 <= heldout(project_repo, name)["accuracy"] <= 1
        outputs = {**stage_paths("generate_toy", name), **stage_paths("train_toy", name)}
        for output in [*outputs.values(), stage_paths("evaluate", "toy")["plots"] / "confusion" / f"{name}.csv"]:
            assert (project_repo / output).is_file(), output
        assert len((project_repo / outputs["history"]).read_text().splitlines()) == 1 + 3
    # Generated files are DVC's, ignored by git; the metrics JSON is git's, and so
    # is nothing else: how long each run took goes to runs/, which git ignores.
    ignored = git(project_repo, "status", "--porcelain", "--ignored").stdout
    assert "!! data/toy/" in ignored and "!! models/" in ignored and "!! runs/" in ignored
    assert "?? metrics/" in ignored

    again = dvc(project_repo, "repro", "evaluate@toy")
    assert stages_run(again.stdout) == []

    edit_params(project_repo, {f"generate_toy.{TOY[2]}.n_samples": 160})
    changed = dvc(project_repo, "repro", "evaluate@toy")
    assert stages_run(changed.stdout) == ["evaluate@toy", f"generate_toy@{TOY[2]}", f"train_toy@{TOY[2]}"]
    assert heldout(project_repo, TOY[2])["n"] == 40

    edit_params(project_repo, {f"train_toy.{TOY[0]}.epochs": 4})
    changed = dvc(project_repo, "repro", "evaluate@toy")
    assert stages_run(changed.stdout) == ["evaluate@toy", f"train_toy@{TOY[0]}"]


def test_exp_run_set_param_and_a_queued_two_by_two_sweep(project_repo):
    """The README's `dvc exp run -S` and `--queue` commands, on small data."""
    repo = project_repo
    edit_params(repo, SMALL)
    dvc(repo, "repro", "evaluate@toy")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "small toy run")

    one = dvc(repo, "exp", "run", "-S", "train_toy.two_blops.epochs=4", "evaluate@toy")
    assert stages_run(one.stdout) == ["evaluate@toy", "train_toy@two_blops"]  # the other datasets are kept

    queued = dvc(repo, "exp", "run", "--queue", "-S", "train_toy.two_blops.epochs=2,5",
                 "-S", "generate_toy.two_blops.noise=0.5,0.9", "evaluate@toy")
    assert queued.stdout.count("Queued experiment") == 4
    dvc(repo, "exp", "run", "--run-all", "-j", "2")
    shown = json.loads(dvc(repo, "exp", "show", "--json").stdout)
    experiments = [exp for baseline in shown for exp in baseline.get("experiments") or []]
    finished = {}
    for exp in experiments:
        data = exp["revs"][0]["data"]
        toy = data["params"]["params.yaml"]["data"]
        key = (toy["train_toy"]["two_blops"]["epochs"], toy["generate_toy"]["two_blops"]["noise"])
        finished[key] = data["metrics"]["metrics/toy/two_blops.json"]["data"]["heldout"]["accuracy"]
    assert set(finished) == {(4, 0.8), (2, 0.5), (2, 0.9), (5, 0.5), (5, 0.9)}
    assert all(0 <= accuracy <= 1 for accuracy in finished.values())

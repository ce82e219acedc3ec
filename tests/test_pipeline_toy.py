"""`dvc repro` and `dvc exp run` of the toy stages in a temporary copy of the project:
outputs, caching, reruns of only what changed, a param set with -S, a queued sweep."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tests.conftest import dvc, edit_params, git, stage_paths, stages_run, toy_names

TOY = toy_names()
TOY_STAGES = [f"{stage}@{name}" for stage in ("generate_toy", "train_toy") for name in TOY]

pytestmark = pytest.mark.slow


def heldout(repo, name: str) -> dict:
    return json.loads((repo / f"metrics/toy/{name}.json").read_text())["heldout"]


def test_toy_pipeline_runs_caches_and_reruns_only_what_changed(toy_run, toy_repo):
    first_output = toy_run[1]  # what the session's first `dvc repro evaluate@toy` printed
    assert stages_run(first_output) == sorted([*TOY_STAGES, "evaluate@toy"])
    assert "oneDNN" not in first_output and "cuInit" not in first_output

    repo = toy_repo
    for name in TOY:
        outputs = {**stage_paths("generate_toy", name), **stage_paths("train_toy", name)}
        # evaluate@toy scored the held-out quarter of the 120 points that train_toy predicted.
        predicted = pd.read_csv(repo / outputs["predictions"]).query("evaluation == 'heldout'")
        assert heldout(repo, name)["n"] == len(predicted) == 30
        assert heldout(repo, name)["accuracy"] == round((predicted["actual"] == predicted["predicted"]).mean(), 4)
        for output in [*outputs.values(), stage_paths("evaluate", "toy")["plots"] / "confusion" / f"{name}.csv"]:
            assert (repo / output).is_file(), output
        assert len((repo / outputs["history"]).read_text().splitlines()) == 1 + 3
    # Generated files are DVC's, ignored by git; the metrics JSON is git's, and so
    # is nothing else: how long each run took goes to runs/, which git ignores.
    ignored = git(repo, "status", "--porcelain", "--ignored").stdout
    assert "!! data/toy/" in ignored and "!! models/" in ignored and "!! runs/" in ignored
    assert "?? " not in ignored and "metrics/toy/two_blops.json" in git(repo, "ls-files", "metrics").stdout

    again = dvc(repo, "repro", "evaluate@toy")
    assert stages_run(again.stdout) == []

    edit_params(repo, {f"generate_toy.{TOY[2]}.n_samples": 160})
    changed = dvc(repo, "repro", "evaluate@toy")
    assert stages_run(changed.stdout) == ["evaluate@toy", f"generate_toy@{TOY[2]}", f"train_toy@{TOY[2]}"]
    assert heldout(repo, TOY[2])["n"] == 40

    edit_params(repo, {f"train_toy.{TOY[0]}.epochs": 4})
    changed = dvc(repo, "repro", "evaluate@toy")
    assert stages_run(changed.stdout) == ["evaluate@toy", f"train_toy@{TOY[0]}"]


def test_exp_run_set_param_and_a_queued_two_by_two_sweep(toy_repo):
    """The `dvc exp run -S` and `--queue` commands of docs/experiments.md, on small data."""
    repo = toy_repo
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
        finished[key] = data["metrics"]["metrics/toy/two_blops.json"]["data"]["heldout"]
    assert set(finished) == {(4, 0.8), (2, 0.5), (2, 0.9), (5, 0.5), (5, 0.9)}
    # Each experiment scored its own held-out share: 30 of its 120 points.
    assert all(heldout["n"] == 30 and "accuracy" in heldout for heldout in finished.values())

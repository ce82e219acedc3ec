"""`dvc repro` of the toy stages in a temporary copy of the project: outputs, caching,
reruns of only what changed. (`dvc exp run -S` and a queued sweep: the docs' own commands,
in test_readme_commands.)"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tests.conftest import PROJECT, dvc, edit_params, git, stage_paths, stages_run, toy_names

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
    # Generated files are DVC's, ignored by git through the .gitignore files DVC writes
    # (those the project commits); dvc.lock, the metrics JSON and params.yaml (changed to
    # small params) are git's, and so is nothing else: how long each run took goes to
    # runs/, which git ignores.
    ignored = git(repo, "status", "--porcelain", "--ignored").stdout
    assert "!! data/toy/" in ignored and "!! models/" in ignored and "!! runs/" in ignored
    committed_ignores = [path for path in git(PROJECT, "ls-files", "*/.gitignore").stdout.split() if "/toy/" in path]
    assert committed_ignores  # the project commits DVC's .gitignore files of the toy outputs
    changed_before_commit = sorted(line[3:] for line in toy_run[2].splitlines())
    assert changed_before_commit == sorted(
        ["dvc.lock", "params.yaml", *committed_ignores, *(f"metrics/toy/{name}.json" for name in TOY)]
    )

    again = dvc(repo, "repro", "evaluate@toy")
    assert stages_run(again.stdout) == []

    edit_params(repo, {f"generate_toy.{TOY[2]}.n_samples": 160})
    changed = dvc(repo, "repro", "evaluate@toy")
    assert stages_run(changed.stdout) == ["evaluate@toy", f"generate_toy@{TOY[2]}", f"train_toy@{TOY[2]}"]
    assert heldout(repo, TOY[2])["n"] == 40

    edit_params(repo, {f"train_toy.{TOY[0]}.epochs": 4})
    changed = dvc(repo, "repro", "evaluate@toy")
    assert stages_run(changed.stdout) == ["evaluate@toy", f"train_toy@{TOY[0]}"]

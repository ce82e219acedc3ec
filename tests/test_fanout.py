"""Experiments fanned out over machines and gathered on another, and the run cache shared
between machines, as examples/fanout/ does on GitHub Actions or Slurm. Here the machines
are clones in a temporary folder, the Git server is a bare repository and the DVC remote
a local folder; the commands are the ones the examples run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import (
    dvc,
    edit_params,
    git,
    small_toy_params,
    stage_paths,
    stages_run,
)

pytestmark = pytest.mark.slow

# The cheapest target that trains a model: generate_toy@two_blops and train_toy@two_blops.
TARGET = "train_toy@two_blops"
OUTPUTS = [*stage_paths("generate_toy", "two_blops").values(), *stage_paths("train_toy", "two_blops").values()]
MODEL = stage_paths("train_toy", "two_blops")["model"]


def share(repo: Path, tmp_path: Path, run_baseline: bool) -> Path:
    """Commit the project with small toy params and a folder DVC remote, push it to a new
    bare Git repository (the machines' shared origin) and, if `run_baseline`, run TARGET
    first and push its outputs. Returns the origin's path."""
    origin = tmp_path / "origin.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(origin))
    dvc(repo, "remote", "add", "-d", "storage", str(tmp_path / "dvc-remote"))
    edit_params(repo, small_toy_params())
    if run_baseline:
        dvc(repo, "repro", TARGET)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "small toy params and a shared DVC remote")
    git(repo, "remote", "add", "origin", str(origin))
    git(repo, "push", "-q", "origin", "main")
    if run_baseline:
        dvc(repo, "push")
    return origin


def machine(tmp_path: Path, origin: Path, name: str) -> Path:
    """A fresh clone of the origin, as a CI job or a Slurm task starts with."""
    clone = tmp_path / name
    git(tmp_path, "clone", "-q", str(origin), str(clone))
    git(clone, "config", "user.name", "test")  # `dvc exp run` commits the experiment
    git(clone, "config", "user.email", "test@example.com")
    return clone


def test_experiments_run_on_two_clones_are_gathered_on_a_third(toy_repo, tmp_path):
    origin = share(toy_repo, tmp_path, run_baseline=True)
    baseline = git(toy_repo, "rev-parse", "HEAD").stdout.strip()

    # Machine a, like a GitHub Actions job: the branch checked out, the Git remote by name.
    a = machine(tmp_path, origin, "a")
    ran = dvc(a, "exp", "run", "--pull", "-S", "train_toy.two_blops.epochs=2", "--name", "e2", TARGET)
    assert stages_run(ran.stdout) == ["train_toy@two_blops"]  # --pull brought the unchanged data stage's outputs
    assert "Pushed experiment e2" in dvc(a, "exp", "push", "origin", "e2").stdout
    dvc(a, "push", "--run-cache")

    # Machine b, like a Slurm task: the baseline commit checked out (detached HEAD), the Git
    # remote by URL.
    b = machine(tmp_path, origin, "b")
    git(b, "checkout", "-q", baseline)
    ran = dvc(b, "exp", "run", "--pull", "-S", "generate_toy.two_blops.noise=0.5", "--name", "n0.5", TARGET)
    assert stages_run(ran.stdout) == ["generate_toy@two_blops", "train_toy@two_blops"]
    dvc(b, "exp", "push", str(origin), "n0.5")
    dvc(b, "push", "--run-cache")

    # Machine c gathers: every experiment of its HEAD commit (the baseline), with its outputs.
    c = machine(tmp_path, origin, "c")
    assert sorted(dvc(c, "exp", "list", "origin", "--name-only").stdout.split()) == ["e2", "n0.5"]
    dvc(c, "exp", "pull", "origin")
    shown = json.loads(dvc(c, "exp", "show", "--json").stdout)
    found = {}
    for row in shown:
        for exp in row.get("experiments") or []:
            params = exp["revs"][0]["data"]["params"]["params.yaml"]["data"]
            found[exp["revs"][0]["name"]] = (
                params["train_toy"]["two_blops"]["epochs"],
                params["generate_toy"]["two_blops"]["noise"],
            )
    assert found == {"e2": (2, 0.8), "n0.5": (3, 0.5)}
    assert "n0.5" in dvc(c, "exp", "show", "--md", "--only-changed").stdout

    for name, source in (("n0.5", b), ("e2", a)):
        applied = dvc(c, "exp", "apply", name, check=False)
        # This baseline's dvc.lock names only TARGET's stages, so `exp apply` also reports the
        # other stages' outputs as not checked out (exit status 255); what it names, it checks
        # out from the cache that `exp pull` filled. (With a complete dvc.lock whose outputs
        # are on the remote, it exits 0.)
        assert applied.returncode in (0, 255), applied.stderr
        assert "two_blops" not in applied.stdout + applied.stderr
        for output in OUTPUTS:
            assert (c / output).read_bytes() == (source / output).read_bytes(), (name, output)
        assert stages_run(dvc(c, "repro", TARGET).stdout) == []
    assert yaml.safe_load((c / "params.yaml").read_text())["train_toy"]["two_blops"]["epochs"] == 2
    assert "Everything is up to date." in dvc(c, "pull", "--allow-missing").stdout


def test_run_cache_pushed_by_one_clone_spares_the_run_in_another(project_repo, tmp_path):
    # No dvc.lock is committed: a clone knows the outputs of these params only from the run cache.
    origin = share(project_repo, tmp_path, run_baseline=False)
    assert not (project_repo / "dvc.lock").exists()

    x = machine(tmp_path, origin, "x")
    assert stages_run(dvc(x, "repro", TARGET).stdout) == ["generate_toy@two_blops", "train_toy@two_blops"]
    dvc(x, "push", "--run-cache")
    lock = yaml.safe_load((x / "dvc.lock").read_text())

    # `dvc repro --pull` alone: it pulls the run cache, restores both stages from it and
    # pulls their outputs.
    y = machine(tmp_path, origin, "y")
    restored = dvc(y, "repro", "--pull", TARGET)
    assert stages_run(restored.stdout) == []
    assert restored.stdout.count("is cached - skipping run, checking out outputs") == 2
    for output in OUTPUTS:
        assert (y / output).read_bytes() == (x / output).read_bytes(), output
    assert yaml.safe_load((y / "dvc.lock").read_text()) == lock

    # `dvc pull --run-cache` (DVC 3) fetches the run-cache entries but not the outputs they
    # name, unless a dvc.lock names them too; a plain `dvc repro` after it would rerun the
    # stages, so the outputs come with `dvc repro --pull`.
    z = machine(tmp_path, origin, "z")
    dvc(z, "pull", "--run-cache", "--allow-missing")
    assert any(path.is_file() for path in (z / ".dvc/cache/runs").rglob("*"))
    model_md5 = next(out["md5"] for out in lock["stages"][TARGET]["outs"] if out["path"] == str(MODEL))
    assert not (z / ".dvc/cache/files/md5" / model_md5[:2] / model_md5[2:]).exists()
    restored = dvc(z, "repro", "--pull", TARGET)
    assert stages_run(restored.stdout) == []
    assert (z / MODEL).read_bytes() == (x / MODEL).read_bytes()

"""A file dropped in data/local/ marks a stage changed only when that stage reads it: under
DVC itself, on a copy of the project whose dvc.lock `dvc commit` writes over stand-in
outputs (what `dvc status` compares needs no training)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tests.conftest import PROJECT, dvc, edit_params, git

STAGES = ("augment_train_mnist", "extract_vgg_features")


def commit_stages(repo: Path) -> None:
    """Record the stages in dvc.lock as if they had just run: their deps as they are now."""
    for stage in STAGES:
        for out in yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"][stage]["outs"]:
            (repo / out).parent.mkdir(parents=True, exist_ok=True)
            (repo / out).write_text(f"stand-in for {out}\n")
    dvc(repo, "commit", "--force", *STAGES)


def changed(repo: Path) -> dict[str, list]:
    """What `dvc status` reports for the two stages, by stage: nothing when they are up to date."""
    return json.loads(dvc(repo, "status", "--json", *STAGES).stdout)


def drop(repo: Path, *paths: str, content: str = "a user's file") -> None:
    for path in paths:
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text(content)


def test_a_dropped_file_marks_changed_only_the_stage_that_reads_it(project_repo):
    tracked = git(project_repo, "ls-files", "data/local").stdout.split()
    assert {
        "data/local/mnist/keras",
        "data/local/breast/medmnist",
        "data/local/breast/medmnist_224",
        "data/local/weights/imagenet",
        "data/local/weights/none",
    } <= set(tracked)  # the downloads' markers
    commit_stages(project_repo)  # default params: keras, medmnist and imagenet
    assert changed(project_repo) == {}
    drop(
        project_repo,
        "data/local/mnist/mnist.npz",
        "data/local/breast/lab/benign/0.png",
        "data/local/weights/vgg16.weights.h5",
    )
    assert changed(project_repo) == {}  # read by no stage yet
    assert git(project_repo, "status", "--porcelain", "--untracked-files=all", "data/local").stdout == ""

    edit_params(
        project_repo,
        {
            "augment_train_mnist.data": "mnist.npz",
            "extract_vgg_features.data": "lab",
            "extract_vgg_features.weights": "vgg16.weights.h5",
        },
    )
    assert set(changed(project_repo)) == set(STAGES)
    commit_stages(project_repo)
    drop(project_repo, "data/local/mnist/other.npz", "data/local/breast/other.npz", "data/local/weights/other.h5")
    assert changed(project_repo) == {}

    drop(project_repo, "data/local/mnist/mnist.npz", content="another copy")  # replaced
    assert changed(project_repo) == {
        "augment_train_mnist": [{"changed deps": {"data/local/mnist/mnist.npz": "modified"}}]
    }
    drop(project_repo, "data/local/breast/lab/malignant/0.png")  # a new image in the folder it reads
    assert set(changed(project_repo)) == set(STAGES)

"""check-dvc-remote on folder remotes (the S3 cases are in test_remote_s3.py), and the users'
CI example installing the DVC plugin of the remote it names."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from stages.commands.check_remote import check_remote
from stages.shared.config import StageError
from tests.conftest import PROJECT, run

WORKFLOW = PROJECT / "examples/ci/github-actions.yml"


@pytest.fixture
def team_share(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A DVC repository (the working directory) whose default remote is the folder
    ``dvc-store`` in the mount point ``mnt/team``, which exists; the remote's folder does not,
    as when the share is not mounted."""
    from dvc.repo import Repo

    mount_point = tmp_path / "mnt" / "team"
    mount_point.mkdir(parents=True)
    repo = Repo.init(str(tmp_path / "project"), no_scm=True)
    with repo.config.edit() as config:
        config["remote"]["storage"] = {"url": str(mount_point / "dvc-store")}
        config["core"]["remote"] = "storage"
    repo.close()
    monkeypatch.chdir(tmp_path / "project")
    return mount_point


def test_folder_remote_missing_under_an_existing_mount_point_fails(team_share):
    with pytest.raises(StageError) as raised:
        check_remote(None)
    remote = team_share / "dvc-store"
    assert str(raised.value) == (
        f"cannot reach the DVC remote at {remote}: the folder {remote} does not exist (a share not mounted, "
        "or a wrong URL; for a new remote, run check-dvc-remote --create once, or dvc push)"
    )
    assert not remote.exists()


def test_create_makes_a_new_folder_remote_that_then_passes_without_it(team_share):
    remote = team_share / "dvc-store"
    assert check_remote(None, create=True) == str(remote)
    assert remote.is_dir() and not any(remote.iterdir())
    assert check_remote(None) == str(remote)


def test_create_makes_no_missing_parent(team_share):
    team_share.rmdir()  # no mount point either: a wrong URL
    with pytest.raises(StageError, match=rf"{re.escape(str(team_share))} does not exist, and --create makes only"):
        check_remote(None, create=True)
    assert not team_share.exists()


def test_cli_says_in_one_line_that_the_folder_is_missing_and_exits_2(team_share):
    result = run([sys.executable, "-m", "stages.commands.check_remote"], Path.cwd(), check=False)
    assert result.returncode == 2
    assert re.fullmatch(
        rf"error: cannot reach the DVC remote at {re.escape(str(team_share))}/dvc-store: "
        r"the folder \S+ does not exist \(.*\)\n",
        result.stderr,
    ), result.stderr


def extra_requirements(extras: set[str]) -> set[str]:
    """The names of the packages pyproject.toml's extras require, through extras that name
    this project's own."""
    project = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]
    names, todo = set(), list(extras)
    while todo:
        for line in project["optional-dependencies"][todo.pop()]:
            requirement = Requirement(line)
            if requirement.name == project["name"]:
                todo += requirement.extras
            else:
                names.add(requirement.name)
    return names


def test_ci_example_installs_the_pinned_plugin_of_the_s3_remote_it_names():
    steps = [step for job in yaml.safe_load(WORKFLOW.read_text())["jobs"].values() for step in job["steps"]]
    remote_steps = [step for step in steps if "AWS_ACCESS_KEY_ID" in step.get("env", {})]
    assert {step["name"] for step in remote_steps} >= {"Check that the DVC remote answers", "Reproduce the pipeline"}
    install = next(step["run"] for step in steps if step.get("name") == "Install")
    extras = re.search(r"pip install -c constraints\.txt -e '\.\[([\w,]+)\]'", install)
    assert extras, install
    assert "dvc-s3" in extra_requirements(set(extras.group(1).split(",")))
    assert re.search(r"^dvc-s3==[\d.]+$", (PROJECT / "constraints.txt").read_text(), re.M)
    assert "dvc-s3" in extra_requirements({"dev"})  # the S3 remote test needs it too

"""Fixtures shared by the tests: a copy of the project in a temporary git repository."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

PROJECT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT.parent / "shared" / "data"
# What a fresh clone holds that the pipeline needs.
PROJECT_FILES = [
    "dvc.yaml", "params.yaml", "thresholds.yaml", ".dvc/config", ".dvc/.gitignore", ".dvcignore", ".gitignore",
    "data/local/README.md", "data/local/.gitignore", "data/local/mnist/.gitkeep", "data/local/breast/.gitkeep",
]


def tool_env() -> dict[str, str]:
    """The environment for dvc and the stages: this interpreter's bin first on PATH, so
    that the stages' `python -m ...` runs with the same packages as the tests."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["DVC_NO_ANALYTICS"] = "1"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def run(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=tool_env(), capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def dvc(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "dvc", *args], repo, check)


def git(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return run(["git", "-c", "user.name=test", "-c", "user.email=test@example.com", *args], repo)


def stages_run(output: str) -> list[str]:
    """The stages that a `dvc repro` ran (not those it skipped or restored)."""
    return sorted(
        line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")
    )


def edit_params(repo: Path, changes: dict[str, object]) -> None:
    """Set dotted keys in the repository's params.yaml, e.g. {"train_toy.2blop.epochs": 3}."""
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node = params
        for key in parents:
            node = node[key]
        node[last] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture
def project_repo(tmp_path: Path) -> Path:
    """A copy of the project's pipeline files in a new git repository, committed."""
    repo = tmp_path / "project"
    repo.mkdir()
    for name in PROJECT_FILES:
        if (PROJECT / name).exists():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(PROJECT / name, repo / name)
    shutil.copytree(PROJECT / "stages", repo / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "project")
    return repo

"""Each stage in dvc.yaml lists under ``deps`` exactly the project modules it runs, so that
editing a module reruns the stages that import it, and no others.

The imports are read with ``ast`` (no TensorFlow, nothing imported): every import in a
module counts, those inside functions too, and then the imports of the modules it imports.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import PROJECT

PACKAGE = "stages"
STAGES_DIR = PROJECT / PACKAGE


def module_file(module: str) -> Path | None:
    """The file of a project module (``stages.x`` -> stages/x.py), or None for any other module."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    path = PROJECT.joinpath(*parts)
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def imported_modules(path: Path) -> set[str]:
    """The project modules that the code in ``path`` imports, by name; ``from stages import x``
    names the module ``stages.x`` when there is one, else the package."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import; this test reads absolute ones only"
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names
                         if (file := module_file(f"{node.module}.{alias.name}")) and file.is_file())
    return {module for module in found if module_file(module)}


def runs_code(init: Path) -> bool:
    """Whether a package's ``__init__.py`` holds more than a docstring: importing any of its
    modules runs it first, so then it counts as code of every stage."""
    body = ast.parse(init.read_text()).body
    return any(not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)) for node in body)


def project_files_run_by(module: str) -> set[str]:
    """The files of the project modules that ``python -m <module>`` runs, relative to the project."""
    seen, todo = set(), [module]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        todo += imported_modules(module_file(current))
    files = {module_file(name) for name in seen}
    init = STAGES_DIR / "__init__.py"
    files.discard(init)  # counted below, by what it holds
    if runs_code(init):
        files.add(init)
    return {file.relative_to(PROJECT).as_posix() for file in files}


def dvc_stages() -> dict[str, dict]:
    """dvc.yaml's stages, a ``foreach`` stage by its ``do`` body (its deps are the same for every item)."""
    stages = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"]
    return {name: definition.get("do", definition) for name, definition in stages.items()}


@pytest.mark.parametrize("stage", sorted(dvc_stages()))
def test_deps_list_exactly_the_modules_the_stage_runs(stage):
    body = dvc_stages()[stage]
    command = re.match(rf"python -m ({PACKAGE}\.\w+)", body["cmd"])
    assert command, f"{stage}: cmd does not start with `python -m {PACKAGE}.<module>`"
    listed = {dep for dep in body["deps"] if dep.startswith(f"{PACKAGE}/") and dep.endswith(".py")}
    run = project_files_run_by(command.group(1))
    assert listed == run, (
        f"{stage}: dvc.yaml's deps miss {sorted(run - listed) or 'nothing'} "
        f"and list {sorted(listed - run) or 'nothing'} that it does not import"
    )


def test_a_stage_depends_on_the_one_entry_of_data_local_its_params_name():
    # A params value names a download by its keyword, or a local copy by its name inside a
    # folder of data/local/ (stages.local_data.local_or); the stage's dep is that one entry,
    # the keyword's marker file for a download, so that a file dropped in the folder reruns
    # only the stage that reads it (tests/test_local_copies.py runs DVC on it).
    from stages import augment_train_mnist as mnist
    from stages import extract_vgg_features as extract

    stages = dvc_stages()
    for stage, reads in (
        ("augment_train_mnist", [("data", mnist.LOCAL_DATA_DIR, ["keras"])]),
        ("extract_vgg_features", [("data", extract.LOCAL_DATA_DIR, extract.MEDMNIST_RELEASES),
                                  ("weights", extract.LOCAL_WEIGHTS_DIR, extract.WEIGHTS_KEYWORDS)]),
    ):
        local_deps = {dep for dep in stages[stage]["deps"] if dep.startswith("data/local/")}
        assert local_deps == {f"{folder.as_posix()}/${{{stage}.{key}}}" for key, folder, _ in reads}, stage
        for key, folder, keywords in reads:
            for keyword in keywords:
                assert (PROJECT / folder / keyword).is_file(), f"{stage}.{key}: no marker file for {keyword}"

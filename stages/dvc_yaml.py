"""The paths that dvc.yaml gives each stage, for code that DVC does not run: the
classify command, the tests and the benchmarks. No stage imports this: a stage gets
its paths on its command line."""

from __future__ import annotations

import shlex
from pathlib import Path

from stages.errors import StageError
from stages.params import read_yaml

DVC_YAML = Path("dvc.yaml")


def stage_command(stage: str, item: str | None = None, path: Path = DVC_YAML) -> list[str]:
    """The command line that dvc.yaml gives ``stage`` (for ``item`` of a ``foreach``), after
    ``python -m stages.<stage>``."""
    definition = (read_yaml(path) or {}).get("stages", {}).get(stage)
    if definition is None:
        raise StageError(f"{path}: no stage {stage}")
    body = definition.get("do", definition)
    command = body["cmd"].replace("${key}", item or "").replace("${item}", item or "")
    return shlex.split(command)[3:]


def stage_paths(stage: str, item: str | None = None, path: Path = DVC_YAML) -> dict[str, Path]:
    """The ``--NAME PATH`` pairs of ``stage_command``, as a dict of paths."""
    words = stage_command(stage, item, path)
    pairs = words[len(words) % 2:]  # a foreach stage's command starts with the item's name
    return {pairs[i].removeprefix("--"): Path(pairs[i + 1]) for i in range(0, len(pairs), 2)}

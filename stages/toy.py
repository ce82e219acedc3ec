"""What the two toy stages share: the dataset names, file locations and argv handling."""

from __future__ import annotations

from pathlib import Path

from stages import common

DATASETS = ("2blop", "blop_circle", "4blop")


def data_path(name: str) -> Path:
    return Path("data/toy") / f"{name}.npz"


def dataset_from_argv(stage: str, argv: list[str]) -> str:
    """The one command-line argument of a toy stage: a dataset name."""
    if len(argv) != 1 or argv[0] not in DATASETS:
        raise common.StageError(f"usage: python -m stages.{stage} NAME, NAME one of {', '.join(DATASETS)}")
    return argv[0]


def settings_for(params: dict, stage: str, name: str) -> dict:
    """This dataset's validated settings from the stage's section of params."""
    if name not in params[stage]:
        raise common.ParamsError(f"params.yaml: {stage}.{name}: missing key")
    return params[stage][name]

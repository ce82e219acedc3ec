"""The model files a command uses: where dvc.yaml says each stage writes them, and loading
them without running code from them.

The paths are read from each stage's command line in dvc.yaml (``--NAME PATH``), the one
place that states them. DVC's own API (``dvc.repo.Repo(uninitialized=True)``, then
``repo.stage.collect``) gives the same command lines offline in about half a second, but
it resolves the whole stage, its dependencies too: ``extract_vgg_features``'s name
``${extract_vgg_features.data}``, so it fails without a params.yaml that holds that key,
although no path a command reads depends on it. The command lines interpolate only the
item of a ``foreach``, which this replaces itself.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np

from stages.shared.config import StageError, one_line, read_yaml

DVC_YAML = Path("dvc.yaml")

# What fit_knn's model file may hold besides the Python and NumPy types skops always
# trusts: loading refuses anything else, so a model swapped on a shared DVC remote
# cannot run code in classify-images.
KNN_TYPES = [
    "sklearn.neighbors._classification.KNeighborsClassifier",
    "sklearn.pipeline.Pipeline",
    "sklearn.preprocessing._data.Normalizer",
]


# ------------------------------------------------------------------------ where dvc.yaml puts them
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
    pairs = words[len(words) % 2 :]  # a foreach stage's command starts with the item's name
    return {pairs[i].removeprefix("--"): Path(pairs[i + 1]) for i in range(0, len(pairs), 2)}


def required(path: Path, stage: str) -> Path:
    if not path.is_file():
        raise StageError(f"{path}: not found; run `dvc repro {stage}` (or `dvc pull`) first")
    return path


# ----------------------------------------------------------------------------- loading them
def load_knn(path: Path):
    """The pipeline that ``fit_knn`` saved; a file that holds other types is refused unloaded."""
    import skops.io
    from skops.io.exceptions import UntrustedTypesFoundException

    try:
        return skops.io.load(path, trusted=KNN_TYPES)
    except FileNotFoundError:
        raise StageError(f"{path}: not found; run `dvc repro fit_knn` (or `dvc pull`) first") from None
    except UntrustedTypesFoundException as err:
        raise StageError(
            f"{path}: refused: it holds types that fit_knn never writes ({one_line(err)}); "
            f"it may have been tampered with, so it was not loaded"
        ) from None
    except Exception as err:  # a damaged zip or schema: skops raises what its parsers raise
        raise StageError(f"{path}: not a readable skops model ({one_line(err)})") from None


def load_keras_model(path: Path):
    """A Keras model in Keras's safe mode, which refuses a file whose layers would run
    code of their own (a ``Lambda``): refused in one line, naming the file."""
    import keras

    try:
        return keras.models.load_model(path, safe_mode=True)
    except (ValueError, TypeError, OSError) as err:
        raise StageError(f"{path}: refused or unreadable Keras model ({one_line(err)})") from None


def read_backbone_recipe() -> tuple[dict, Path]:
    """``extract_vgg_features``'s ``--backbone`` file (what rebuilds the frozen backbone, with
    the class names), and its path, which errors name."""
    path = required(stage_paths("extract_vgg_features")["backbone"], "extract_vgg_features")
    return json.loads(path.read_text()), path


def rebuild_backbone(recipe: dict, recipe_path: Path):
    """The frozen backbone that ``recipe`` (``extract_vgg_features``'s ``--backbone``)
    describes, refused unless its weights are the ones the features were extracted with."""
    from stages.shared.backbone import WEIGHTS_KEYWORDS, load_backbone, weights_digest

    weights = recipe["weights"]  # a keyword, or the path of the local weights file
    if weights not in WEIGHTS_KEYWORDS and not Path(weights).is_file():
        raise StageError(
            f"{weights}: the backbone's weights file, named in {recipe_path}, is not on this machine; "
            f"`dvc pull` does not bring it (a local copy, not a DVC output): copy it to that path from "
            f"the machine that ran extract_vgg_features (weights sha256 {recipe['weights_sha256'][:12]}...)"
        )
    backbone = load_backbone(recipe)
    rebuilt = weights_digest(backbone)
    if rebuilt != recipe["weights_sha256"]:
        raise StageError(
            f"{recipe_path}: the backbone rebuilt from weights {weights} is not the one the features were "
            f"extracted with (weights sha256 {rebuilt[:12]}... against {recipe['weights_sha256'][:12]}...): "
            f"the weights changed since; rerun `dvc repro evaluate@breast` so that every stage uses the same"
        )
    return backbone


def model_inputs(stage: str, recipe: dict, recipe_path: Path) -> tuple[list[str], np.ndarray]:
    """The blocks that ``stage``'s classifier takes, in order, as its ``--inputs`` file records
    them, and their columns in the backbone's features."""
    from stages.shared.breast import block_columns

    inputs_path = required(stage_paths(stage)["inputs"], stage)
    inputs = json.loads(inputs_path.read_text())
    columns = block_columns(
        recipe["feature_blocks"], recipe["block_widths"], inputs["features"], str(inputs_path), recipe_path
    )
    if len(columns) != inputs["n_features"]:
        raise StageError(
            f"{inputs_path}: {inputs['n_features']} features, but its blocks are {len(columns)} wide "
            f"in {recipe_path}; rerun `dvc repro evaluate@breast`"
        )
    return inputs["features"], columns

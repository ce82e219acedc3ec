"""Classify new images with a pipeline the stages trained: one CSV row per image.

    classify-images [--model breast|breast-knn|breast-head|mnist] [-o FILE] PATH [PATH ...]
    python -m stages.commands.classify ...

Run from the project root, after `dvc repro` (or `dvc pull`) has put the models there;
where they are is read from dvc.yaml, which states every path.
PATH is an image file or a folder, searched recursively; hidden files, ``Thumbs.db``,
``desktop.ini`` and ``__MACOSX/`` are skipped, as in ``extract_vgg_features``.

* ``breast-knn``, ``breast-head``: the frozen backbone that ``extract_vgg_features``
  used (its ``--backbone`` recipe), then ``fit_knn``'s or ``train_head``'s model, the
  one whose figures the metrics report (for the head, its whole ensemble).
  Images are read, resized and preprocessed by the extraction stage's own functions.
* ``breast`` (the default): whichever of the two has the higher cross-validation ROC
  AUC in ``evaluate@breast``'s metrics (over the non-test images when the data has a
  test split: the choice never looks at the test split).
* ``mnist``: ``augment_train_mnist``'s digit CNN. Each image is turned grey and resized
  to 28x28 pixels; digits must be light on a dark background, as in MNIST.

Loading a model runs no code: the KNN is a skops file that may hold only the types
``fit_knn`` writes, and Keras models load in Keras's safe mode.

Breast images also get ``nearest_distance``, the distance of their L2-normalised
features to the nearest training image's, and ``unlike_training``, true when it is
beyond ``fit_knn``'s novelty threshold: such an image is not like any the classifier
learnt from (a digit, noise, another kind of picture), so its probabilities mean little.
Standard error says how many were flagged. An image of the same kind as the training
images but of a class they do not hold is not flagged.

Writes ``file,predicted,p_<class>...`` (and for breast images the two columns above) to
standard output, or to ``-o FILE``. A file that cannot be read as an image is named on
standard error and skipped: the rest of a large batch is still classified, and the exit
status is 1 so that a script notices.
Progress goes to standard error.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from stages.shared.config import StageError, one_line, read_yaml
from stages.shared.files import atomic_path
from stages.shared.images import IMAGE_SUFFIXES, files_under, prepare_image, read_image_file
from stages.shared.runtime import run_stage

BREAST_MODELS = {"breast-knn": "fit_knn", "breast-head": "train_head"}  # the stage that trains each
PROGRESS_EVERY = 10  # batches between progress lines
# What breast images get beside the probabilities: the distance to the nearest training
# image and whether it is beyond fit_knn's novelty threshold.
NOVELTY_COLUMNS = ("nearest_distance", "unlike_training")


DVC_YAML = Path("dvc.yaml")

# What fit_knn's model file may hold besides the Python and NumPy types skops always
# trusts: loading refuses anything else, so a model swapped on a shared DVC remote
# cannot run code in classify-images.
KNN_TYPES = [
    "sklearn.neighbors._classification.KNeighborsClassifier",
    "sklearn.pipeline.Pipeline",
    "sklearn.preprocessing._data.Normalizer",
]


def load_knn(path: Path):
    """The pipeline that ``main`` saved; a file that holds other types is refused unloaded."""
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


def find_images(paths: list[Path]) -> list[Path]:
    """The image files named or found under ``paths``, in a stable order.

    A file named on the command line is always tried; in a folder, only files with an
    image suffix are, and others are left alone (a folder of scans holds notes too).
    """
    found = []
    for path in paths:
        if path.is_dir():
            found += [file for file in files_under(path) if file.suffix.lower() in IMAGE_SUFFIXES]
        elif path.is_file():
            found.append(path)
        else:
            raise StageError(f"{path}: no such file or folder")
    return found


def readable_batches(
    files: list[Path], prepare: Callable[[np.ndarray], np.ndarray], batch_size: int, skipped: list[str]
) -> Iterator[tuple[list[Path], np.ndarray]]:
    """Batches of ``(files, prepared images)``; a file that does not decode is recorded in
    ``skipped`` with the reason, named on stderr, and left out."""
    names, images = [], []
    for file in files:
        try:
            images.append(prepare(read_image_file(file)))
            names.append(file)
        except StageError as err:
            skipped.append(str(err))
            print(f"skipped {err}", file=sys.stderr, flush=True)
        if len(images) == batch_size:
            yield names, np.stack(images)
            names, images = [], []
    if images:
        yield names, np.stack(images)


def breast_classifier(model: str) -> tuple[str, Callable, tuple, int, float]:
    """``(name, columns of a prepared batch, class names, image size, novelty threshold)`` of a
    breast pipeline: the columns are the class probabilities, ``nearest_distance`` and
    ``unlike_training``.

    ``model`` ``breast`` picks by the cross-validation ROC AUC in the breast metrics. The
    backbone's features hold every block the extraction wrote; each classifier, and the
    novelty flag (the KNN's), gets the blocks it was trained on.
    """
    from stages.shared.breast import nearest_distances
    from stages.shared.images import preprocess_function

    recipe_path = required(stage_paths("extract_vgg_features")["backbone"], "extract_vgg_features")
    recipe = json.loads(recipe_path.read_text())
    knn, threshold = novelty_reference()
    knn_columns = model_columns("fit_knn", recipe, recipe_path)
    name, predict_features = breast_feature_model(model, knn)
    columns_of_model = model_columns(BREAST_MODELS[name], recipe, recipe_path)
    backbone, preprocess = rebuild_backbone(recipe, recipe_path), preprocess_function(recipe["backbone"])

    def columns(batch: np.ndarray) -> tuple[np.ndarray, dict]:
        features = np.asarray(backbone.predict_on_batch(preprocess(batch)))
        distances = nearest_distances(knn, features[:, knn_columns])
        return predict_features(features[:, columns_of_model]), dict(
            zip(NOVELTY_COLUMNS, (distances, distances > threshold))
        )

    return name, columns, tuple(recipe["class_names"]), recipe["image_size"], threshold


def rebuild_backbone(recipe: dict, recipe_path: Path):
    """The frozen backbone that ``recipe`` (``extract_vgg_features``'s ``--backbone``)
    describes, refused unless its weights are the ones the features were extracted with."""
    from stages.shared.images import WEIGHTS_KEYWORDS, load_backbone, weights_digest

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


def model_columns(stage: str, recipe: dict, recipe_path: Path) -> np.ndarray:
    """The columns of the backbone's features that ``stage``'s classifier takes, as its
    ``--inputs`` file records them."""
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
    return columns


def breast_feature_model(model: str, knn=None) -> tuple[str, Callable[[np.ndarray], np.ndarray]]:
    """``(name, class probabilities of the classifier's features)``: the model that ``fit_knn``
    or ``train_head`` saved and scored; ``breast`` picks one as ``choose_breast_model`` does.
    ``knn``: ``fit_knn``'s pipeline if already loaded (else it is loaded here when needed)."""

    if model == "breast":
        model = choose_breast_model(stage_paths("evaluate", "breast")["metrics"])
    stage = BREAST_MODELS[model]
    path = required(stage_paths(stage)["model"], stage)
    if model == "breast-knn":
        return model, (knn if knn is not None else load_knn(path)).predict_proba
    keras_model = load_keras_model(path)
    return model, lambda features: np.asarray(keras_model.predict_on_batch(features), dtype=np.float64)


def novelty_reference() -> tuple[Any, float]:
    """``fit_knn``'s pipeline, whose fitted images are the reference, and its novelty threshold."""

    paths = stage_paths("fit_knn")
    threshold = json.loads(required(paths["novelty"], "fit_knn").read_text())["threshold"]
    return load_knn(required(paths["model"], "fit_knn")), threshold


def load_keras_model(path: Path):
    """A Keras model in Keras's safe mode, which refuses a file whose layers would run
    code of their own (a ``Lambda``): refused in one line, naming the file."""
    import keras

    try:
        return keras.models.load_model(path, safe_mode=True)
    except (ValueError, TypeError, OSError) as err:
        raise StageError(f"{path}: refused or unreadable Keras model ({one_line(err)})") from None


def choose_breast_model(metrics_dir: Path) -> str:
    """The breast classifier with the better cross-validation figure: ``cv`` when the data
    has a test split (which stays out of the choice), else ``heldout``, which is then
    cross-validation too. ROC AUC, or balanced accuracy for more than two classes."""
    figures = {}
    for model, stage in BREAST_MODELS.items():
        classifier = stage_paths(stage)["predictions"].stem  # evaluate names its metrics so
        metrics = json.loads(required(metrics_dir / f"{classifier}.json", "evaluate@breast").read_text())
        chosen_on = metrics.get("cv", metrics["heldout"])
        value = chosen_on["roc_auc"] if "roc_auc" in chosen_on else chosen_on["balanced_accuracy"]
        figures[model] = value, chosen_on["protocol"]
    best = max(figures, key=lambda model: figures[model][0])
    print(
        f"using {best}: "
        + ", ".join(f"{model} {value:.4f}" for model, (value, _) in figures.items())
        + f" ({figures[best][1]})",
        file=sys.stderr,
    )
    return best


def mnist_classifier() -> tuple[str, Callable, tuple, int]:
    from stages.shared.images import MNIST_CLASS_NAMES, MNIST_IMAGE_SHAPE, mnist_model_input

    path = required(stage_paths("augment_train_mnist")["model"], "augment_train_mnist")
    model = load_keras_model(path)

    def columns(batch: np.ndarray) -> tuple[np.ndarray, dict]:
        return np.asarray(model.predict_on_batch(mnist_model_input(batch))), {}  # no other columns

    return "mnist", columns, MNIST_CLASS_NAMES, MNIST_IMAGE_SHAPE[0]


def required(path: Path, stage: str) -> Path:
    if not path.is_file():
        raise StageError(f"{path}: not found; run `dvc repro {stage}` (or `dvc pull`) first")
    return path


def classify(
    files: list[Path],
    columns: Callable,
    prepare: Callable,
    class_names: tuple,
    batch_size: int,
    other_columns: tuple[str, ...] = (),
):
    """A DataFrame ``file, predicted, p_<class>...`` of every readable file, then the
    ``other_columns`` that ``columns(batch)`` gives beside the probabilities; and the
    skipped files."""
    import pandas as pd

    rows, skipped, done, started = [], [], 0, time.perf_counter()
    for number, (names, batch) in enumerate(readable_batches(files, prepare, batch_size, skipped), start=1):
        p, other = columns(batch)
        rows.append(
            pd.DataFrame(
                {
                    "file": [str(n) for n in names],
                    "predicted": np.asarray(class_names)[p.argmax(1)],
                    **{f"p_{name}": p[:, i] for i, name in enumerate(class_names)},
                    **other,
                }
            )
        )
        done += len(names)
        if number % PROGRESS_EVERY == 0:
            rate = done / (time.perf_counter() - started)
            print(f"classified {done} of {len(files)} images, {rate:.1f} images/s", file=sys.stderr, flush=True)
    header = ["file", "predicted", *(f"p_{name}" for name in class_names), *other_columns]
    return (pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=header)), skipped


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="classify-images", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="image files or folders")
    parser.add_argument(
        "--model",
        choices=["breast", *BREAST_MODELS, "mnist"],
        default="breast",
        help="the trained pipeline (default breast: the better breast classifier by cross-validation)",
    )
    parser.add_argument("-o", "--output", type=Path, help="CSV file to write (default: standard output)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    args = parser.parse_args(argv)
    files = find_images(args.paths)
    threshold, other_columns = None, ()
    if args.model == "mnist":
        name, columns, class_names, size = mnist_classifier()
        mode = "L"  # grey, as MNIST's arrays hold the digits
    else:
        name, columns, class_names, size, threshold = breast_classifier(args.model)
        mode, other_columns = "RGB", NOVELTY_COLUMNS
    prepare = lambda image: prepare_image(image, size, mode)  # noqa: E731
    print(f"classifying {len(files)} images with {name}", file=sys.stderr, flush=True)
    table, skipped = classify(files, columns, prepare, class_names, args.batch_size, other_columns)
    # 7 significant digits: a float32 probability to within 1e-7, as in the predictions files
    if args.output:
        with atomic_path(args.output) as tmp:
            table.to_csv(tmp, index=False, float_format="%.7g")
    else:
        table.to_csv(sys.stdout, index=False, float_format="%.7g")
    print(
        f"classified {len(table)} images" + (f"; skipped {len(skipped)} that could not be read" if skipped else ""),
        file=sys.stderr,
    )
    if threshold is not None:
        flagged = int(table["unlike_training"].sum()) if len(table) else 0
        print(
            f"flagged {flagged} of {len(table)} images as unlike the training images (distance to the nearest "
            f"one above {threshold:.4f}: unlike_training); their probabilities mean little",
            file=sys.stderr,
        )
    sys.exit(1 if skipped else 0)


def cli() -> None:
    run_stage(main)  # a StageError: one line and exit status 2


if __name__ == "__main__":
    cli()

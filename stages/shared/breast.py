"""What the two breast classifiers (``fit_knn``, ``train_head``) share: the features they
read and the protocol that scores them, so that both are held out on the same images
and the same folds.

The protocol, given a way to ``fit`` a classifier on some images and to predict others:

* with a test split: the classifier fitted on every non-test image predicts the test
  split (evaluation ``heldout``), and again those of its images that have no near-copy
  among the images it was fitted on (``heldout_unseen``: images it has not in effect
  seen); stratified k-fold cross-validation over the non-test images gives a second,
  steadier figure (``cv``) without touching the test split;
* without one (a lab's folder of images): the cross-validation runs over all the
  images and is the held-out figure; the classifier fitted on all of them is kept.

Every fold keeps each group of ``find_near_copies`` whole (near-copies of one scan, and a
lab's patients or lesions), so no image is scored by a classifier fitted on its copy. The
folds come from ``seed``, ``breast_cv_folds`` and the groups alone, so both classifiers see
the same ones. Each classifier reads the blocks of features it uses (its ``features``
param) out of the one extraction, which holds every block side by side.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pydantic
from pydantic import Field

from stages.shared.config import ParamsError, Section, StageError, one_line
from stages.shared.files import read_npz, write_json
from stages.shared.predictions import prediction_frame

FOLDS_KEY = "breast_cv_folds"


class FoldParams(Section):
    """The keys both breast classifiers read, so that they are held out on the same folds."""

    seed: int = Field(ge=0)
    breast_cv_folds: int = Field(ge=2)


def _distinct(names: list[str]) -> list[str]:
    if len(set(names)) != len(names):
        raise ValueError(f"a block twice in {names}")
    return names


# The blocks a classifier may read (its ``features`` param), as extract_vgg_features names
# them: the pooled conv blocks, or the top's fc1 / fc2.
FeatureBlocks = Annotated[
    list[Literal["block1", "block2", "block3", "block4", "block5", "fc1", "fc2"]],
    Field(min_length=1),
    pydantic.AfterValidator(_distinct),
]


@dataclass(frozen=True)
class FeatureSet:
    """What ``extract_vgg_features`` wrote, with the blocks one classifier reads: one row of
    every array per image."""

    features: np.ndarray  # float32 (N, D): the chosen blocks side by side
    labels: np.ndarray  # int (N,), indices into class_names
    split: np.ndarray  # "train" / "val" / "test"
    source: np.ndarray  # file path or npz index of each image
    class_names: tuple[str, ...]
    blocks: tuple[str, ...]  # the chosen blocks, in the order of their columns
    groups: np.ndarray  # int (N,): find_near_copies' group of each image, which no split separates


def block_columns(
    blocks: Sequence[str], widths: Sequence[int], chosen: Sequence[str], chooser: str, source: Path | str
) -> np.ndarray:
    """The column indices of the ``chosen`` blocks, in that order, in the features of
    ``source``, which hold ``blocks`` of ``widths`` side by side. ``chooser`` names what
    chose them, in the error when one is not there."""
    starts = dict(zip(blocks, np.cumsum([0, *widths[:-1]]).tolist()))
    width_of = dict(zip(blocks, widths))
    missing = [block for block in chosen if block not in starts]
    if missing:
        raise StageError(f"{chooser}: {missing[0]} is not among the blocks of {source} ({', '.join(blocks)})")
    return np.concatenate([np.arange(starts[block], starts[block] + width_of[block]) for block in chosen])


def load_features(path: Path, chosen: Sequence[str], key: str, groups_path: Path) -> FeatureSet:
    """The features ``extract_vgg_features`` wrote to ``path``, cut to the ``chosen`` blocks
    (the params ``key`` of the classifier that reads them), with the groups that
    ``find_near_copies`` wrote to ``groups_path``."""
    arrays = read_npz(
        path,
        ("features", "feature_blocks", "block_widths", "labels", "split", "source", "class_names"),
        "extract_vgg_features",
    )
    blocks = arrays["feature_blocks"].tolist()
    if not set(chosen) <= set(blocks):
        missing = next(block for block in chosen if block not in blocks)
        raise ParamsError(
            f"params.yaml: {key}: {missing} is not among the blocks of {path} ({', '.join(blocks)}); "
            f"choose among those, or add it to extract_vgg_features.blocks"
        )
    columns = block_columns(blocks, arrays["block_widths"].tolist(), chosen, f"params.yaml: {key}", path)
    return FeatureSet(
        arrays["features"][:, columns],
        arrays["labels"],
        arrays["split"],
        arrays["source"],
        tuple(arrays["class_names"].tolist()),
        tuple(chosen),
        read_groups(groups_path, arrays["source"], path),
    )


def read_groups(path: Path, sources: np.ndarray, features_path: Path) -> np.ndarray:
    """The group of each image of ``sources`` (the features' order) from ``find_near_copies``'
    CSV, which must list the same images in the same order."""
    import pandas as pd

    try:
        table = pd.read_csv(path, dtype={"source": str}, keep_default_na=False)
    except FileNotFoundError:
        raise StageError(f"{path}: not found; run find_near_copies first") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise StageError(f"{path}: not a readable CSV ({one_line(err)})") from None
    if "group" not in table.columns or "source" not in table.columns:
        raise StageError(f"{path}: not a find_near_copies groups file (no source or group column)")
    if table["source"].tolist() != sources.tolist():
        raise StageError(f"{path}: its images are not those of {features_path}; rerun find_near_copies")
    return table["group"].to_numpy(np.int64)


def write_model_inputs(path: Path, data: FeatureSet) -> None:
    """Which blocks, in which order, a saved classifier takes: ``classify-images`` cuts the
    rebuilt backbone's features to them."""
    write_json(path, {"features": list(data.blocks), "n_features": int(data.features.shape[1])})


def stratified_folds(
    labels: np.ndarray, groups: np.ndarray, n_folds: int, seed: int, key: str = FOLDS_KEY
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Shuffled stratified ``(fit, held_out)`` index pairs over ``labels`` that keep each of
    ``groups`` in one fold; ``key`` is the params key that set ``n_folds``, named when the
    data has too few groups for them."""
    from sklearn.model_selection import StratifiedGroupKFold

    classes = np.unique(labels)
    if len(classes) < 2:
        raise StageError(f"the images to cross-validate hold one class only (label {classes[0]}); need two")
    # A fold holds every class only if each class lies in at least n_folds groups.
    counts = np.array([len(np.unique(groups[labels == label])) for label in classes])
    if counts.min() < n_folds:
        raise ParamsError(
            f"params.yaml: {key}: {n_folds} folds need {n_folds} groups of near-copies holding every class; "
            f"label {classes[counts.argmin()]} is in {counts.min()}"
        )
    return list(StratifiedGroupKFold(n_folds, shuffle=True, random_state=seed).split(labels, labels, groups))


def unseen(candidates: np.ndarray, fitted: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """The images of ``candidates`` with no near-copy among the images ``fitted`` (indices):
    those whose group holds none of them."""
    return candidates[~np.isin(groups[candidates], groups[fitted])]


def protocol_predictions(
    data: FeatureSet,
    fit: Callable[[np.ndarray], Any],
    predict_proba: Callable[[Any, np.ndarray], np.ndarray],
    n_folds: int,
    seed: int,
) -> tuple[Any, list]:
    """Score a classifier by the protocol of the module docstring.

    ``fit(indices)`` returns a classifier fitted on those images; ``predict_proba(model,
    indices)`` its class probabilities for others. Returns the classifier fitted on every
    non-test image and the rows of its predictions file. (Not scikit-learn's
    ``cross_val_predict``: the head is a Keras model, not an estimator, and the
    predictions file records each image's fold; the metrics come from ``evaluate``.)
    """
    is_test = data.split == "test"
    rest = np.flatnonzero(~is_test)
    final = fit(rest)
    probabilities, fold_of = np.empty((len(data.labels), len(data.class_names))), np.zeros(len(data.labels), int)
    folds = stratified_folds(data.labels[rest], data.groups[rest], n_folds, seed)
    for number, (fold_fit, fold_held) in enumerate(folds, start=1):
        probabilities[rest[fold_held]] = predict_proba(fit(rest[fold_fit]), rest[fold_held])
        fold_of[rest[fold_held]] = number

    def rows(indices, probabilities, evaluation, protocol, fold=None):
        return prediction_frame(
            data.source[indices], data.labels[indices], probabilities, data.class_names, evaluation, protocol, fold=fold
        )

    cv = (rest, probabilities[rest])
    if is_test.any():
        test = np.flatnonzero(is_test)
        test_probabilities = predict_proba(final, test)
        unseen_test = np.isin(test, unseen(test, rest, data.groups))
        frames = [
            rows(test, test_probabilities, "heldout", "test split"),
            rows(
                test[unseen_test],
                test_probabilities[unseen_test],
                "heldout_unseen",
                "test split, the images with no near-copy among the images fitted on",
            ),
            rows(
                *cv,
                "cv",
                f"{n_folds}-fold grouped stratified cross-validation of the non-test images",
                fold=fold_of[rest],
            ),
        ]
    else:
        frames = [rows(*cv, "heldout", f"{n_folds}-fold grouped stratified cross-validation", fold=fold_of[rest])]
    return final, frames


def nearest_distances(knn, features: np.ndarray | None = None) -> np.ndarray:
    """Each image's distance to its nearest fitted image, in the pipeline's L2-normalised
    feature space; without ``features``, each fitted image's to the nearest other one."""
    query = None if features is None else knn[:-1].transform(features)
    return knn[-1].kneighbors(query, n_neighbors=1)[0][:, 0]

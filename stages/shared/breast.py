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
  images and is the held-out figure (``heldout``, and ``heldout_unseen`` too, since its
  folds keep near-copies together); the classifier fitted on all of them is kept.

Every fold keeps each group of ``find_near_copies`` whole (near-copies of one scan, and a
lab's patients or lesions), so no image is scored by a classifier fitted on its copy. The
folds come from ``seed``, ``breast_cv_folds`` and the groups alone, so both classifiers see
the same ones. Each classifier reads the blocks of features it uses (its ``features``
param) out of the one extraction, which holds every block side by side.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pydantic
from pydantic import Field

from stages.shared.config import ParamsError, Section, StageError, one_line
from stages.shared.files import read_npz
from stages.shared.predictions import positive_class, prediction_frame
from stages.shared.runner import write_json

FOLDS_KEY = "breast_cv_folds"


class FoldParams(Section):
    """The keys both breast classifiers read, so that they are held out on the same folds and
    call the same class positive (``positive_class.breast``)."""

    seed: int = Field(ge=0)
    breast_cv_folds: int = Field(ge=2)
    positive_class: dict[str, str | None]


# The operating point a classifier's ``target_sensitivity`` param sets (null: the argmax alone).
TargetSensitivity = Annotated[float, Field(gt=0, le=1)] | None


def operating_point(
    params: FoldParams, target: float | None, data: FeatureSet, key: str, source: Path
) -> OperatingPoint | None:
    """The operating point of a classifier's ``target`` sensitivity (the params ``key``) on
    ``data`` (read from ``source``), for the breast positive class; None for no target."""
    if target is None:
        return None
    positive = positive_class(params.positive_class.get("breast"), data.class_names, "positive_class.breast", source)
    if positive is None:
        raise ParamsError(f"params.yaml: {key}: a target sensitivity needs a positive class; set positive_class.breast")
    return OperatingPoint(data.class_names.index(positive), target)


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


def write_operating_point(path: Path, described: dict | None, data: FeatureSet, point: OperatingPoint | None) -> None:
    """Where a saved classifier calls an image positive (``--operating-point``):
    ``OperatingPoint.describe``'s figures with the positive class, or the argmax alone."""
    if point is None:
        write_json(path, {"target_sensitivity": None, "call": "the most probable class"})
    else:
        write_json(path, {"positive_class": data.class_names[point.positive], **described})


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


@dataclass(frozen=True)
class OperatingPoint:
    """Where a classifier calls an image positive: when its probability of the ``positive``
    class (an index) is at least the cut that catches ``target_sensitivity`` of the positive
    images among predictions made without them (out of fold)."""

    positive: int
    target_sensitivity: float

    def cut(self, labels: np.ndarray, probabilities: np.ndarray) -> float:
        """The highest cut of the positive class's probability whose calls catch at least the
        target share of the positive images in ``labels`` (class indices)."""
        ranked = np.sort(probabilities[labels == self.positive, self.positive])[::-1]
        if not len(ranked):
            raise StageError("no image of the positive class to choose the operating point on")
        return float(ranked[math.ceil(self.target_sensitivity * len(ranked) - 1e-9) - 1])

    def calls(self, probabilities: np.ndarray, cut: float | np.ndarray) -> np.ndarray:
        """Class indices at the operating point (two classes): the positive class at or above ``cut``."""
        return np.where(probabilities[:, self.positive] >= cut, self.positive, 1 - self.positive)

    def describe(self, labels: np.ndarray, probabilities: np.ndarray, cut: float, chosen_on: str) -> dict:
        """What ``--operating-point`` holds for a cut chosen on these out-of-fold predictions."""
        called = self.calls(probabilities, cut) == self.positive
        actual = labels == self.positive
        return {
            "target_sensitivity": self.target_sensitivity,
            "min_positive_probability": cut,
            "chosen_on": chosen_on,
            "images": len(labels),
            "out_of_fold_sensitivity": round(float(called[actual].mean()), 4),
            "out_of_fold_specificity": round(float((~called[~actual]).mean()), 4),
        }


def protocol_predictions(
    data: FeatureSet,
    fit: Callable[[np.ndarray], Any],
    predict_proba: Callable[[Any, np.ndarray], np.ndarray],
    n_folds: int,
    seed: int,
    point: OperatingPoint | None = None,
    inner_out_of_fold: Callable[[Any, np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None,
) -> tuple[Any, list, dict | None]:
    """Score a classifier by the protocol of the module docstring.

    ``fit(indices)`` returns a classifier fitted on those images; ``predict_proba(model,
    indices)`` its class probabilities for others. Returns the classifier fitted on every
    non-test image, the rows of its predictions file and, with an operating ``point``, what
    its cut is (``OperatingPoint.describe``; else None). (Not scikit-learn's
    ``cross_val_predict``: the head is a Keras model, not an estimator, and the
    predictions file records each image's fold; the metrics come from ``evaluate``.)

    At an operating ``point`` the rows also hold each image's call at it, by a cut chosen
    without that image: the test split's by the cut on the cross-validation's out-of-fold
    predictions (the one the saved classifier keeps); a cross-validation fold's by the cut
    on out-of-fold predictions over that fold's training images alone, which
    ``inner_out_of_fold(model, indices)`` gives as ``(indices, probabilities)`` for the
    model fitted on them.
    """
    is_test = data.split == "test"
    rest = np.flatnonzero(~is_test)
    final = fit(rest)
    probabilities, fold_of = np.empty((len(data.labels), len(data.class_names))), np.zeros(len(data.labels), int)
    fold_cut = np.zeros(len(data.labels))
    folds = stratified_folds(data.labels[rest], data.groups[rest], n_folds, seed)
    for number, (fold_fit, fold_held) in enumerate(folds, start=1):
        model = fit(rest[fold_fit])
        probabilities[rest[fold_held]] = predict_proba(model, rest[fold_held])
        fold_of[rest[fold_held]] = number
        if point:
            inner, inner_probabilities = inner_out_of_fold(model, rest[fold_fit])
            fold_cut[rest[fold_held]] = point.cut(data.labels[inner], inner_probabilities)
    cut, described = None, None
    if point:
        cut = point.cut(data.labels[rest], probabilities[rest])
        described = point.describe(
            data.labels[rest], probabilities[rest], cut, f"{n_folds}-fold grouped stratified cross-validation"
        )

    def rows(indices, probabilities, evaluation, protocol, fold=None, cut=cut):
        called = point.calls(probabilities, cut) if point else None
        return prediction_frame(
            data.source[indices],
            data.labels[indices],
            probabilities,
            data.class_names,
            evaluation,
            protocol,
            fold=fold,
            called=called,
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
                cut=fold_cut[rest],
            ),
        ]
    else:
        protocol = f"{n_folds}-fold grouped stratified cross-validation"
        # Grouped folds hold out only images with no near-copy in the images fitted on, so
        # every held-out image is an unseen one: the same rows under both names.
        frames = [
            rows(*cv, evaluation, protocol, fold=fold_of[rest], cut=fold_cut[rest])
            for evaluation in ("heldout", "heldout_unseen")
        ]
    return final, frames, described


def nearest_distances(knn, features: np.ndarray | None = None) -> np.ndarray:
    """Each image's distance to its nearest fitted image, in the pipeline's L2-normalised
    feature space; without ``features``, each fitted image's to the nearest other one."""
    query = None if features is None else knn[:-1].transform(features)
    return knn[-1].kneighbors(query, n_neighbors=1)[0][:, 0]

"""What the two breast classifiers (``fit_knn``, ``train_head``) share: the features they
read and the protocol that scores them, so that both are held out on the same images
and the same folds.

The protocol, given a way to ``fit`` a classifier on some images and to predict others:

* with a test split: the classifier fitted on every non-test image predicts the test
  split (evaluation ``heldout``), and stratified k-fold cross-validation over the
  non-test images gives a second, steadier figure (``cv``) without touching the test
  split;
* without one (a lab's folder of images): the cross-validation runs over all the
  images and is the held-out figure; the classifier fitted on all of them is kept.

The folds come from ``seed`` and ``breast_cv_folds`` alone, so both classifiers see
the same ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from stages.errors import ParamsError, StageError
from stages.inputs import read_npz
from stages.params import Section
from stages.predictions import prediction_frame

FOLDS_KEY = "breast_cv_folds"


class FoldParams(Section):
    """The keys both breast classifiers read, so that they are held out on the same folds."""

    seed: int = Field(ge=0)
    breast_cv_folds: int = Field(ge=2)


@dataclass(frozen=True)
class FeatureSet:
    """What ``extract_vgg_features`` wrote: one row of every array per image."""

    features: np.ndarray  # float32 (N, D)
    labels: np.ndarray  # int (N,), indices into class_names
    split: np.ndarray  # "train" / "val" / "test"
    source: np.ndarray  # file path or npz index of each image
    class_names: tuple[str, ...]


def load_features(path: Path) -> FeatureSet:
    arrays = read_npz(path, ("features", "labels", "split", "source", "class_names"), "extract_vgg_features")
    return FeatureSet(arrays["features"], arrays["labels"], arrays["split"], arrays["source"],
                      tuple(arrays["class_names"].tolist()))


def stratified_folds(
    labels: np.ndarray, n_folds: int, seed: int, key: str = FOLDS_KEY
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Shuffled stratified ``(fit, held_out)`` index pairs over ``labels``; ``key`` is the
    params key that set ``n_folds``, named when the data has too few images for them."""
    from sklearn.model_selection import StratifiedKFold

    classes, counts = np.unique(labels, return_counts=True)
    if len(classes) < 2:
        raise StageError(f"the images to cross-validate hold one class only (label {classes[0]}); need two")
    if counts.min() < n_folds:
        raise ParamsError(
            f"params.yaml: {key}: {n_folds} folds need {n_folds} images of every class; "
            f"label {classes[counts.argmin()]} has {counts.min()}"
        )
    return list(StratifiedKFold(n_folds, shuffle=True, random_state=seed).split(labels, labels))


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
    for number, (fold_fit, fold_held) in enumerate(stratified_folds(data.labels[rest], n_folds, seed), start=1):
        probabilities[rest[fold_held]] = predict_proba(fit(rest[fold_fit]), rest[fold_held])
        fold_of[rest[fold_held]] = number

    def rows(indices, probabilities, evaluation, protocol, fold=None):
        return prediction_frame(data.source[indices], data.labels[indices], probabilities, data.class_names,
                                evaluation, protocol, fold=fold)

    cv = (rest, probabilities[rest])
    if is_test.any():
        test = np.flatnonzero(is_test)
        frames = [
            rows(test, predict_proba(final, test), "heldout", "test split"),
            rows(*cv, "cv", f"{n_folds}-fold stratified cross-validation of the non-test images", fold=fold_of[rest]),
        ]
    else:
        frames = [rows(*cv, "heldout", f"{n_folds}-fold stratified cross-validation", fold=fold_of[rest])]
    return final, frames

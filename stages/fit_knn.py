"""Stage ``fit_knn``: L2-normalised VGG features into a k-nearest-neighbours classifier.

    python -m stages.fit_knn

Reads ``seed`` and ``fit_knn`` from params.yaml and ``data/breast/features.npz``
(written by ``extract_vgg_features``); writes the pipeline fitted on every non-test
image to ``models/breast/knn.pkl`` and its predictions to
``predictions/breast/knn.csv``, which ``evaluate@breast`` scores. Three evaluations,
kept apart because they answer different questions:

* ``heldout``: fitted on train+val, predicting the test split when the data has one;
  otherwise stratified k-fold cross-validation over all the images;
* ``cv``: with a test split, the same cross-validation over the non-test images, a
  second, steadier figure (the test split is not touched);
* ``resubstitution``: fitted on all the images and predicting them, the way the seed
  got its 88%. It measures memory, not generalisation. (The seed also scored raw
  features against a fit on normalised ones; the pipeline here normalises both.)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stages import common
from stages.predictions import prediction_frame, write_predictions

FEATURES_PATH = Path("data/breast/features.npz")
MODEL_PATH = Path("models/breast/knn.pkl")
PREDICTIONS_PATH = Path("predictions/breast/knn.csv")

SCHEMA = {
    "seed": common.integer(minimum=0),
    "fit_knn": common.mapping(
        {
            "k": common.integer(minimum=1),
            "metric": common.choice("euclidean", "cosine", "manhattan", "chebyshev"),
            "weights": common.choice("uniform", "distance"),
            "cv_folds": common.integer(minimum=2),
        }
    ),
}


@dataclass(frozen=True)
class FeatureSet:
    """What ``extract_vgg_features`` wrote: one row of every array per image."""

    features: np.ndarray  # float32 (N, D)
    labels: np.ndarray  # int (N,), indices into class_names
    split: np.ndarray  # "train" / "val" / "test"
    source: np.ndarray  # file path or npz index of each image
    class_names: tuple[str, ...]


def load_features(path: Path = FEATURES_PATH) -> FeatureSet:
    try:
        with np.load(path) as data:
            return FeatureSet(
                features=data["features"],
                labels=data["labels"],
                split=data["split"],
                source=data["source"],
                class_names=tuple(data["class_names"].tolist()),
            )
    except FileNotFoundError:
        raise common.StageError(f"{path}: not found; run `dvc repro extract_vgg_features` first") from None
    except KeyError as err:
        raise common.StageError(f"{path}: missing array {err}; rerun extract_vgg_features") from None


def make_knn_pipeline(k: int, metric: str = "euclidean", weights: str = "uniform"):
    """Each feature vector scaled to unit length, as in the seed, then k-nearest neighbours."""
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import Normalizer

    return Pipeline(
        [("l2", Normalizer()), ("knn", KNeighborsClassifier(n_neighbors=k, metric=metric, weights=weights))]
    )


def knn_for(settings: dict):
    """``make_knn_pipeline`` with the ``fit_knn`` section's settings."""
    return make_knn_pipeline(settings["k"], settings["metric"], settings["weights"])


def stratified_folds(labels: np.ndarray, k: int, cv_folds: int, seed: int) -> list:
    """Shuffled stratified ``(train, held_out)`` index pairs, checked to leave room for k neighbours."""
    from sklearn.model_selection import StratifiedKFold

    classes, counts = np.unique(labels, return_counts=True)
    if len(classes) < 2:
        raise common.StageError(f"the images to cross-validate hold one class only (label {classes[0]}); need two")
    if counts.min() < cv_folds:
        raise common.ParamsError(
            f"params.yaml: fit_knn.cv_folds: {cv_folds} folds need {cv_folds} images of every class; "
            f"label {classes[counts.argmin()]} has {counts.min()}"
        )
    folds = list(StratifiedKFold(cv_folds, shuffle=True, random_state=seed).split(labels, labels))
    smallest = min(len(train) for train, _ in folds)
    if k > smallest:
        raise common.ParamsError(
            f"params.yaml: fit_knn.k: {k} neighbours is more than the {smallest} images "
            f"of the smallest cross-validation training fold"
        )
    return folds


def out_of_fold(x: np.ndarray, y: np.ndarray, settings: dict, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified k-fold cross-validation of the pipeline on ``(x, y)``: the class
    probabilities of every image from the fold that held it out, and that fold (1-based)."""
    folds = stratified_folds(y, settings["k"], settings["cv_folds"], seed)
    probabilities, fold_of = np.empty((len(y), len(np.unique(y)))), np.empty(len(y), dtype=np.int64)
    for number, (train, held) in enumerate(folds, start=1):
        probabilities[held] = knn_for(settings).fit(x[train], y[train]).predict_proba(x[held])
        fold_of[held] = number
    return probabilities, fold_of


def fit_and_predict(data: FeatureSet, settings: dict, seed: int):
    """Fit the pipeline and predict every evaluation (see the module docstring).

    Returns ``(model, frames)``: the pipeline fitted on all non-test images, and the
    rows of the predictions file.
    """
    x, y, names = data.features, data.labels, data.class_names
    is_test = data.split == "test"
    fit = ~is_test
    folds = settings["cv_folds"]
    model = knn_for(settings).fit(x[fit], y[fit])
    probabilities, fold_of = out_of_fold(x[fit], y[fit], settings, seed)
    cv = (data.source[fit], y[fit], probabilities, names)
    if is_test.any():
        frames = [
            prediction_frame(data.source[is_test], y[is_test], model.predict_proba(x[is_test]), names,
                             "heldout", "test split"),
            prediction_frame(*cv, "cv", f"{folds}-fold stratified cross-validation of the non-test images",
                             fold=fold_of),
        ]
    else:
        frames = [prediction_frame(*cv, "heldout", f"{folds}-fold stratified cross-validation", fold=fold_of)]
    everything = knn_for(settings).fit(x, y)
    frames.append(prediction_frame(data.source, y, everything.predict_proba(x), names, "resubstitution",
                                   "fitted and scored on the same images, as the seed's 88%"))
    return model, frames


def save_model(model, path: Path | str) -> None:
    import joblib

    with common.atomic_path(path) as tmp:
        joblib.dump(model, tmp)


def main(argv: list[str]) -> None:
    if argv:
        raise common.StageError("usage: python -m stages.fit_knn (no arguments)")
    params = common.read_params(SCHEMA)
    settings = params["fit_knn"]
    data = load_features()
    print(
        f"fit_knn: {len(data.labels)} images, {data.features.shape[1]}-d features; k={settings['k']}, "
        f"{settings['metric']}, {settings['weights']}, {settings['cv_folds']}-fold CV",
        flush=True,
    )
    model, frames = fit_and_predict(data, settings, params["seed"])
    save_model(model, MODEL_PATH)
    write_predictions(PREDICTIONS_PATH, frames)
    print(f"fit_knn: wrote {MODEL_PATH} and {PREDICTIONS_PATH}")


if __name__ == "__main__":
    common.run_stage(main)

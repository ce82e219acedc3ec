"""Stage ``fit_knn``: L2-normalised VGG features into a k-nearest-neighbours classifier.

    python -m stages.fit_knn

Reads ``seed`` and ``fit_knn`` from params.yaml and ``data/breast/features.npz``
(written by ``extract_vgg_features``); writes the pipeline fitted on every non-test
image to ``models/breast/knn.pkl``, one prediction per image to
``results/breast/knn_predictions.csv``, held-out predictions for DVC's confusion plot
to ``plots/breast/confusion.csv`` and the metrics to ``results/breast/knn.json``.

Three figures, kept apart because they answer different questions:

* ``test``: fitted on train+val, scored on the test split (when the data has one);
* ``cv``: stratified k-fold cross-validation over the non-test images;
* ``resubstitution_accuracy``: fitted and scored on the same images, all of them, the
  way the seed got its 88%. It measures memory, not generalisation. (The seed also
  scored raw features against a fit on normalised ones; the pipeline here normalises
  both.)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stages import common

FEATURES_PATH = Path("data/breast/features.npz")
MODEL_PATH = Path("models/breast/knn.pkl")
PREDICTIONS_PATH = Path("results/breast/knn_predictions.csv")
CONFUSION_PATH = Path("plots/breast/confusion.csv")
METRICS_PATH = Path("results/breast/knn.json")

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


def make_pipeline(k: int, metric: str = "euclidean", weights: str = "uniform"):
    """Each feature vector scaled to unit length, as in the seed, then k-nearest neighbours."""
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import Normalizer

    return Pipeline(
        [("l2", Normalizer()), ("knn", KNeighborsClassifier(n_neighbors=k, metric=metric, weights=weights))]
    )


def pipeline_for(settings: dict):
    """``make_pipeline`` with the ``fit_knn`` section's settings."""
    return make_pipeline(settings["k"], settings["metric"], settings["weights"])


def scores(actual: np.ndarray, predicted: np.ndarray, class_names: tuple[str, ...]) -> dict:
    """Accuracy, balanced accuracy (mean per-class recall) and each class's recall."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, recall_score

    recall = recall_score(actual, predicted, labels=range(len(class_names)), average=None, zero_division=0)
    return {
        "accuracy": round(float(accuracy_score(actual, predicted)), 4),
        "balanced_accuracy": round(float(balanced_accuracy_score(actual, predicted)), 4),
        "recall": {name: round(float(r), 4) for name, r in zip(class_names, recall)},
    }


def stratified_folds(labels: np.ndarray, k: int, cv_folds: int, seed: int) -> list:
    """Shuffled stratified ``(train, held_out)`` index pairs, checked to leave room for k neighbours."""
    from sklearn.model_selection import StratifiedKFold

    classes, counts = np.unique(labels, return_counts=True)
    if len(classes) < 2:
        raise common.StageError(f"the non-test images hold one class only (label {classes[0]}); need two")
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


def cross_validate(x: np.ndarray, y: np.ndarray, settings: dict, seed: int):
    """Stratified k-fold CV of the pipeline on ``(x, y)``.

    Returns the mean and standard deviation over folds of accuracy and balanced
    accuracy, the out-of-fold prediction of every image, and its fold (1-based).
    """
    from sklearn.metrics import accuracy_score, balanced_accuracy_score

    folds = stratified_folds(y, settings["k"], settings["cv_folds"], seed)
    predicted, fold_of = np.empty_like(y), np.empty(len(y), dtype=np.int64)
    accuracy, balanced = [], []
    for number, (train, held) in enumerate(folds, start=1):
        model = pipeline_for(settings).fit(x[train], y[train])
        predicted[held], fold_of[held] = model.predict(x[held]), number
        accuracy.append(accuracy_score(y[held], predicted[held]))
        balanced.append(balanced_accuracy_score(y[held], predicted[held]))
    summary = {
        "folds": len(folds),
        "n": int(len(y)),
        "accuracy": round(float(np.mean(accuracy)), 4),
        "accuracy_std": round(float(np.std(accuracy)), 4),
        "balanced_accuracy": round(float(np.mean(balanced)), 4),
        "balanced_accuracy_std": round(float(np.std(balanced)), 4),
    }
    return summary, predicted, fold_of


def evaluate(data: FeatureSet, settings: dict, seed: int):
    """Fit and score the pipeline three ways (see the module docstring).

    Returns ``(model, metrics, predictions)``: the pipeline fitted on all non-test
    images; the metrics for results/breast/knn.json; and a DataFrame with one row per
    image (``source``, ``split``, ``actual``, ``predicted``, ``evaluated_by``) holding
    its test prediction or, for a non-test image, its out-of-fold prediction.
    """
    import pandas as pd

    x, y = data.features, data.labels
    is_test = data.split == "test"
    fit = ~is_test

    cv_summary, cv_predicted, fold_of = cross_validate(x[fit], y[fit], settings, seed)
    model = pipeline_for(settings).fit(x[fit], y[fit])
    predicted = np.empty_like(y)
    evaluated_by = np.empty(len(y), dtype=object)
    predicted[fit], evaluated_by[fit] = cv_predicted, [f"cv_fold_{f}" for f in fold_of]
    metrics = {"n_fit": int(fit.sum())}
    if is_test.any():
        predicted[is_test], evaluated_by[is_test] = model.predict(x[is_test]), "test"
        test_scores = scores(y[is_test], predicted[is_test], data.class_names)
        metrics["test"] = {"n": int(is_test.sum()), **test_scores}
    metrics["cv"] = cv_summary
    resubstituted = pipeline_for(settings).fit(x, y).predict(x)
    metrics["resubstitution_accuracy"] = round(float(np.mean(resubstituted == y)), 4)
    metrics["n_resubstitution"] = int(len(y))

    names = np.array(data.class_names)
    predictions = pd.DataFrame(
        {
            "source": data.source,
            "split": data.split,
            "actual": names[y],
            "predicted": names[predicted],
            "evaluated_by": evaluated_by,
        }
    )
    return model, metrics, predictions


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
    model, metrics, predictions = evaluate(data, settings, params["seed"])
    save_model(model, MODEL_PATH)
    with common.atomic_path(PREDICTIONS_PATH) as tmp:
        predictions.to_csv(tmp, index=False)
    held_out = predictions[predictions["split"] == "test"] if "test" in metrics else predictions
    common.write_confusion_csv(held_out["actual"], held_out["predicted"], CONFUSION_PATH)
    common.write_json(METRICS_PATH, metrics)
    if "test" in metrics:
        test = metrics["test"]
        print(f"fit_knn: test accuracy {test['accuracy']}, balanced accuracy {test['balanced_accuracy']}")
    cv = metrics["cv"]
    print(f"fit_knn: {cv['folds']}-fold CV accuracy {cv['accuracy']}, balanced {cv['balanced_accuracy']}")
    print(
        f"fit_knn: resubstitution accuracy {metrics['resubstitution_accuracy']} "
        "(fitted and scored on the same images, as the seed's 88%; not a held-out figure)"
    )


if __name__ == "__main__":
    common.run_stage(main)

"""Stage ``fit_knn``: L2-normalised VGG features into a k-nearest-neighbours classifier.

    python -m stages.fit_knn --features FEATURES.npz --model KNN.pkl --predictions PREDICTIONS.csv

Reads ``seed``, ``breast_cv_folds`` and ``fit_knn`` from params.yaml and the features
that ``extract_vgg_features`` wrote; writes the pipeline fitted on every non-test image
(``--model``) and its predictions (``--predictions``), which ``evaluate@breast`` scores: ``heldout`` and ``cv``
by the protocol it shares with ``train_head`` (see ``stages.breast``), and
``resubstitution``: fitted on all the images and predicting them, the way the original got
its 88%. That one measures memory, not generalisation. (The original also scored raw
features against a fit on normalised ones; the pipeline here normalises both.)
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from stages.breast import FeatureSet, FoldParams, load_features, protocol_predictions
from stages.cli import run_stage, stage_args
from stages.errors import ParamsError
from stages.outputs import atomic_path
from stages.params import Section, read_params
from stages.predictions import prediction_frame, write_predictions


class KnnSettings(Section):
    k: int = Field(ge=1)  # neighbours
    metric: Literal["euclidean", "cosine", "manhattan", "chebyshev"]
    weights: Literal["uniform", "distance"]


class Params(FoldParams):
    fit_knn: KnnSettings


def make_knn_pipeline(k: int, metric: str = "euclidean", weights: str = "uniform"):
    """Each feature vector scaled to unit length, as in the original, then k-nearest neighbours."""
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import Normalizer

    return Pipeline(
        [("l2", Normalizer()), ("knn", KNeighborsClassifier(n_neighbors=k, metric=metric, weights=weights))]
    )


def fit_and_predict(data: FeatureSet, settings: KnnSettings, n_folds: int, seed: int):
    """Fit the pipeline and predict every evaluation (see the module docstring).

    Returns ``(model, frames)``: the pipeline fitted on all non-test images, and the
    rows of the predictions file.
    """
    x, y = data.features, data.labels

    def fit(indices):
        # Checked here, where the images of each fold are known; fitting a KNN only stores them.
        if settings.k > len(indices):
            raise ParamsError(f"params.yaml: fit_knn.k: {settings.k} neighbours is more than the "
                              f"{len(indices)} images of a fit (the whole or a cross-validation fold)")
        return make_knn_pipeline(**settings.model_dump()).fit(x[indices], y[indices])

    model, frames = protocol_predictions(
        data,
        fit=fit,
        predict_proba=lambda knn, indices: knn.predict_proba(x[indices]),
        n_folds=n_folds,
        seed=seed,
    )
    everything = fit(np.arange(len(y)))
    frames.append(prediction_frame(data.source, y, everything.predict_proba(x), data.class_names,
                                   "resubstitution", "fitted and scored on the same images, as the original's 88%"))
    return model, frames


def main(argv: list[str]) -> None:
    import joblib

    params = read_params(Params)
    args = stage_args("fit_knn", argv, "features", "model", "predictions")
    settings = params.fit_knn
    data = load_features(args.features)
    print(
        f"fit_knn: {len(data.labels)} images, {data.features.shape[1]}-d features; k={settings.k}, "
        f"{settings.metric}, {settings.weights}, {params.breast_cv_folds}-fold CV",
        flush=True,
    )
    model, frames = fit_and_predict(data, settings, params.breast_cv_folds, params.seed)
    with atomic_path(args.model) as tmp:
        joblib.dump(model, tmp)
    write_predictions(args.predictions, frames)
    print(f"fit_knn: wrote {args.model} and {args.predictions}")


if __name__ == "__main__":
    run_stage(main)

"""Stage ``fit_knn``: L2-normalised VGG features into a k-nearest-neighbours classifier.

    python -m stages.fit_knn --features FEATURES.npz --groups GROUPS.csv --model KNN.skops --inputs INPUTS.json
        --novelty NOVELTY.json --operating-point POINT.json --predictions PREDICTIONS.csv

Reads ``seed``, ``breast_cv_folds`` and ``fit_knn`` from params.yaml and, of the features
that ``extract_vgg_features`` wrote, the blocks ``fit_knn.features`` names (``--inputs``
records them for ``classify-images``), and the groups of near-copies that ``find_near_copies``
wrote (``--groups``), which its folds keep whole; writes the pipeline fitted on every non-test image
(``--model``, a skops file: loading it runs no code and accepts only the types in
``stages.commands.classify.KNN_TYPES``) and its predictions (``--predictions``), which
``evaluate@breast`` scores: ``heldout`` and ``cv`` by the protocol it shares with
``train_head`` (see ``stages.shared.breast``), and ``resubstitution``: fitted on all the
images and predicting them, the way the original got its 88%. That one measures memory, not generalisation. (The original also scored raw
features against a fit on normalised ones; the pipeline here normalises both.)

``--operating-point`` is where the saved KNN calls an image positive (``target_sensitivity``;
null: the argmax alone): the cut of the positive class's probability chosen on the
cross-validation's out-of-fold predictions (``stages.shared.breast.OperatingPoint``). Each
cross-validation fold's own calls use a cut chosen by a grouped cross-validation of that
fold's training images alone (nested; a KNN's fit only stores the images, so it costs
next to nothing).

``--novelty`` is how far a new image may be from the training images before
``classify-images`` flags it as unlike them: the ``novelty_percentile`` of the fitted
images' own leave-one-out distances to their nearest neighbour, in the pipeline's
L2-normalised feature space.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from stages.shared.breast import (
    FeatureBlocks,
    FeatureSet,
    FoldParams,
    OperatingPoint,
    TargetSensitivity,
    load_features,
    nearest_distances,
    operating_point,
    protocol_predictions,
    stratified_folds,
    write_model_inputs,
    write_operating_point,
)
from stages.shared.config import ParamsError, Section, read_params
from stages.shared.predictions import prediction_frame, write_predictions
from stages.shared.runner import run_stage, stage_args, write_json
from stages.shared.skops_files import save_skops


class KnnSettings(Section):
    features: FeatureBlocks
    k: int = Field(ge=1)  # neighbours
    metric: Literal["euclidean", "cosine", "manhattan", "chebyshev"]
    weights: Literal["uniform", "distance"]
    novelty_percentile: float = Field(gt=0, le=100)
    target_sensitivity: TargetSensitivity  # the operating point; null: the argmax alone


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


def fit_and_predict(
    data: FeatureSet, settings: KnnSettings, n_folds: int, seed: int, point: OperatingPoint | None = None
):
    """Fit the pipeline and predict every evaluation (see the module docstring), with each
    image's call at the operating ``point`` if there is one.

    Returns ``(model, frames, described)``: the pipeline fitted on all non-test images,
    the rows of the predictions file, and where its operating point is (None without one).
    """
    x, y = data.features, data.labels

    def fit(indices):
        # Checked here, where the images of each fold are known; fitting a KNN only stores them.
        if settings.k > len(indices):
            raise ParamsError(
                f"params.yaml: fit_knn.k: {settings.k} neighbours is more than the "
                f"{len(indices)} images of a fit (the whole or a cross-validation fold)"
            )
        return make_knn_pipeline(settings.k, settings.metric, settings.weights).fit(x[indices], y[indices])

    def inner_out_of_fold(_, indices):
        # The same grouped folds within the images of one fold's fit: nested cross-validation.
        probabilities = np.empty((len(indices), len(data.class_names)))
        for inner_fit, inner_held in stratified_folds(y[indices], data.groups[indices], n_folds, seed):
            probabilities[inner_held] = fit(indices[inner_fit]).predict_proba(x[indices[inner_held]])
        return indices, probabilities

    model, frames, described = protocol_predictions(
        data,
        fit=fit,
        predict_proba=lambda knn, indices: knn.predict_proba(x[indices]),
        n_folds=n_folds,
        seed=seed,
        point=point,
        inner_out_of_fold=inner_out_of_fold,
    )
    everything = fit(np.arange(len(y)))
    probabilities = everything.predict_proba(x)
    frames.append(
        prediction_frame(
            data.source,
            y,
            probabilities,
            data.class_names,
            "resubstitution",
            "fitted and scored on the same images, as the original's 88%",
            called=point.calls(probabilities, described["min_positive_probability"]) if point else None,
        )
    )
    return model, frames, described


def novelty_threshold(knn, percentile: float) -> dict:
    """The distance beyond which a new image is unlike the fitted ones, as the JSON ``--novelty`` holds."""
    own = nearest_distances(knn)
    return {
        "measure": "distance to the nearest training image, L2-normalised features",
        "percentile": percentile,
        "training_images": len(own),
        "threshold": float(np.percentile(own, percentile)),
    }


def main(argv: list[str]) -> None:
    params = read_params(Params)
    args = stage_args(
        "fit_knn", argv, "features", "groups", "model", "inputs", "novelty", "operating_point", "predictions"
    )
    settings = params.fit_knn
    data = load_features(args.features, settings.features, "fit_knn.features", args.groups)
    print(
        f"fit_knn: {len(data.labels)} images, {data.features.shape[1]}-d features of "
        f"{', '.join(data.blocks)}; k={settings.k}, "
        f"{settings.metric}, {settings.weights}, {params.breast_cv_folds}-fold CV",
        flush=True,
    )
    point = operating_point(params, settings.target_sensitivity, data, "fit_knn.target_sensitivity", args.features)
    model, frames, described = fit_and_predict(data, settings, params.breast_cv_folds, params.seed, point)
    save_skops(model, args.model)
    write_model_inputs(args.inputs, data)
    novelty = novelty_threshold(model, settings.novelty_percentile)
    write_json(args.novelty, novelty)
    write_operating_point(args.operating_point, described, data, point)
    write_predictions(args.predictions, frames)
    print(
        f"fit_knn: wrote {args.model}, {args.inputs}, {args.novelty} (threshold {novelty['threshold']:.4f}) and {args.predictions}"
    )


if __name__ == "__main__":
    run_stage(main)

"""The trained pipelines that ``classify-images`` applies to batches of prepared images:
the breast KNN or head on the frozen backbone's features (with the novelty flag, and the
head's heat maps when asked for), or the MNIST CNN; which model files they load, and how
``breast`` chooses between the two breast classifiers."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stages.commands import heatmaps
from stages.commands.model_files import (
    load_keras_model,
    load_knn,
    model_inputs,
    read_backbone_recipe,
    rebuild_backbone,
    required,
    stage_paths,
)

BREAST_MODELS = {"breast-knn": "fit_knn", "breast-head": "train_head"}  # the stage that trains each
# What breast images get beside the probabilities: the distance to the nearest training
# image and whether it is beyond fit_knn's novelty threshold.
NOVELTY_COLUMNS = ("nearest_distance", "unlike_training")
# The training image a new one is a near-copy of, by find_near_copies' rule, and its label.
NEAR_COPY_COLUMNS = ("near_copy_of", "near_copy_label")
# The class called at the classifier's operating point (its target sensitivity), beside the argmax.
OPERATING_POINT_COLUMN = "called_at_operating_point"


@dataclass(frozen=True)
class Classifier:
    """A trained pipeline as classify-images applies it: ``columns`` of a batch of images
    prepared at ``image_size`` in ``mode`` (RGB, or L for grey) are the class probabilities
    and a dict of ``other_columns``; ``gradcam``, when asked for, makes its heat maps."""

    name: str
    class_names: tuple[str, ...]
    image_size: int
    mode: str
    columns: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, dict[str, np.ndarray]]]
    other_columns: tuple[str, ...] = ()
    novelty_threshold: float | None = None
    gradcam: heatmaps.GradCam | None = None
    operating_point: dict | None = None  # its ``--operating-point`` file, when it has a target


def breast_classifier(model: str, with_heatmaps: bool = False) -> Classifier:
    """A breast pipeline: the class probabilities, then the call at the classifier's
    operating point when it has one (``called_at_operating_point``), ``nearest_distance``
    and ``unlike_training``, and ``near_copy_of`` and ``near_copy_label`` (the training image
    a new one is a near-copy of, by ``find_near_copies``' rule, and its label; empty for
    none); with ``with_heatmaps``, the Grad-CAM of ``train_head``'s model, whichever
    classifier gives the probabilities (the KNN has no gradient).

    ``model`` ``breast`` picks by the cross-validation ROC AUC in the breast metrics. The
    backbone's features hold every block the extraction wrote; each classifier, and the
    novelty flag (the KNN's), gets the blocks it was trained on. Every file is read before
    the backbone is rebuilt, the slow step, so that a missing one stops the command at once.
    """
    from stages.shared.backbone import preprocess_function
    from stages.shared.breast import nearest_distances
    from stages.shared.near_copies import CopyReference

    recipe, recipe_path = read_backbone_recipe()
    head = heatmaps.load_head(recipe, recipe_path) if with_heatmaps else None
    knn, threshold = novelty_reference()
    _, knn_columns = model_inputs("fit_knn", recipe, recipe_path)
    name, predict_features = breast_feature_model(model, knn)
    _, columns_of_model = model_inputs(BREAST_MODELS[name], recipe, recipe_path)
    point = saved_operating_point(BREAST_MODELS[name])
    call = operating_point_call(point, recipe["class_names"]) if point else None
    copies = CopyReference(required(stage_paths("find_near_copies")["thumbnails"], "find_near_copies"))
    backbone, preprocess = rebuild_backbone(recipe, recipe_path), preprocess_function(recipe["backbone"])

    def columns(batch: np.ndarray, thumbnails: np.ndarray) -> tuple[np.ndarray, dict]:
        # On a copy: preprocess_input works in place, and the batch goes on to the heat maps.
        features = np.asarray(backbone.predict_on_batch(preprocess(batch.copy())))
        probabilities = predict_features(features[:, columns_of_model])
        distances = nearest_distances(knn, features[:, knn_columns])
        other = {OPERATING_POINT_COLUMN: call(probabilities)} if call else {}
        other |= dict(zip(NOVELTY_COLUMNS, (distances, distances > threshold)))
        return probabilities, other | dict(zip(NEAR_COPY_COLUMNS, copies.copies_of(thumbnails)))

    gradcam = None
    if head:
        gradcam = heatmaps.GradCam(backbone, preprocess, head)
        print(
            f"heat maps: Grad-CAM of breast-head's log-odds of {recipe['class_names'][head.positive]} "
            f"over {', '.join(head.blocks)}" + ("" if name == "breast-head" else f" (not of {name}: no gradient)"),
            file=sys.stderr,
        )
    other_columns = ((OPERATING_POINT_COLUMN,) if call else ()) + NOVELTY_COLUMNS + NEAR_COPY_COLUMNS
    return Classifier(
        name,
        tuple(recipe["class_names"]),
        recipe["image_size"],
        "RGB",
        columns,
        other_columns,
        threshold,
        gradcam,
        point,
    )


def saved_operating_point(stage: str) -> dict | None:
    """``stage``'s saved classifier's operating point (its ``--operating-point`` file: the
    positive class, the target sensitivity and the cut that meets it); None when it has none
    (the argmax alone)."""
    point = json.loads(required(stage_paths(stage)["operating-point"], stage).read_text())
    return point if point.get("target_sensitivity") is not None else None


def operating_point_call(point: dict, class_names: list[str]) -> Callable[[np.ndarray], np.ndarray]:
    """The class called at the operating ``point``, from the probabilities."""
    positive = class_names.index(point["positive_class"])
    cut, names = point["min_positive_probability"], np.asarray(class_names)
    return lambda probabilities: np.where(probabilities[:, positive] >= cut, names[positive], names[1 - positive])


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


def mnist_classifier() -> Classifier:
    from stages.shared.mnist_digits import MNIST_CLASS_NAMES, MNIST_IMAGE_SHAPE, mnist_model_input

    path = required(stage_paths("augment_train_mnist")["model"], "augment_train_mnist")
    model = load_keras_model(path)

    def columns(batch: np.ndarray, _thumbnails: np.ndarray) -> tuple[np.ndarray, dict]:
        return np.asarray(model.predict_on_batch(mnist_model_input(batch))), {}  # no other columns

    return Classifier("mnist", MNIST_CLASS_NAMES, MNIST_IMAGE_SHAPE[0], "L", columns)  # L: grey, as MNIST's digits

"""Stage ``evaluate``: score one exercise's predictions.

    python -m stages.evaluate EXERCISE --predictions FOLDER --metrics FOLDER --plots FOLDER

Reads ``evaluate.EXERCISE`` from params.yaml and every predictions file in
``--predictions`` (one per classifier of an exercise, written by the model stages: see
``stages.shared.predictions``), and scores each of its evaluations with one function,
``score``, the same for every exercise: accuracy, balanced accuracy, each class's recall
and the log loss, and for two classes the ROC AUC. For two classes with a positive
class (``positive_class``; by default ``malignant`` when the data has a class of that
name, as BreastMNIST does), also ``sensitivity`` and ``specificity``, and the ROC curves
plot that class's true-positive rate; with none, the second class's. A figure that an
evaluation cannot measure, such as the recall of a class absent from it, is left out,
never written as 0, so that ``check-thresholds`` reports a bound on it as missing. Writes

* ``<metrics>/<classifier>.json``: ``<evaluation>.<metric>``, e.g. ``heldout.roc_auc``,
  the same keys for every classifier, so that ``dvc metrics show`` prints one row per
  classifier under shared columns; small files committed to git, so ``dvc metrics
  show`` and ``dvc metrics diff`` need no DVC remote, and ``check-thresholds`` bounds them;
* ``<plots>/confusion/<classifier>.csv``: the held-out predictions (``actual``,
  ``predicted``) for DVC's confusion-matrix plot;
* ``<plots>/roc.csv`` for two classes: every classifier's held-out ROC curve
  (``model``, ``fpr``, ``tpr``).

Scoring predictions, rather than loading the models and the data again, keeps this
stage free of TensorFlow and of the data, and scores cross-validation too, whose
out-of-fold predictions come from models that no longer exist.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stages.shared.config import ParamsError, Section, StageError, read_params
from stages.shared.files import atomic_path, write_json
from stages.shared.predictions import PROBABILITY_PREFIX, read_predictions
from stages.shared.runtime import run_stage, stage_args

# The order of evaluations in the metrics; ``heldout`` is what plots and thresholds use.
EVALUATIONS = ("heldout", "validation", "cv", "resubstitution")
DIGITS = 4
# The class that is the positive one wherever the data names it (BreastMNIST's label 0).
NAMED_POSITIVE_CLASS = "malignant"


class EvaluationSettings(Section):
    positive_class: str | None


class Params(Section):
    evaluate: dict[str, EvaluationSettings]


def positive_class(chosen: str | None, class_names: tuple[str, ...], key: str, path: Path) -> str | None:
    """The positive class of an exercise's predictions: ``chosen`` (the params ``key``), which
    must be one of two classes; or, when it is None, ``NAMED_POSITIVE_CLASS`` if the data
    has a class of that name, else none."""
    if chosen is None:
        return NAMED_POSITIVE_CLASS if len(class_names) == 2 and NAMED_POSITIVE_CLASS in class_names else None
    if chosen not in class_names:
        raise ParamsError(
            f"params.yaml: {key}: {chosen!r} is not a class of {path} "
            f"(its classes: {', '.join(class_names)}); name one of them, or null"
        )
    if len(class_names) != 2:
        raise ParamsError(f"params.yaml: {key}: a positive class needs two classes; {path} has {len(class_names)}")
    return chosen


def score(
    actual: np.ndarray,
    predicted: np.ndarray,
    probabilities: np.ndarray,
    class_names: tuple[str, ...],
    positive: str | None = None,
) -> dict:
    """The metrics of one set of predictions; ``actual`` and ``predicted`` are class indices.

    A metric that these predictions cannot measure is left out rather than written as a
    number: ``recall`` holds only the classes that occur in ``actual`` (``balanced_accuracy``
    is the mean of those); ``roc_auc`` is there only for two classes, and only when both
    occur: of the ``positive`` class against the other, or of the second class when there
    is none (the same figure either way). With a ``positive`` class, ``sensitivity`` (its
    recall) and ``specificity`` (the other's), each when that class occurs.
    """
    from sklearn.metrics import accuracy_score, log_loss, recall_score, roc_auc_score

    labels = list(range(len(class_names)))
    # The file rounds probabilities to 7 digits; make each row sum to 1 again.
    probabilities = probabilities / probabilities.sum(axis=1, keepdims=True)
    present = [label for label in labels if (actual == label).any()]
    recall = dict(zip(present, recall_score(actual, predicted, labels=present, average=None)))
    metrics = {
        "accuracy": accuracy_score(actual, predicted),
        "balanced_accuracy": np.mean(list(recall.values())),
        "recall": {class_names[label]: r for label, r in recall.items()},
        "log_loss": log_loss(actual, probabilities, labels=labels),
    }
    scored = class_names.index(positive) if positive else 1
    if positive:
        measured = {"sensitivity": scored, "specificity": 1 - scored}
        metrics.update({key: recall[label] for key, label in measured.items() if label in recall})
    if len(class_names) == 2 and len(present) == 2:
        metrics["roc_auc"] = roc_auc_score(actual == scored, probabilities[:, scored])
    return rounded(metrics) | ({"positive_class": positive} if positive else {})


def rounded(metrics: dict) -> dict:
    return {k: rounded(v) if isinstance(v, dict) else round(float(v), DIGITS) for k, v in metrics.items()}


def class_indices(column, class_names: tuple[str, ...], path: Path) -> np.ndarray:
    index = {name: i for i, name in enumerate(class_names)}
    unknown = sorted(set(column) - set(index))
    if unknown:
        raise StageError(f"{path}: class {unknown[0]!r} has no p_{unknown[0]} column")
    return column.map(index).to_numpy()


def score_evaluation(rows, class_names: tuple[str, ...], path: Path, positive: str | None = None) -> dict:
    """``score`` of one evaluation's rows, with its protocol and size; for cross-validation
    also the number of folds and the spread of accuracy over them."""
    actual = class_indices(rows["actual"], class_names, path)
    predicted = class_indices(rows["predicted"], class_names, path)
    probabilities = rows[[PROBABILITY_PREFIX + name for name in class_names]].to_numpy(np.float64)
    protocols = rows["protocol"].unique()
    metrics = {"protocol": str(protocols[0]), "n": int(len(rows))}
    metrics.update(score(actual, predicted, probabilities, class_names, positive))
    folds = rows["fold"].to_numpy()
    if (folds != "").all():
        per_fold = [np.mean(actual[folds == fold] == predicted[folds == fold]) for fold in np.unique(folds)]
        metrics.update(folds=len(per_fold), accuracy_fold_std=round(float(np.std(per_fold)), DIGITS))
    return metrics


def score_classifier(
    path: Path, chosen_positive: str | None = None, key: str = "positive_class"
) -> tuple[dict, object, tuple[str, ...], str | None]:
    """Metrics per evaluation of one predictions file, its held-out rows, class names and
    positive class (``chosen_positive``, from the params ``key``, as ``positive_class`` reads it)."""
    frame, class_names = read_predictions(path)
    positive = positive_class(chosen_positive, class_names, key, path)
    unknown = sorted(set(frame["evaluation"]) - set(EVALUATIONS))
    if unknown:
        raise StageError(f"{path}: unknown evaluation {unknown[0]!r} (expected {', '.join(EVALUATIONS)})")
    if "heldout" not in set(frame["evaluation"]):
        raise StageError(f"{path}: no heldout predictions")
    metrics = {
        evaluation: score_evaluation(frame[frame["evaluation"] == evaluation], class_names, path, positive)
        for evaluation in EVALUATIONS
        if (frame["evaluation"] == evaluation).any()
    }
    return metrics, frame[frame["evaluation"] == "heldout"], class_names, positive


def roc_curve_rows(model: str, heldout, positive: str):
    """The held-out ROC curve of one classifier for the ``positive`` class: ``model``,
    ``fpr``, ``tpr`` in order."""
    import pandas as pd
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(heldout["actual"] == positive, heldout[PROBABILITY_PREFIX + positive])
    return pd.DataFrame({"model": model, "fpr": fpr.round(DIGITS), "tpr": tpr.round(DIGITS)})


def main(argv: list[str]) -> None:
    import pandas as pd

    sections = read_params(Params).evaluate
    args = stage_args("evaluate", argv, "predictions", "metrics", "plots", items=sections)
    files = sorted(args.predictions.glob("*.csv"))
    if not files:
        raise StageError(f"{args.predictions}/: no predictions files; run its model stages first")
    metrics, curves = {}, []
    for path in files:
        model = path.stem
        metrics[model], heldout, class_names, positive = score_classifier(
            path, sections[args.name].positive_class, f"evaluate.{args.name}.positive_class"
        )
        with atomic_path(args.plots / "confusion" / f"{model}.csv") as tmp:
            heldout[["actual", "predicted"]].to_csv(tmp, index=False)
        if "roc_auc" in metrics[model]["heldout"]:
            curves.append(roc_curve_rows(model, heldout, positive or class_names[1]))
    if curves:
        with atomic_path(args.plots / "roc.csv") as tmp:
            pd.concat(curves).to_csv(tmp, index=False)
    for model, by_evaluation in metrics.items():
        write_json(args.metrics / f"{model}.json", by_evaluation)
        shown = {
            k: by_evaluation["heldout"][k]
            for k in ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "roc_auc")
            if k in by_evaluation["heldout"]
        }
        print(f"evaluate: {model}, held out ({by_evaluation['heldout']['protocol']}): {shown}")


if __name__ == "__main__":
    run_stage(main)

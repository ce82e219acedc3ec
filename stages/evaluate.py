"""Stage ``evaluate``: score one exercise's predictions.

    python -m stages.evaluate EXERCISE --predictions FOLDER --metrics FOLDER --plots FOLDER

Reads ``positive_class.EXERCISE`` from params.yaml and every predictions file in
``--predictions`` (one per classifier of an exercise, written by the model stages: see
``stages.shared.predictions``), and scores each of its evaluations with one function,
``score``, the same for every exercise: accuracy, balanced accuracy, each class's recall
and the log loss, and for two classes the ROC AUC. For two classes with a positive
class (``positive_class``; by default ``malignant`` when the data has a class of that
name, as BreastMNIST does), also ``sensitivity`` and ``specificity``, the positive and
negative predictive values (``ppv``, ``npv``), the Brier score of that class's probability
(``brier``), a 95 % interval of each proportion (Wilson's) and of the ROC AUC (DeLong's)
under ``ci95``, and each proportion's count (``counts``, e.g. ``33/42``); and the ROC curves
plot that class's true-positive rate; with none, the second class's. Where the predictions
hold a call at an operating point (``called``: the breast classifiers with a
``target_sensitivity``), the figures of that call go under ``operating_point`` (e.g.
``heldout.operating_point.sensitivity``), apart from the argmax's. A figure that an
evaluation cannot measure, such as the recall of a class absent from it, is left out,
never written as 0, so that ``check-thresholds`` reports a bound on it as missing. Writes

* ``<metrics>/<classifier>.json``: ``<evaluation>.<metric>``, e.g. ``heldout.roc_auc``,
  the same keys for every classifier, so that ``dvc metrics show`` prints one row per
  classifier under shared columns; small files committed to git, so ``dvc metrics
  show`` and ``dvc metrics diff`` need no DVC remote, and ``check-thresholds`` bounds them;
* ``<plots>/confusion/<classifier>.csv``: the held-out predictions (``actual``,
  ``predicted``) for DVC's confusion-matrix plot;
* ``<plots>/roc.csv`` for two classes: every classifier's held-out ROC curve
  (``model``, ``fpr``, ``tpr``);
* ``<plots>/calibration.csv`` with a positive class: every classifier's held-out
  reliability diagram (``model``, ``bin_from``, ``bin_to``, ``predicted``, ``observed``,
  ``count``).

Scoring predictions, rather than loading the models and the data again, keeps this
stage free of TensorFlow and of the data, and scores cross-validation too, whose
out-of-fold predictions come from models that no longer exist.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stages.shared.config import Section, StageError, read_params
from stages.shared.predictions import PROBABILITY_PREFIX, positive_class, read_predictions
from stages.shared.runner import atomic_path, run_stage, stage_args, write_json

# The order of evaluations in the metrics; ``heldout`` is what plots and thresholds use.
# ``heldout_unseen``: the held-out images with no near-copy among those fitted on (breast).
EVALUATIONS = ("heldout", "heldout_unseen", "validation", "cv", "resubstitution")
DIGITS = 4
# With a positive class: the confidence of every interval (the metrics' ``ci95``), and
# the reliability diagram's equal-width bins of its probability.
CONFIDENCE = 0.95
CALIBRATION_BINS = 10


class Params(Section):
    positive_class: dict[str, str | None]  # per exercise


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
    if not positive:
        return rounded(metrics)
    figures, counts = positive_class_figures(actual == scored, predicted == scored, probabilities[:, scored])
    return rounded(metrics | figures) | {"counts": counts, "positive_class": positive}


def rounded(metrics: dict) -> dict:
    return {k: rounded(v) if isinstance(v, dict) else round(float(v), DIGITS) for k, v in metrics.items()}


# ---------------------------------------- with a positive class: predictive values, intervals, calibration
def positive_class_figures(
    actual_positive: np.ndarray, called_positive: np.ndarray, probability: np.ndarray
) -> tuple[dict, dict]:
    """What a positive class adds to ``score``'s figures: the call's positive and negative
    predictive values (``ppv``, ``npv``), the Brier score of the positive class's
    ``probability`` (``brier``), and ``ci95``: a 95 % interval of each proportion (accuracy
    and those of ``call_counts``) and of the ROC AUC; then each proportion's count, e.g.
    ``{"sensitivity": "33/42"}``."""
    from sklearn.metrics import brier_score_loss

    counts = {"accuracy": (int(np.sum(actual_positive == called_positive)), len(actual_positive))}
    values, ci95, labels = proportion_figures(counts | call_counts(actual_positive, called_positive))
    auc_interval = delong_interval(actual_positive, probability)
    figures = {name: values[name] for name in ("ppv", "npv") if name in values}
    figures["brier"] = brier_score_loss(actual_positive, probability)
    figures["ci95"] = ci95 | ({"roc_auc": auc_interval} if auc_interval else {})
    return figures, labels


def call_counts(actual_positive: np.ndarray, called_positive: np.ndarray) -> dict[str, tuple[int, int]]:
    """``(hits, total)`` of a two-class call's proportions: ``sensitivity`` (of the actual
    positives, those called positive), ``specificity`` (of the negatives, those called
    negative), ``ppv`` and ``npv`` (of those called positive, or negative, those that are).
    A proportion of nothing (the PPV when nothing is called positive) is left out. Any call
    will do: the argmax, or a call at another threshold."""
    actual_positive, called_positive = np.asarray(actual_positive, bool), np.asarray(called_positive, bool)
    true_positives = int(np.sum(actual_positive & called_positive))
    true_negatives = int(np.sum(~actual_positive & ~called_positive))
    counts = {
        "sensitivity": (true_positives, int(np.sum(actual_positive))),
        "specificity": (true_negatives, int(np.sum(~actual_positive))),
        "ppv": (true_positives, int(np.sum(called_positive))),
        "npv": (true_negatives, int(np.sum(~called_positive))),
    }
    return {name: (hits, total) for name, (hits, total) in counts.items() if total}


def proportion_figures(counts: dict[str, tuple[int, int]]) -> tuple[dict, dict, dict]:
    """Of proportions given as ``(hits, total)`` by name: their values, their 95 % Wilson
    intervals and their counts as text (``hits/total``), each a dict by the same names."""
    values = {name: hits / total for name, (hits, total) in counts.items()}
    intervals = {name: wilson_interval(hits, total) for name, (hits, total) in counts.items()}
    return values, intervals, {name: f"{hits}/{total}" for name, (hits, total) in counts.items()}


def wilson_interval(hits: int, total: int, confidence: float = CONFIDENCE) -> dict[str, float]:
    """Wilson's score interval of the proportion ``hits / total`` (``total`` > 0): unlike
    p ± z·SE, it stays within [0, 1] and keeps its coverage near 0 and 1 and on few images."""
    from scipy.stats import binomtest

    interval = binomtest(hits, total).proportion_ci(confidence, method="wilson")
    return {"low": float(interval.low), "high": float(interval.high)}


def delong_interval(
    actual_positive: np.ndarray, scores: np.ndarray, confidence: float = CONFIDENCE
) -> dict[str, float] | None:
    """DeLong's interval of the ROC AUC of ``scores`` for ``actual_positive``: AUC ± z·SE,
    clipped to [0, 1], with the variance of DeLong et al. (1988) from each image's
    placement (the share of the other class that it outscores, ties half), computed from
    midranks (Sun and Xu 2014). No resampling, so nothing to seed; None with fewer than two
    images of either class, whose placements have no variance to estimate."""
    from scipy.stats import norm, rankdata

    positives, negatives = scores[actual_positive], scores[~actual_positive]
    if min(len(positives), len(negatives)) < 2:
        return None
    ranks = rankdata(np.concatenate([positives, negatives]))
    # Each positive's share of negatives below it, and each negative's share of positives above it.
    positive_placements = (ranks[: len(positives)] - rankdata(positives)) / len(negatives)
    negative_placements = 1 - (ranks[len(positives) :] - rankdata(negatives)) / len(positives)
    auc = positive_placements.mean()
    variance = positive_placements.var(ddof=1) / len(positives) + negative_placements.var(ddof=1) / len(negatives)
    half_width = norm.ppf(0.5 + confidence / 2) * np.sqrt(variance)
    return {"low": max(0.0, float(auc - half_width)), "high": min(1.0, float(auc + half_width))}


def calibration_rows(model: str, heldout, positive: str):
    """The held-out reliability diagram of one classifier: its images in
    ``CALIBRATION_BINS`` equal-width bins of the ``positive`` class's probability, and for
    each bin that holds any (from ``bin_from`` to ``bin_to``) their mean probability
    (``predicted``), the share of them that is positive (``observed``) and their ``count``."""
    import pandas as pd

    probability = heldout[PROBABILITY_PREFIX + positive].to_numpy(np.float64)
    frame = pd.DataFrame(
        {
            "bin": np.minimum((probability * CALIBRATION_BINS).astype(int), CALIBRATION_BINS - 1),
            "probability": probability,
            "positive": (heldout["actual"] == positive).to_numpy(),
        }
    )
    bins = frame.groupby("bin").agg(
        predicted=("probability", "mean"), observed=("positive", "mean"), count=("positive", "size")
    )
    return pd.DataFrame(
        {
            "model": model,
            "bin_from": bins.index / CALIBRATION_BINS,
            "bin_to": (bins.index + 1) / CALIBRATION_BINS,
            "predicted": bins["predicted"].round(DIGITS),
            "observed": bins["observed"].round(DIGITS),
            "count": bins["count"],
        }
    )


def class_indices(column, class_names: tuple[str, ...], path: Path) -> np.ndarray:
    index = {name: i for i, name in enumerate(class_names)}
    unknown = sorted(set(column) - set(index))
    if unknown:
        raise StageError(f"{path}: class {unknown[0]!r} has no p_{unknown[0]} column")
    return column.map(index).to_numpy()


def operating_point_figures(actual_positive: np.ndarray, called_positive: np.ndarray) -> dict:
    """The figures of the call at a classifier's operating point (the predictions' ``called``),
    kept apart from the argmax's: its sensitivity, specificity and predictive values, with
    their 95 % intervals and counts."""
    values, ci95, counts = proportion_figures(call_counts(actual_positive, called_positive))
    return rounded(values | {"ci95": ci95}) | {"counts": counts}


def score_evaluation(rows, class_names: tuple[str, ...], path: Path, positive: str | None = None) -> dict:
    """``score`` of one evaluation's rows, with its protocol and size; for cross-validation
    also the number of folds and the spread of accuracy over them."""
    actual = class_indices(rows["actual"], class_names, path)
    predicted = class_indices(rows["predicted"], class_names, path)
    probabilities = rows[[PROBABILITY_PREFIX + name for name in class_names]].to_numpy(np.float64)
    protocols = rows["protocol"].unique()
    metrics = {"protocol": str(protocols[0]), "n": int(len(rows))}
    metrics.update(score(actual, predicted, probabilities, class_names, positive))
    if positive and "called" in rows and (rows["called"] != "").all():
        scored = class_names.index(positive)
        called = class_indices(rows["called"], class_names, path)
        metrics["operating_point"] = operating_point_figures(actual == scored, called == scored)
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

    chosen = read_params(Params).positive_class
    args = stage_args("evaluate", argv, "predictions", "metrics", "plots", items=chosen)
    files = sorted(args.predictions.glob("*.csv"))
    if not files:
        raise StageError(f"{args.predictions}/: no predictions files; run its model stages first")
    metrics, curves, calibrations = {}, [], []
    for path in files:
        model = path.stem
        metrics[model], heldout, class_names, positive = score_classifier(
            path, chosen[args.name], f"positive_class.{args.name}"
        )
        with atomic_path(args.plots / "confusion" / f"{model}.csv") as tmp:
            heldout[["actual", "predicted"]].to_csv(tmp, index=False)
        if "roc_auc" in metrics[model]["heldout"]:
            curves.append(roc_curve_rows(model, heldout, positive or class_names[1]))
        if positive:
            calibrations.append(calibration_rows(model, heldout, positive))
    for name, frames in (("roc.csv", curves), ("calibration.csv", calibrations)):
        if frames:
            with atomic_path(args.plots / name) as tmp:
                pd.concat(frames).to_csv(tmp, index=False)
    for model, by_evaluation in metrics.items():
        write_json(args.metrics / f"{model}.json", by_evaluation)
        shown = {
            k: by_evaluation["heldout"][k]
            for k in ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "roc_auc")
            if k in by_evaluation["heldout"]
        }
        point = by_evaluation["heldout"].get("operating_point", {})
        shown |= {f"operating_point.{k}": point[k] for k in ("sensitivity", "specificity") if k in point}
        print(f"evaluate: {model}, held out ({by_evaluation['heldout']['protocol']}): {shown}")


if __name__ == "__main__":
    run_stage(main)

"""The evaluate stage: one scoring function for every exercise, on predictions files the tests write."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sklearn.metrics
import yaml

from stages import evaluate
from stages.commands import check_thresholds
from stages.shared.config import ParamsError, StageError
from stages.shared.predictions import prediction_frame, read_predictions, write_predictions
from tests.conftest import PROJECT, project_params, stage_argv

BINARY = ("malignant", "benign")


@pytest.fixture(autouse=True)
def evaluate_params(tmp_path):
    """params.yaml's positive_class section in the folder each test runs in; returns a
    function that sets one exercise's positive class."""
    params = {"positive_class": project_params()["positive_class"]}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))

    def set_positive(exercise: str, name: str | None) -> None:
        params["positive_class"][exercise] = name
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))

    return set_positive


def test_score_by_hand():
    actual = np.array([0, 0, 1, 1])
    probabilities = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.7, 0.3]])
    scores = evaluate.score(actual, probabilities.argmax(axis=1), probabilities, BINARY)
    # Predicted 0, 1, 1, 0: two of four right; each class has one of its two right.
    log_loss = -np.mean(np.log([0.9, 0.4, 0.8, 0.3]))
    # Of the 4 (positive, negative) pairs, the positive scores higher in (0.8 > 0.1), (0.8 > 0.6), (0.3 > 0.1).
    assert scores == {
        "accuracy": 0.5,
        "balanced_accuracy": 0.5,
        "recall": {"malignant": 0.5, "benign": 0.5},
        "log_loss": round(log_loss, 4),
        "roc_auc": 0.75,
    }
    # With malignant positive: the same AUC (malignant's scores 0.9, 0.4 against 0.2, 0.7),
    # and its recall is the sensitivity. Called malignant: images 0 and 3, one of them is.
    positive = evaluate.score(actual, probabilities.argmax(axis=1), probabilities, BINARY, "malignant")
    # Wilson's interval of 1/2 at z = 1.96: 0.5 ± 1.96·sqrt(1/8 + z²/16) / (1 + z²/2) = 0.5 ± 0.4055;
    # of 2/4: 0.5 ± 1.96·sqrt(1/16 + z²/64) / (1 + z²/4) = 0.5 ± 0.3500.
    half = {"low": 0.0945, "high": 0.9055}
    # DeLong: malignant 0.9 beats both benign scores, 0.4 one (placements 1, 0.5); benign 0.2 is
    # beaten by both, 0.7 by one (1, 0.5); variance 0.125 / 2 + 0.125 / 2, so 0.75 ± 1.96 · 0.3536.
    auc = {"low": 0.057, "high": 1.0}
    assert positive == {
        **scores,
        "sensitivity": 0.5,
        "specificity": 0.5,
        "ppv": 0.5,
        "npv": 0.5,
        "brier": 0.225,  # malignant's probability 0.9, 0.4, 0.2, 0.7 against 1, 1, 0, 0: (0.01 + 0.36 + 0.04 + 0.49) / 4
        "ci95": {
            "accuracy": {"low": 0.15, "high": 0.85},
            "sensitivity": half,
            "specificity": half,
            "ppv": half,
            "npv": half,
            "roc_auc": auc,
        },
        "counts": {"accuracy": "2/4", "sensitivity": "1/2", "specificity": "1/2", "ppv": "1/2", "npv": "1/2"},
        "positive_class": "malignant",
    }
    skewed = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]])  # every image called malignant
    assert evaluate.score(actual, skewed.argmax(axis=1), skewed, BINARY, "malignant")["sensitivity"] == 1.0
    assert evaluate.score(actual, skewed.argmax(axis=1), skewed, BINARY, "benign")["sensitivity"] == 0.0


def test_score_without_roc_auc_for_many_classes_or_one_class_present():
    probabilities = np.eye(3)[[0, 1, 2, 2]] * 0.9 + 0.1 / 3
    many = evaluate.score(np.array([0, 1, 2, 1]), probabilities.argmax(axis=1), probabilities, ("a", "b", "c"))
    assert many["accuracy"] == 0.75 and many["recall"] == {"a": 1.0, "b": 0.5, "c": 1.0} and "roc_auc" not in many
    one = evaluate.score(np.array([1, 1]), np.array([1, 0]), np.array([[0.2, 0.8], [0.6, 0.4]]), BINARY)
    assert "roc_auc" not in one and one["accuracy"] == 0.5


def test_a_class_absent_from_an_evaluation_has_no_recall_and_no_figure_made_of_it():
    # Two benign images, one called malignant: benign's recall is 1 of 2; malignant's, and so
    # the sensitivity, the ROC AUC and its part of the balanced accuracy, cannot be measured.
    probabilities = np.array([[0.2, 0.8], [0.6, 0.4]])
    scores = evaluate.score(np.array([1, 1]), np.array([1, 0]), probabilities, BINARY, "malignant")
    assert {key: scores[key] for key in ("accuracy", "balanced_accuracy", "recall", "log_loss", "specificity")} == {
        "accuracy": 0.5,
        "balanced_accuracy": 0.5,
        "recall": {"benign": 0.5},
        "log_loss": round(-np.mean(np.log([0.8, 0.4])), 4),
        "specificity": 0.5,
    }
    # The predictive values are measurable (one image called each way), their counts and
    # intervals too; nothing of the sensitivity or the ROC AUC is, anywhere.
    assert (scores["ppv"], scores["npv"]) == (0.0, 1.0)
    assert set(scores["ci95"]) == set(scores["counts"]) == {"accuracy", "specificity", "ppv", "npv"}
    assert "sensitivity" not in scores and "roc_auc" not in scores
    benign_positive = evaluate.score(np.array([1, 1]), np.array([1, 0]), probabilities, BINARY, "benign")
    assert benign_positive["sensitivity"] == 0.5 and "specificity" not in benign_positive
    # Three classes, c absent: a's recall 1 of 2 (one called c), b's 2 of 2; balanced accuracy their mean.
    three = np.eye(3)[[0, 2, 1, 1]] * 0.9 + 0.1 / 3
    scores = evaluate.score(np.array([0, 0, 1, 1]), three.argmax(axis=1), three, ("a", "b", "c"))
    assert scores["recall"] == {"a": 0.5, "b": 1.0} and scores["balanced_accuracy"] == 0.75


def test_check_thresholds_reports_a_figure_an_evaluation_cannot_measure_as_missing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rows = knn_like_predictions(np.random.default_rng(0))[0]
    write_predictions("predictions/breast/knn.csv", [rows[rows["actual"] == "benign"]])
    evaluate.main(stage_argv("evaluate", "breast"))
    (tmp_path / "thresholds.yaml").write_text(
        "metrics/breast/knn.json:\n"
        "  heldout.sensitivity: {min: 0.5}\n"
        "  heldout.roc_auc: {min: 0.5}\n"
        "  heldout.specificity: {min: 0.0}\n"
    )
    passed, report = check_thresholds.check(tmp_path / "thresholds.yaml", tmp_path)
    statuses = {line.split()[0].split(":")[1]: line.split()[-1] for line in report.splitlines()[2:5]}
    assert not passed and statuses == {
        "heldout.sensitivity": "MISSING",
        "heldout.roc_auc": "MISSING",
        "heldout.specificity": "ok",
    }


def knn_like_predictions(rng: np.random.Generator, n: int = 40) -> list:
    """A held-out test split and 4-fold cross-validation rows, as fit_knn writes them."""

    def rows(evaluation, protocol, count, fold=None):
        actual = (np.arange(count) % 3 > 0).astype(int)  # a third malignant: BreastMNIST has 27 %
        p_benign = np.clip(0.3 + 0.4 * actual + rng.normal(0, 0.25, count), 0, 1)
        return prediction_frame(
            [f"img{i}" for i in range(count)],
            actual,
            np.stack([1 - p_benign, p_benign], 1),
            BINARY,
            evaluation,
            protocol,
            fold=fold,
        )

    return [rows("heldout", "test split", n // 2), rows("cv", "4-fold", n, fold=np.arange(n) % 4 + 1)]


def test_evaluate_scores_every_classifier_and_writes_the_plot_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    write_predictions("predictions/breast/knn.csv", knn_like_predictions(rng))
    write_predictions("predictions/breast/head.csv", knn_like_predictions(rng)[:1])
    evaluate.main(stage_argv("evaluate", "breast"))

    knn = json.loads((tmp_path / "metrics/breast/knn.json").read_text())
    head = json.loads((tmp_path / "metrics/breast/head.json").read_text())
    assert list(knn) == ["heldout", "cv"] and list(head) == ["heldout"]
    assert knn["heldout"]["protocol"] == "test split" and knn["heldout"]["n"] == 20
    assert knn["cv"]["folds"] == 4 and knn["cv"]["n"] == 40
    # The data has a class called malignant: it is the positive class.
    assert (
        set(knn["heldout"])
        == set(head["heldout"])
        == {
            "protocol",
            "n",
            "accuracy",
            "balanced_accuracy",
            "recall",
            "sensitivity",
            "specificity",
            "log_loss",
            "roc_auc",
            "ppv",
            "npv",
            "brier",
            "ci95",
            "counts",
            "positive_class",
        }
    )
    assert list(knn["heldout"]["ci95"]) == ["accuracy", "sensitivity", "specificity", "ppv", "npv", "roc_auc"]
    assert list(knn["cv"]["ci95"]) == list(knn["heldout"]["ci95"])  # every evaluation has them
    assert knn["heldout"]["positive_class"] == "malignant"
    assert knn["heldout"]["sensitivity"] == knn["heldout"]["recall"]["malignant"]
    assert knn["heldout"]["specificity"] == knn["heldout"]["recall"]["benign"]
    # Each figure lies inside its interval, and its count gives it.
    for name, interval in knn["heldout"]["ci95"].items():
        assert interval["low"] <= knn["heldout"][name] <= interval["high"] and interval["low"] < interval["high"]
    for name, count in knn["heldout"]["counts"].items():
        hits, total = map(int, count.split("/"))
        assert knn["heldout"][name] == round(hits / total, 4)
    assert knn["heldout"]["counts"]["accuracy"].endswith("/20")
    # check-thresholds still finds the point figures it bounds (these predictions hold no
    # heldout_unseen rows, so only its bounds are missing).
    _, table = check_thresholds.check(PROJECT / "thresholds.yaml", tmp_path, only=["metrics/breast"])
    assert not [line for line in table.splitlines() if "MISSING" in line and ":heldout." in line], table
    assert "metrics/breast/head.json:heldout.sensitivity" in table
    # The numbers are scikit-learn's, called directly on the file's rows.
    frame, _ = read_predictions(tmp_path / "predictions/breast/knn.csv")
    held = frame[frame["evaluation"] == "heldout"]
    actual, predicted = held["actual"].to_numpy(), held["predicted"].to_numpy()
    probabilities = held[["p_malignant", "p_benign"]].to_numpy()
    recall = {name: sklearn.metrics.recall_score(actual, predicted, pos_label=name) for name in BINARY}
    expected = {
        "accuracy": sklearn.metrics.accuracy_score(actual, predicted),
        "balanced_accuracy": sklearn.metrics.balanced_accuracy_score(actual, predicted),
        "log_loss": sklearn.metrics.log_loss(actual == "benign", probabilities[:, 1]),
        "sensitivity": recall["malignant"],
        "specificity": recall["benign"],
        "roc_auc": sklearn.metrics.roc_auc_score(actual == "malignant", probabilities[:, 0]),
    }
    assert {k: knn["heldout"][k] for k in expected} == {k: round(v, 4) for k, v in expected.items()}
    assert knn["heldout"]["recall"] == {name: round(r, 4) for name, r in recall.items()}
    # The spread of accuracy over the folds: the population standard deviation of each fold's share right.
    cv = frame[frame["evaluation"] == "cv"]
    per_fold = (cv["actual"] == cv["predicted"]).groupby(cv["fold"]).mean()
    assert per_fold.nunique() > 1 and knn["cv"]["accuracy_fold_std"] == round(per_fold.std(ddof=0), 4)

    confusion = pd.read_csv(tmp_path / "plots/breast/evaluation/confusion/knn.csv")
    assert list(confusion.columns) == ["actual", "predicted"] and len(confusion) == 20  # held-out rows only
    roc = pd.read_csv(tmp_path / "plots/breast/evaluation/roc.csv")
    assert list(roc.columns) == ["model", "fpr", "tpr"] and list(roc["model"].unique()) == ["head", "knn"]
    for _, curve in roc.groupby("model"):
        assert curve.iloc[0][["fpr", "tpr"]].tolist() == [0, 0] and curve.iloc[-1][["fpr", "tpr"]].tolist() == [1, 1]
        assert curve["fpr"].is_monotonic_increasing and curve["tpr"].is_monotonic_increasing
        # The area under the drawn curve is the AUC in the metrics.
        area = float(np.sum(np.diff(curve["fpr"]) * (curve["tpr"].to_numpy()[1:] + curve["tpr"].to_numpy()[:-1]) / 2))
        model = curve["model"].iloc[0]
        assert math.isclose(area, {"knn": knn, "head": head}[model]["heldout"]["roc_auc"], abs_tol=1e-3)


def scores_of_malignant(frame: pd.DataFrame) -> np.ndarray:
    return frame["p_malignant"].to_numpy()


def test_the_roc_curve_is_the_positive_classs(tmp_path, monkeypatch):
    """The plotted true-positive rate is malignant's recall at each threshold, not benign's."""
    monkeypatch.chdir(tmp_path)
    rows = knn_like_predictions(np.random.default_rng(1))[0]
    write_predictions("predictions/breast/knn.csv", [rows])
    evaluate.main(stage_argv("evaluate", "breast"))
    roc = pd.read_csv(tmp_path / "plots/breast/evaluation/roc.csv")
    malignant = (rows["actual"] == "malignant").to_numpy()

    def rates(scores: np.ndarray, positive: np.ndarray) -> set:
        """(fpr, tpr) of calling positive every image scored at or above each threshold."""
        called = [scores >= t for t in [np.inf, *np.unique(scores)]]
        return {
            (round((c & ~positive).sum() / (~positive).sum(), 4), round((c & positive).sum() / positive.sum(), 4))
            for c in called
        }

    drawn = set(zip(roc["fpr"], roc["tpr"]))
    assert drawn <= rates(scores_of_malignant(rows), malignant) and len(drawn) > 3
    assert not drawn <= rates(rows["p_benign"].to_numpy(), ~malignant)  # not benign's curve
    metrics = json.loads((tmp_path / "metrics/breast/knn.json").read_text())["heldout"]
    assert metrics["sensitivity"] == metrics["recall"]["malignant"]


def test_a_labs_classes_have_no_positive_class_unless_named(tmp_path, monkeypatch, evaluate_params):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(2)
    p_dog = rng.uniform(size=20)
    write_predictions(
        "predictions/breast/knn.csv",
        [
            prediction_frame(
                range(20), np.arange(20) % 2, np.stack([1 - p_dog, p_dog], 1), ("cat", "dog"), "heldout", "5-fold"
            )
        ],
    )
    evaluate.main(stage_argv("evaluate", "breast"))
    unnamed = json.loads((tmp_path / "metrics/breast/knn.json").read_text())["heldout"]
    assert "sensitivity" not in unnamed and "positive_class" not in unnamed
    assert not {"ppv", "brier", "ci95", "counts"} & set(unnamed)  # no positive class: no intervals
    assert not (tmp_path / "plots/breast/evaluation/calibration.csv").exists()
    evaluate_params("breast", "cat")
    evaluate.main(stage_argv("evaluate", "breast"))
    named = json.loads((tmp_path / "metrics/breast/knn.json").read_text())["heldout"]
    assert named["positive_class"] == "cat" and named["sensitivity"] == named["recall"]["cat"]
    assert named["specificity"] == named["recall"]["dog"] and named["roc_auc"] == unnamed["roc_auc"]
    assert named["counts"]["sensitivity"].endswith("/10") and "roc_auc" in named["ci95"]
    assert pd.read_csv(tmp_path / "plots/breast/evaluation/calibration.csv")["count"].sum() == 20
    evaluate_params("breast", "malignant")
    with pytest.raises(ParamsError) as error:
        evaluate.main(stage_argv("evaluate", "breast"))
    assert str(error.value) == (
        "params.yaml: positive_class.breast: 'malignant' is not a class of "
        "predictions/breast/knn.csv (its classes: cat, dog); name one of them, or null"
    )


def test_many_classes_get_a_confusion_file_and_no_roc(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    digits = tuple(str(d) for d in range(10))
    probabilities = np.full((20, 10), 0.01)
    probabilities[np.arange(20), np.arange(20) % 10] = 0.91
    write_predictions(
        "predictions/mnist/cnn.csv",
        [
            prediction_frame(range(20), np.arange(20) % 10, probabilities, digits, "heldout", "test set"),
            prediction_frame(
                range(20), np.arange(20) % 10, probabilities, digits, "validation", "held out of training"
            ),
        ],
    )
    evaluate.main(stage_argv("evaluate", "mnist"))
    metrics = json.loads((tmp_path / "metrics/mnist/cnn.json").read_text())
    assert list(metrics) == ["heldout", "validation"] and metrics["heldout"]["accuracy"] == 1.0
    assert "roc_auc" not in metrics["heldout"] and set(metrics["heldout"]["recall"]) == set(digits)
    assert (tmp_path / "plots/mnist/evaluation/confusion/cnn.csv").is_file()
    assert not (tmp_path / "plots/mnist/evaluation/roc.csv").exists()
    assert not (tmp_path / "plots/mnist/evaluation/calibration.csv").exists()
    assert "ci95" not in metrics["heldout"] and "brier" not in metrics["heldout"]


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (lambda f: f[f["evaluation"] != "heldout"], "no heldout predictions"),
        (
            lambda f: f.assign(evaluation="training"),
            "unknown evaluation 'training' (expected heldout, heldout_unseen, validation, cv, resubstitution)",
        ),
        (lambda f: f.assign(actual="normal"), "class 'normal' has no p_normal column"),
        (lambda f: f.drop(columns=["protocol"]), "not a predictions file (missing columns protocol)"),
    ],
)
def test_a_bad_predictions_file_is_named(tmp_path, monkeypatch, spoil, message):
    monkeypatch.chdir(tmp_path)
    frame = pd.concat(knn_like_predictions(np.random.default_rng(0)))
    (tmp_path / "predictions/breast").mkdir(parents=True)
    spoil(frame).to_csv(tmp_path / "predictions/breast/knn.csv", index=False)
    with pytest.raises(StageError) as error:
        evaluate.main(stage_argv("evaluate", "breast"))
    assert str(error.value) == f"predictions/breast/knn.csv: {message}"
    assert not (tmp_path / "metrics").exists()


def test_no_predictions_says_what_to_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StageError, match=r"^predictions/toy/: no predictions files; run its model stages"):
        evaluate.main(stage_argv("evaluate", "toy"))
    with pytest.raises(SystemExit):  # argparse: the missing --metrics and --plots named, exit status 2
        evaluate.main(["--predictions", "predictions/toy"])


# ------------------------------------------------------------- intervals and calibration
@pytest.mark.parametrize(
    ("hits", "total", "low", "high"),
    [
        # Newcombe (1998), Statistics in Medicine 17:857, Table I, the score method without
        # continuity correction: 81/263, 15/148, 0/20, 1/29.
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
        # The 33 of 42 malignant test images, by hand: (p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²))
        # / (1 + z²/n) with z = 1.96 is (0.78571 + 0.04573 ± 0.13226) / 1.09146.
        (33, 42, 0.6406, 0.8829),
    ],
)
def test_wilson_interval_against_published_figures(hits, total, low, high):
    interval = evaluate.wilson_interval(hits, total)
    assert (round(interval["low"], 4), round(interval["high"], 4)) == (low, high)


def brute_force_delong(positives: np.ndarray, negatives: np.ndarray) -> tuple[float, float]:
    """The AUC and DeLong's variance from their definition, every (positive, negative) pair."""
    wins = (positives[:, None] > negatives[None, :]) + 0.5 * (positives[:, None] == negatives[None, :])
    auc = wins.mean()
    return auc, wins.mean(axis=1).var(ddof=1) / len(positives) + wins.mean(axis=0).var(ddof=1) / len(negatives)


def test_delong_interval_by_hand_and_against_every_pair():
    # Positives 0.9, 0.4; negatives 0.2, 0.7, 0.1. Placements: 1 and 2/3; 1, 1/2, 1. AUC 5/6,
    # variance (1/18) / 2 + (1/12) / 3 = 1/18: 5/6 ± 1.96 · 0.2357, the top clipped to 1.
    interval = evaluate.delong_interval(np.array([1, 1, 0, 0, 0], bool), np.array([0.9, 0.4, 0.2, 0.7, 0.1]))
    assert round(interval["low"], 4) == 0.3714 and interval["high"] == 1.0
    rng = np.random.default_rng(3)
    for positives, negatives in [(30, 70), (7, 5), (42, 114)]:
        actual = np.arange(positives + negatives) < positives
        scores = np.round(rng.normal(actual * 0.8, 1.0), 1)  # rounded: many ties, within and across classes
        auc, variance = brute_force_delong(scores[actual], scores[~actual])
        interval = evaluate.delong_interval(actual, scores)
        half = 1.959963984540054 * np.sqrt(variance)  # the normal distribution's 97.5th percentile
        assert math.isclose(interval["low"], max(0, auc - half), abs_tol=1e-9)
        assert math.isclose(interval["high"], min(1, auc + half), abs_tol=1e-9)
    assert evaluate.delong_interval(np.array([1, 0, 0], bool), np.array([0.9, 0.2, 0.1])) is None  # one positive


def test_delong_interval_covers_the_true_auc_95_times_in_100():
    """Binormal scores, N(1, 1) against N(0, 1), have AUC Φ(1/√2) = 0.7602. Over 400 samples
    of 40 and 60 images the interval should cover it about 380 times (binomial spread ±4.4);
    an interval without the negatives' variance, or with z = 1.645, covers far fewer."""
    rng = np.random.default_rng(4)
    actual = np.arange(100) < 40
    covered = 0
    for _ in range(400):
        interval = evaluate.delong_interval(actual, rng.normal(actual.astype(float), 1.0))
        covered += interval["low"] <= 0.76025 <= interval["high"]
    assert 365 <= covered <= 392, covered


def test_call_counts_of_any_call():
    actual = np.array([1, 1, 1, 0, 0, 0, 0], bool)
    called = np.array([1, 1, 0, 1, 0, 0, 0], bool)
    assert evaluate.call_counts(actual, called) == {
        "sensitivity": (2, 3),
        "specificity": (3, 4),
        "ppv": (2, 3),
        "npv": (3, 4),
    }
    # Nothing called positive: no PPV (a share of nothing), and the others as they are.
    assert evaluate.call_counts(actual, np.zeros(7, bool)) == {
        "sensitivity": (0, 3),
        "specificity": (4, 4),
        "npv": (4, 7),
    }


def calibration_predictions() -> tuple[list, np.ndarray, np.ndarray]:
    """Held-out rows whose malignant probabilities fall in bins 0, 1, 5 and 9 (1.0 in the last)."""
    p_malignant = np.array([0.0, 0.05, 0.05, 0.15, 0.55, 0.55, 0.55, 0.95, 0.95, 1.0])
    malignant = np.array([0, 0, 1, 0, 1, 0, 1, 1, 1, 1], bool)
    frame = prediction_frame(
        range(10), (~malignant).astype(int), np.stack([p_malignant, 1 - p_malignant], 1), BINARY, "heldout", "test"
    )
    return [frame], p_malignant, malignant


def test_the_calibration_bins_and_the_brier_score(tmp_path, monkeypatch):
    from sklearn.metrics import brier_score_loss

    monkeypatch.chdir(tmp_path)
    frames, p_malignant, malignant = calibration_predictions()
    write_predictions("predictions/breast/knn.csv", frames)
    write_predictions("predictions/breast/head.csv", knn_like_predictions(np.random.default_rng(5))[:1])
    evaluate.main(stage_argv("evaluate", "breast"))
    calibration = pd.read_csv(tmp_path / "plots/breast/evaluation/calibration.csv")
    assert list(calibration.columns) == ["model", "bin_from", "bin_to", "predicted", "observed", "count"]
    assert list(calibration["model"].unique()) == ["head", "knn"]
    knn = calibration[calibration["model"] == "knn"]
    assert knn.drop(columns="model").to_dict("list") == {
        "bin_from": [0.0, 0.1, 0.5, 0.9],
        "bin_to": [0.1, 0.2, 0.6, 1.0],
        "predicted": [0.0333, 0.15, 0.55, 0.9667],  # the mean malignant probability in each bin
        "observed": [0.3333, 0.0, 0.6667, 1.0],  # the share of malignant images in it
        "count": [3, 1, 3, 3],
    }
    metrics = json.loads((tmp_path / "metrics/breast/knn.json").read_text())["heldout"]
    # (0.05² + 0.95² + 0.15² + 0.45² + 0.55² + 0.45² + 0.05² + 0.05²) / 10: the other two are exact.
    assert metrics["brier"] == round(brier_score_loss(malignant, p_malignant), 4) == 0.164


def test_the_same_predictions_give_the_same_bytes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_predictions("predictions/breast/knn.csv", knn_like_predictions(np.random.default_rng(6)))
    runs = []
    for _ in range(2):
        evaluate.main(stage_argv("evaluate", "breast"))
        outputs = sorted(p for folder in ("metrics", "plots") for p in (tmp_path / folder).rglob("*") if p.is_file())
        runs.append({p.relative_to(tmp_path): p.read_bytes() for p in outputs})
        for p in outputs:
            p.unlink()
    assert runs[0] == runs[1] and "ci95" in runs[0][Path("metrics/breast/knn.json")].decode()
    assert Path("plots/breast/evaluation/calibration.csv") in runs[0]

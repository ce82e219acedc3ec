"""The breast classifiers' operating point: a cut of the positive class's probability that
meets a target sensitivity, chosen on out-of-fold predictions and never on the images it
is then read on."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from stages import evaluate, fit_knn
from stages.shared.breast import OperatingPoint, protocol_predictions
from stages.shared.config import ParamsError
from tests.conftest import stage_argv
from tests.test_breast import SETTINGS, clustered_features, save_feature_set, write_params


@pytest.mark.parametrize(("target", "cut"), [(0.6, 0.6), (0.61, 0.3), (1.0, 0.1), (0.2, 0.9)])
def test_the_cut_is_the_highest_that_catches_the_target_share_of_positives(target, cut):
    labels = np.array([0, 0, 0, 0, 0, 1, 1])  # class 0 is the positive one
    p_positive = np.array([0.9, 0.8, 0.6, 0.3, 0.1, 0.95, 0.5])
    point = OperatingPoint(positive=0, target_sensitivity=target)
    assert point.cut(labels, np.stack([p_positive, 1 - p_positive], axis=1)) == cut


def lookup_classifier(data, probability_of):
    """A stand-in classifier whose probability of the positive class (0) for each image is
    ``probability_of[image]``, whatever it was fitted on: the protocol's cuts can then be
    worked out by hand."""
    table = np.stack([probability_of, 1 - probability_of], axis=1)
    return {
        "fit": lambda indices: indices,
        "predict_proba": lambda _, indices: table[indices],
        "inner_out_of_fold": lambda fitted, _: (fitted, table[fitted]),
    }


def test_each_call_comes_from_a_cut_chosen_without_the_image():
    data = clustered_features(n_per_class=20)  # 8 test images
    probability_of = np.random.default_rng(1).uniform(size=40)
    point = OperatingPoint(positive=0, target_sensitivity=0.75)
    _, frames, described = protocol_predictions(
        data, n_folds=4, seed=0, point=point, **lookup_classifier(data, probability_of)
    )
    rows = pd.concat(frames).set_index("id")
    index = {source: i for i, source in enumerate(data.source)}
    table = np.stack([probability_of, 1 - probability_of], axis=1)
    rest = np.flatnonzero(data.split != "test")
    # The saved cut: on the out-of-fold predictions of the non-test images alone.
    assert described["min_positive_probability"] == point.cut(data.labels[rest], table[rest])
    test = rows[rows["evaluation"] == "heldout"]
    expected = np.where(probability_of[test.index.map(index)] >= described["min_positive_probability"], 0, 1)
    assert (test["called"] == np.asarray(data.class_names)[expected]).all()
    # Each fold's calls: by the cut on the other folds' images.
    cv = rows[rows["evaluation"] == "cv"]
    assert cv["fold"].nunique() == 4  # every fold is checked below, not none
    for fold, held in cv.groupby("fold"):
        others = rest[~np.isin(rest, held.index.map(index))]
        cut = point.cut(data.labels[others], table[others])
        expected = np.where(probability_of[held.index.map(index)] >= cut, 0, 1)
        assert (held["called"] == np.asarray(data.class_names)[expected]).all(), fold
    # The test split's own probabilities played no part: moving them moves no cut.
    moved = probability_of.copy()
    moved[data.split == "test"] = 0.999
    _, _, again = protocol_predictions(data, n_folds=4, seed=0, point=point, **lookup_classifier(data, moved))
    assert again == described


def knn_with_target(project, monkeypatch, target: float) -> None:
    """A project folder, the working directory, whose params give fit_knn ``target``."""
    monkeypatch.chdir(project)
    write_params(project, "medmnist")
    params = json.loads((project / "params.yaml").read_text())
    params["fit_knn"]["target_sensitivity"] = target
    (project / "params.yaml").write_text(json.dumps(params))


def test_the_knn_stage_writes_its_calls_and_its_cut(tmp_path, monkeypatch):
    knn_with_target(tmp_path, monkeypatch, 0.9)
    save_feature_set(clustered_features(n_per_class=30))
    fit_knn.main(stage_argv("fit_knn"))
    saved = json.loads((tmp_path / "models/breast/knn_operating_point.json").read_text())
    assert saved["positive_class"] == "malignant" and saved["target_sensitivity"] == 0.9
    assert saved["out_of_fold_sensitivity"] >= 0.9 and saved["images"] == 48
    predictions = pd.read_csv(tmp_path / "predictions/breast/knn.csv")
    assert set(predictions["called"]) <= {"malignant", "normal_or_benign"} and predictions["called"].notna().all()


def test_without_a_target_the_stage_keeps_the_argmax(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path, "medmnist")
    save_feature_set(clustered_features())
    fit_knn.main(stage_argv("fit_knn"))
    assert json.loads((tmp_path / "models/breast/knn_operating_point.json").read_text())["target_sensitivity"] is None
    assert "called" not in pd.read_csv(tmp_path / "predictions/breast/knn.csv").columns


def test_a_target_needs_a_positive_class(tmp_path, monkeypatch):
    knn_with_target(tmp_path, monkeypatch, 0.9)
    data = clustered_features()
    save_feature_set(dataclasses.replace(data, class_names=("cat", "dog")))
    with pytest.raises(ParamsError, match="^params.yaml: fit_knn.target_sensitivity: a target sensitivity needs"):
        fit_knn.main(stage_argv("fit_knn"))


def test_the_knn_s_nested_cuts_need_no_test_split():
    data = clustered_features(n_per_class=40, with_test=False)
    settings = SETTINGS.model_copy(update={"target_sensitivity": 0.8})
    _, frames, described = fit_knn.fit_and_predict(data, settings, 4, seed=0, point=OperatingPoint(0, 0.8))
    heldout = pd.concat(frames).query("evaluation == 'heldout'")
    assert heldout["called"].notna().all() and described["images"] == 80


def test_evaluate_scores_the_call_at_the_operating_point_apart_from_the_argmax(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path, "medmnist")
    # Four malignant and four benign images; the call at the operating point differs from the argmax.
    rows = pd.DataFrame(
        {
            "id": [f"test_images[{i}]" for i in range(8)],
            "evaluation": "heldout",
            "protocol": "test split",
            "fold": "",
            "actual": ["malignant"] * 4 + ["normal_or_benign"] * 4,
            "predicted": ["malignant", "malignant"] + ["normal_or_benign"] * 6,
            "called": ["malignant"] * 4 + ["malignant", "malignant", "normal_or_benign", "normal_or_benign"],
            "p_malignant": [0.9, 0.8, 0.4, 0.3, 0.35, 0.3, 0.1, 0.05],
            "p_normal_or_benign": [0.1, 0.2, 0.6, 0.7, 0.65, 0.7, 0.9, 0.95],
        }
    )
    (tmp_path / "predictions/breast").mkdir(parents=True)
    rows.to_csv(tmp_path / "predictions/breast/knn.csv", index=False)
    evaluate.main(stage_argv("evaluate", "breast"))
    heldout = json.loads((tmp_path / "metrics/breast/knn.json").read_text())["heldout"]
    assert (heldout["sensitivity"], heldout["specificity"]) == (0.5, 1.0)  # the argmax's
    point = heldout["operating_point"]
    assert (point["sensitivity"], point["specificity"], point["ppv"], point["npv"]) == (1.0, 0.5, 0.6667, 1.0)
    assert point["counts"] == {"sensitivity": "4/4", "specificity": "2/4", "ppv": "4/6", "npv": "2/2"}
    assert point["ci95"]["sensitivity"]["low"] < 1.0 == point["ci95"]["sensitivity"]["high"]

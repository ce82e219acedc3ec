"""Near-copies of one scan: found from the pixels, kept in one fold by every split the breast
classifiers make, and left out of the ``heldout_unseen`` figure."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stages import evaluate, find_near_copies, fit_knn, train_head
from stages.shared.breast import FeatureSet
from stages.shared.config import StageError
from stages.shared.near_copies import CopyReference, group_ids, near_copy_pairs, nearest, thumbnail, unit_rows
from tests.conftest import SHARED_DATA, stage_argv
from tests.test_breast import HEAD, SETTINGS, clustered_features, save_image, write_params

COPIES = 3  # images of each scan


def scans_with_copies(n_scans: int = 40, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """``(images, labels, scan)``: ``n_scans`` random grey scans, half of each class, each as
    ``COPIES`` images that differ by a caliper mark drawn at another place and a little
    noise (near-copies, not byte-equal). The pixels say nothing of the class."""
    rng = np.random.default_rng(seed)
    images, labels, scan_of = [], [], []
    for scan in range(n_scans):
        pixels = rng.integers(0, 256, (28, 28))
        for copy in range(COPIES):
            image = np.clip(pixels + rng.integers(-4, 5, (28, 28)), 0, 255)
            image[4 + 6 * copy, 5:9] = 255  # the caliper
            images.append(image.astype(np.uint8))
            labels.append(scan % 2)
            scan_of.append(scan)
    return images, np.array(labels), np.array(scan_of)


def groups_of(images: list[np.ndarray], min_correlation: float = 0.95) -> np.ndarray:
    """The groups that find_near_copies' rule gives ``images``."""
    first, second, _, _ = near_copy_pairs(unit_rows(np.stack([thumbnail(i) for i in images])), min_correlation)
    return group_ids(len(images), first, second)


def test_the_rule_finds_each_scans_copies_and_joins_no_two_scans():
    images, _, scan = scans_with_copies()
    groups = groups_of(images)
    np.testing.assert_array_equal(groups, scan)  # numbered by first image, as the scans are
    # A threshold above the copies' correlation finds none.
    assert len(np.unique(groups_of(images, min_correlation=0.9999))) == len(images)


def test_nearest_finds_the_copy_of_a_new_image():
    images, _, scan = scans_with_copies(n_scans=10)
    reference = unit_rows(np.stack([thumbnail(i) for i in images[1:]]))  # all but the first copy of scan 0
    index, correlation = nearest(unit_rows(thumbnail(images[0])[None]), reference)
    assert scan[1:][index[0]] == 0 and correlation[0] > 0.95


def cv_accuracy(data: FeatureSet) -> float:
    _, frames, _ = fit_knn.fit_and_predict(data, SETTINGS.model_copy(update={"k": 1}), n_folds=5, seed=0)
    heldout = pd.concat(frames).query("evaluation == 'heldout'")
    return float((heldout["actual"] == heldout["predicted"]).mean())


def test_copies_spread_over_folds_would_raise_the_figure_and_the_folds_keep_them_together():
    # Features with no class signal at all: a classifier can only score above chance on an
    # image whose copy it was fitted on.
    images, labels, _ = scans_with_copies(n_scans=100)
    features = np.stack([thumbnail(i) for i in images])
    data = FeatureSet(
        features=features,
        labels=labels,
        split=np.full(len(images), "train"),  # no test split: cross-validation is the held-out figure
        source=np.array([f"image_{i}.png" for i in range(len(images))]),
        class_names=("malignant", "normal_or_benign"),
        blocks=("block5",),
        groups=groups_of(images),
    )
    # Image-level folds (every image a group of its own, as StratifiedKFold splits) put an
    # image's copies in the training folds: the figure is near perfect, and false.
    assert cv_accuracy(dataclasses.replace(data, groups=np.arange(len(images)))) > 0.9
    # The project's folds keep each scan's copies in one fold: chance, as it should be (the
    # copies of a scan are called alike, so 100 scans give a standard deviation of 0.05:
    # 0.7 is 4 of them above 0.5).
    assert cv_accuracy(data) < 0.7


def test_every_split_of_the_head_keeps_a_group_whole():
    data = dataclasses.replace(clustered_features(n_per_class=40), groups=np.arange(80) // 2)  # pairs of one class
    rest = np.flatnonzero(data.split != "test")
    for members in (4, 1):
        settings = HEAD.model_copy(update={"ensemble_members": members})
        for train, stop in train_head.member_splits(data, rest, settings, seed=0):
            assert not set(data.groups[train]) & set(data.groups[stop])
    # With no validation split, the stopping share is grouped and stratified too.
    no_val = dataclasses.replace(data, split=np.full(80, "train"))
    train, stop = train_head.stopping_split(no_val, np.arange(80), 0.25, seed=0)
    assert not set(no_val.groups[train]) & set(no_val.groups[stop])
    assert len(stop) == 20 and np.bincount(no_val.labels[stop]).tolist() == [10, 10]


def test_the_data_s_own_validation_split_stops_only_on_images_unlike_the_training_ones(capsys):
    data = clustered_features(n_per_class=40)  # per class: train, train, train, val, test, ...
    val = np.flatnonzero(data.split == "val")
    groups = np.arange(80)
    groups[val[:3]] = groups[val[:3] - 1]  # three validation images are copies of training images
    data = dataclasses.replace(data, groups=groups)
    rest = np.flatnonzero(data.split != "test")
    train, stop = train_head.stopping_split(data, rest, 0.25, seed=0)
    assert set(data.split[train]) == {"train"} and sorted(stop) == sorted(val[3:])
    assert "stopping on the 13 of 16 validation images with no near-copy among the training images" in (
        capsys.readouterr().out
    )


def test_heldout_unseen_leaves_out_the_test_images_with_a_copy_among_the_fitted_ones():
    data = clustered_features(n_per_class=20)
    test = np.flatnonzero(data.split == "test")
    groups = np.arange(40)
    groups[test[:2]] = groups[test[:2] - 1]  # two test images are copies of non-test images
    _, frames, _ = fit_knn.fit_and_predict(dataclasses.replace(data, groups=groups), SETTINGS, 4, seed=0)
    rows = pd.concat(frames)
    heldout, unseen = (rows[rows["evaluation"] == name] for name in ("heldout", "heldout_unseen"))
    assert sorted(unseen["id"]) == sorted(data.source[test[2:]])
    # The same predictions, of fewer images.
    pd.testing.assert_frame_equal(
        heldout.set_index("id").loc[unseen["id"], ["p_malignant"]], unseen.set_index("id")[["p_malignant"]]
    )


# --------------------------------------------------------------------------- the stage
@pytest.fixture()
def lab_with_copies(tmp_path, monkeypatch) -> Path:
    """A lab's folder in which one scan is filed under both classes, and two scans of one
    patient are different images."""
    monkeypatch.chdir(tmp_path)
    images, _, scan = scans_with_copies(n_scans=8)
    root = tmp_path / "data/local/breast/lab"
    for i, (image, s) in enumerate(zip(images, scan)):
        # Scan 0's third copy is filed as benign: one scan under both labels.
        name = "benign" if (s % 2 or i == 2) else "malignant"
        save_image(root / name / f"scan{s}_{i}.png", image)
    write_params(tmp_path, "lab")
    return tmp_path


def run_stage(project: Path, lab_groups: str = "none") -> dict:
    params = json.loads((project / "params.yaml").read_text())
    params["find_near_copies"]["lab_groups"] = lab_groups
    (project / "params.yaml").write_text(json.dumps(params))
    find_near_copies.main(stage_argv("find_near_copies"))
    return json.loads((project / "data/breast/near_copies_audit.json").read_text())


def test_the_stage_groups_audits_and_draws_the_groups_with_two_labels(lab_with_copies):
    audit = run_stage(lab_with_copies)
    table = pd.read_csv(lab_with_copies / "data/breast/near_copies.csv")
    assert list(table.columns) == ["source", "split", "label", "group", "nearest", "correlation"]
    assert audit["groups_of_two_or_more"] == 8 and audit["images_with_a_near_copy"] == 24
    [conflict] = audit["groups_with_different_labels"]
    assert sorted(image["source"] for image in conflict["images"]) == [
        "benign/scan0_2.png",
        "malignant/scan0_0.png",
        "malignant/scan0_1.png",
    ]
    assert audit["groups_spanning_splits"] == []  # a folder is all one split
    assert sorted(p.name for p in (lab_with_copies / "plots/breast/near_copies").iterdir()) == [
        f"group_{conflict['group']}.png"
    ]
    with np.load(lab_with_copies / "models/breast/thumbnails.npz") as saved:
        assert saved["thumbnails"].shape == (24, 28 * 28) and float(saved["min_correlation"]) == 0.95


def test_a_new_image_is_named_as_a_near_copy_of_the_training_image_it_copies(lab_with_copies):
    run_stage(lab_with_copies)
    reference = CopyReference(lab_with_copies / "models/breast/thumbnails.npz")
    images, _, _ = scans_with_copies(n_scans=8)
    again = images[4].copy()
    again[20:22, 10:20] = 255  # the same scan with calipers drawn elsewhere
    unrelated = np.random.default_rng(9).integers(0, 256, (28, 28), dtype=np.uint8)
    ids, labels = reference.copies_of(np.stack([thumbnail(again), thumbnail(unrelated)]))
    assert ids[0].startswith("benign/scan1_") and labels.tolist() == ["benign", ""] and ids[1] == ""


def test_a_lab_s_groups_join_the_near_copies(lab_with_copies):
    (lab_with_copies / "data/local/breast/patients.csv").write_text(
        "image,group\nmalignant/scan2_6.png,patient_a\nmalignant/scan4_12.png,patient_a\n"
    )
    run_stage(lab_with_copies, "patients.csv")
    table = pd.read_csv(lab_with_copies / "data/breast/near_copies.csv").set_index("source")["group"]
    assert table["malignant/scan2_6.png"] == table["malignant/scan4_12.png"] == table["malignant/scan4_13.png"]
    assert table.nunique() == 7  # scans 2 and 4 are one patient


@pytest.mark.parametrize(
    "content, message",
    [
        ("image,group\nmalignant/scan9_99.png,a\n", "names 'malignant/scan9_99.png', which is not an image"),
        ("picture,patient\nmalignant/scan2_6.png,a\n", "no 'image' column"),
        ("image,group\nmalignant/scan2_6.png,a\nmalignant/scan2_6.png,b\n", "is in more than one group"),
        ("image,group\nmalignant/scan2_6.png,\n", "row 2 has an empty image or group"),
        ('image,group\n"unclosed,a\n', "not a readable CSV"),
    ],
)
def test_a_bad_groups_file_stops_the_stage_with_one_line(lab_with_copies, content, message):
    (lab_with_copies / "data/local/breast/patients.csv").write_text(content)
    with pytest.raises(StageError, match=message) as error:
        run_stage(lab_with_copies, "patients.csv")
    assert "\n" not in str(error.value) and "patients.csv" in str(error.value)
    assert not (lab_with_copies / "data/breast/near_copies.csv").exists()


def test_evaluate_scores_heldout_unseen_with_its_count(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path, "medmnist")
    data = clustered_features()
    test = np.flatnonzero(data.split == "test")
    groups = np.arange(40)
    groups[test[0]] = groups[test[0] - 1]
    _, frames, _ = fit_knn.fit_and_predict(dataclasses.replace(data, groups=groups), SETTINGS, 4, seed=0)
    predictions = tmp_path / "predictions/breast"
    predictions.mkdir(parents=True)
    pd.concat(frames).to_csv(predictions / "knn.csv", index=False)
    evaluate.main(stage_argv("evaluate", "breast"))
    metrics = json.loads((tmp_path / "metrics/breast/knn.json").read_text())
    assert list(metrics)[:2] == ["heldout", "heldout_unseen"]
    assert metrics["heldout"]["n"] == 8 and metrics["heldout_unseen"]["n"] == 7


BREASTMNIST_28 = SHARED_DATA / "breastmnist_28.npz"


@pytest.mark.skipif(not BREASTMNIST_28.exists(), reason=f"{BREASTMNIST_28} is absent")
def test_the_audit_of_breastmnist_is_the_one_docs_breast_md_gives(tmp_path, monkeypatch):
    (tmp_path / "data/local/breast").mkdir(parents=True)
    (tmp_path / "data/local/breast/breastmnist_28.npz").symlink_to(BREASTMNIST_28)
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path, "breastmnist_28.npz")
    audit = run_stage(tmp_path)
    assert (audit["images_with_a_near_copy"], audit["groups_of_two_or_more"], audit["largest_group"]) == (332, 145, 7)
    assert audit["test_images_with_a_near_copy_outside_the_test_split"] == 63
    assert len(audit["groups_spanning_splits"]) == 89
    conflicts = [
        sorted(image["source"] for image in group["images"]) for group in audit["groups_with_different_labels"]
    ]
    assert len(conflicts) == 6
    assert ["test_images[143]", "test_images[76]", "train_images[115]"] in conflicts  # sorted as strings
    assert ["test_images[84]", "val_images[24]"] in conflicts

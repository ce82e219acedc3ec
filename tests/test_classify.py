"""classify-images on tiny pipelines the tests train: the same probabilities as the stages'
own predictions for the same images, bad files named and skipped, the choice of classifier,
the flag for images unlike the training images, tampered model files refused."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from html import escape
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from stages import augment_train_mnist, evaluate, extract_vgg_features, find_near_copies, fit_knn, train_head
from stages.commands import classifiers, heatmaps, model_files, report
from stages.commands import classify as classify_stage
from stages.shared import backbone as shared_backbone
from stages.shared import breast
from stages.shared import images as shared_images
from stages.shared.config import StageError
from stages.shared.predictions import read_predictions
from stages.shared.runner import run_stage
from tests.conftest import (
    chromium_or_skip,
    dom_offline,
    stage_argv,
    tiny_breast,
    tiny_mnist,
    tool_env,
    write_decompression_bomb,
)

PROJECT = Path(__file__).resolve().parents[1]


def classify(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """classify-images with ``args``, run in ``cwd`` in this process (TensorFlow is already
    started here), with its exit status and what it printed."""
    out, err = io.StringIO(), io.StringIO()
    saved_argv, saved_cwd = sys.argv, Path.cwd()
    sys.argv = ["classify-images", *args]
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                run_stage(classify_stage.main)
                status = 0
            except SystemExit as exit:
                status = exit.code
    finally:
        sys.argv = saved_argv
        os.chdir(saved_cwd)
    return subprocess.CompletedProcess(args, status, out.getvalue(), err.getvalue())


def classify_images(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """The installed ``classify-images`` command, in a process of its own."""
    return subprocess.run(["classify-images", *args], cwd=cwd, env=tool_env(), capture_output=True, text=True)


def save_images(folder: Path, images: np.ndarray, prefix: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, pixels in enumerate(images):
        paths.append(folder / f"{prefix}{i}.png")
        Image.fromarray(pixels).save(paths[-1])
    return paths


def params_of(project: Path) -> dict:
    return yaml.safe_load((project / "params.yaml").read_text())


@pytest.fixture(scope="module")
def breast_project(tmp_path_factory) -> Path:
    """The breast stages run on tiny MedMNIST-layout data, as `dvc repro evaluate@breast` would."""
    root = tmp_path_factory.mktemp("breast")
    (root / "data/local/breast").mkdir(parents=True)
    np.savez(root / "data/local/breast/tiny.npz", **tiny_breast(n_train=30, n_val=10, n_test=12))
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    params["extract_vgg_features"].update(
        data="tiny.npz", backbone="vgg16", weights="none", layer="avg", blocks=[3, 4, 5], image_size=32
    )
    params["fit_knn"].update(k=3, features=["block5"])  # each classifier on blocks of its own
    params["breast_cv_folds"] = 3
    params["train_head"].update(
        features=["block5", "block3"], hidden_units=8, max_epochs=10, patience=3, ensemble_members=3
    )
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    shutil.copy(PROJECT / "dvc.yaml", root)  # where classify-images finds the models
    cwd = Path.cwd()
    try:
        os.chdir(root)
        for stage in (extract_vgg_features, find_near_copies, fit_knn, train_head):
            stage.main(stage_argv(stage.__name__.removeprefix("stages.")))
        evaluate.main(stage_argv("evaluate", "breast"))
    finally:
        os.chdir(cwd)
    save_images(root / "new", tiny_breast(n_train=30, n_val=10, n_test=12)["test_images"], "test_")
    return root


@pytest.mark.parametrize("model", ["breast-knn", "breast-head"])
def test_new_images_get_the_stages_own_probabilities(breast_project, model):
    result = classify(breast_project, "--model", model, "new", "-o", "out.csv")
    assert result.returncode == 0, result.stderr
    rows = pd.read_csv(breast_project / "out.csv")
    assert list(rows.columns) == [
        "file",
        "predicted",
        "p_malignant",
        "p_normal_or_benign",
        "called_at_operating_point",
        "nearest_distance",
        "unlike_training",
        "near_copy_of",
        "near_copy_label",
    ]
    assert rows["file"].tolist() == sorted(f"new/test_{i}.png" for i in range(12))
    # The model kept by each stage predicted the test split itself: the same images, read from PNG files.
    predictions, _ = read_predictions(breast_project / f"predictions/breast/{model.removeprefix('breast-')}.csv")
    held = predictions[predictions["evaluation"] == "heldout"].set_index("id")
    expected = held.loc[[f"test_images[{f.split('_')[1].split('.')[0]}]" for f in rows["file"]]]
    np.testing.assert_allclose(rows["p_normal_or_benign"], expected["p_normal_or_benign"], atol=2e-5)
    assert rows["predicted"].tolist() == expected["predicted"].tolist()
    # The call at the operating point is the stage's own, by the cut it saved.
    assert rows["called_at_operating_point"].tolist() == expected["called"].tolist()


def test_the_default_is_the_better_classifier_by_cross_validation(breast_project):
    result = classify(breast_project, "new/test_0.png")
    assert result.returncode == 0, result.stderr
    figures = {
        m: json.loads((breast_project / f"metrics/breast/{m}.json").read_text())["cv"]["roc_auc"]
        for m in ("knn", "head")
    }
    best = max(figures, key=figures.get)
    assert f"using breast-{best}: breast-knn {figures['knn']:.4f}, breast-head {figures['head']:.4f}" in result.stderr
    assert "cross-validation of the non-test images" in result.stderr  # never the test split
    assert (
        result.stdout.splitlines()[0]
        == "file,predicted,p_malignant,p_normal_or_benign,called_at_operating_point,nearest_distance,"
        "unlike_training,near_copy_of,near_copy_label"
    )


@pytest.mark.parametrize("model", ["breast-knn", "breast-head", "breast"])
def test_the_model_used_is_the_one_whose_figures_are_reported(breast_project, monkeypatch, model):
    """The model classify-images loads (for the head, the whole ensemble) gives the test
    images' features the probabilities that its stage reported for them."""
    monkeypatch.chdir(breast_project)
    name, probabilities = classifiers.breast_feature_model(model)
    stage = classifiers.BREAST_MODELS[name]
    data = breast.load_features(
        Path("data/breast/features.npz"),
        params_of(breast_project)[stage]["features"],
        stage,
        Path("data/breast/near_copies.csv"),
    )
    test = data.split == "test"
    features, ids = data.features[test], data.source[test]
    predictions, class_names = read_predictions(Path(f"predictions/breast/{name.removeprefix('breast-')}.csv"))
    reported = predictions[predictions["evaluation"] == "heldout"].set_index("id").loc[ids]
    np.testing.assert_allclose(probabilities(features), reported[[f"p_{c}" for c in class_names]], rtol=0, atol=1e-6)


def test_images_unlike_the_training_images_are_flagged(breast_project):
    arrays = tiny_breast(n_train=30, n_val=10, n_test=12)
    save_images(breast_project / "mixed_batch", arrays["train_images"][:4], "scan_")  # images the KNN was fitted on
    squares = np.kron(np.indices((4, 4)).sum(axis=0) % 2, np.ones((7, 7))) * 255  # a checkerboard
    save_images(breast_project / "mixed_batch", np.stack([squares, 255 - squares]).astype(np.uint8), "odd_")
    result = classify(breast_project, "--model", "breast-head", "mixed_batch")
    assert result.returncode == 0, result.stderr
    rows = pd.read_csv(pd.io.common.StringIO(result.stdout)).set_index("file")
    threshold = json.loads((breast_project / "models/breast/novelty.json").read_text())["threshold"]
    assert (rows["unlike_training"] == (rows["nearest_distance"] > threshold)).all()
    scans, odd = rows.filter(like="scan_", axis=0), rows.filter(like="odd_", axis=0)
    assert (scans["nearest_distance"] < 1e-3).all() and not scans["unlike_training"].any()
    assert odd["unlike_training"].all()
    # The training scans are named as near-copies of themselves, with their labels; the others of none.
    assert scans["near_copy_of"].tolist() == [f"train_images[{i}]" for i in range(4)]
    assert scans["near_copy_label"].tolist() == ["malignant", "normal_or_benign"] * 2
    assert odd["near_copy_of"].isna().all()
    assert (
        f"flagged 2 of 6 images as unlike the training images (distance to the nearest one above "
        f"{threshold:.4f}: unlike_training)"
    ) in result.stderr


def write_breast_metrics(folder: Path, cv: dict[str, float], test: dict[str, float]) -> None:
    for classifier in ("knn", "head"):
        (folder / "metrics/breast").mkdir(parents=True, exist_ok=True)
        (folder / f"metrics/breast/{classifier}.json").write_text(
            json.dumps(
                {
                    "heldout": {"protocol": "test split", "roc_auc": test[classifier]},
                    "cv": {
                        "protocol": "5-fold grouped stratified cross-validation of the non-test images",
                        "roc_auc": cv[classifier],
                    },
                }
            )
        )


@pytest.mark.parametrize(
    ("cv", "test", "chosen"),
    [
        ({"knn": 0.90, "head": 0.85}, {"knn": 0.70, "head": 0.95}, "breast-knn"),
        ({"knn": 0.80, "head": 0.88}, {"knn": 0.99, "head": 0.60}, "breast-head"),
    ],
)
def test_the_choice_follows_cross_validation_when_the_test_split_disagrees(tmp_path, monkeypatch, cv, test, chosen):
    monkeypatch.chdir(tmp_path)
    shutil.copy(PROJECT / "dvc.yaml", tmp_path)
    write_breast_metrics(tmp_path, cv, test)
    assert classifiers.choose_breast_model(Path("metrics/breast")) == chosen


def copy_of(project: Path, tmp_path: Path) -> Path:
    """The trained project's files that classify-images reads, as a clone that ran `dvc pull` has them."""
    clone = tmp_path / "clone"
    clone.mkdir()
    for part in ("dvc.yaml", "params.yaml", "models", "metrics", "new"):
        (shutil.copytree if (project / part).is_dir() else shutil.copy)(project / part, clone / part)
    return clone


def use_weights(clone: Path, weights: str, digest_of: Path) -> None:
    """Point the clone's backbone.json at ``weights``, as if the extraction had run from the
    weights in ``digest_of``."""
    recipe_path = clone / "models/breast/backbone.json"
    recipe = json.loads(recipe_path.read_text())
    built = shared_backbone.build_extractor(
        recipe["backbone"], str(digest_of), recipe["layer"], recipe["image_size"], recipe["blocks"]
    )
    recipe.update(weights=weights, weights_sha256=shared_backbone.weights_digest(built))
    recipe_path.write_text(json.dumps(recipe))


@pytest.fixture(scope="module")
def two_weights_files(tmp_path_factory) -> tuple[Path, Path]:
    """Two no-top VGG16 weights files with different random weights."""
    import keras

    folder = tmp_path_factory.mktemp("weights")
    files = []
    for seed in (1, 2):
        keras.utils.set_random_seed(seed)
        files.append(folder / f"vgg16_{seed}.weights.h5")
        keras.applications.VGG16(weights=None, include_top=False, input_shape=(32, 32, 3)).save_weights(files[-1])
    return files[0], files[1]


def test_weights_replaced_in_place_are_refused(breast_project, tmp_path, two_weights_files):
    clone = copy_of(breast_project, tmp_path)
    local = clone / "data/local/weights/vgg16.weights.h5"
    local.parent.mkdir(parents=True)
    shutil.copy(two_weights_files[0], local)
    use_weights(clone, "data/local/weights/vgg16.weights.h5", two_weights_files[0])
    assert classify(clone, "--model", "breast-knn", "new").returncode == 0  # the weights it was built from
    shutil.copy(two_weights_files[1], local)  # replaced in place: same path, other weights
    refused = classify(clone, "--model", "breast-knn", "new")
    assert refused.returncode == 2 and refused.stdout == ""
    line = refused.stderr.strip().splitlines()[-1]
    assert line.startswith(
        "error: models/breast/backbone.json: the backbone rebuilt from weights "
        "data/local/weights/vgg16.weights.h5 is not the one the features were extracted with"
    )
    local.unlink()  # a colleague who only pulled: the local file is not a DVC output
    missing = classify(clone, "--model", "breast-knn", "new")
    assert missing.returncode == 2 and missing.stderr.strip().splitlines()[-1] == (
        "error: data/local/weights/vgg16.weights.h5: the backbone's weights file, named in "
        "models/breast/backbone.json, is not on this machine; `dvc pull` does not bring it (a local copy, not a "
        "DVC output): copy it to that path from the machine that ran extract_vgg_features (weights sha256 "
        f"{json.loads((clone / 'models/breast/backbone.json').read_text())['weights_sha256'][:12]}...)"
    )


def test_a_clone_that_only_pulled_classifies_with_imagenet_weights_from_kerass_cache(
    breast_project, tmp_path, monkeypatch, two_weights_files
):
    """``weights: imagenet``: Keras's download is simulated by a local file that its
    cache hands back, as it would after a first download."""
    from keras.src.utils import file_utils

    clone = copy_of(breast_project, tmp_path)
    use_weights(clone, "imagenet", two_weights_files[0])
    fetched = []
    monkeypatch.setattr(
        file_utils, "get_file", lambda name, *args, **kwargs: fetched.append(name) or str(two_weights_files[0])
    )
    result = classify(clone, "--model", "breast", "new")
    assert result.returncode == 0, result.stderr
    assert fetched == ["vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"]
    assert len(pd.read_csv(io.StringIO(result.stdout))) == 12


def test_a_tampered_keras_model_is_refused_unloaded(tmp_path):
    import keras

    inputs = keras.Input(shape=(4,))
    sneaky = keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2)(inputs))  # code inside the file
    sneaky.save(tmp_path / "head.keras")
    with pytest.raises(StageError) as refused:
        model_files.load_keras_model(tmp_path / "head.keras")
    message = str(refused.value)
    assert message.startswith(f"{tmp_path / 'head.keras'}: refused or unreadable Keras model (")
    assert "Lambda" in message and "\n" not in message


def test_bad_files_are_named_and_skipped(breast_project):
    bad = breast_project / "mixed"
    good = save_images(bad, tiny_breast(n_train=2, n_val=0, n_test=0)["train_images"], "ok_")
    (bad / "broken.png").write_bytes(good[0].read_bytes()[:40])
    (bad / "notes.txt").write_text("not an image, not an image suffix: left alone")
    (bad / "Thumbs.db").write_bytes(b"\0")
    result = classify(breast_project, "--model", "breast-knn", "mixed")
    assert result.returncode == 1
    assert "skipped mixed/broken.png: cannot read image" in result.stderr
    assert "classified 2 images; skipped 1 that could not be read" in result.stderr
    assert [line.split(",")[0] for line in result.stdout.splitlines()[1:]] == ["mixed/ok_0.png", "mixed/ok_1.png"]
    # Nothing readable: the header alone, the same as with images.
    none_readable = classify(breast_project, "--model", "breast-knn", "mixed/broken.png")
    assert none_readable.returncode == 1
    assert none_readable.stdout.splitlines() == [result.stdout.splitlines()[0]]


def test_a_decompression_bomb_is_named_and_skipped(breast_project):
    folder = breast_project / "with_bomb"
    save_images(folder, tiny_breast(n_train=2, n_val=0, n_test=0)["train_images"], "ok_")
    write_decompression_bomb(folder / "huge.png")
    result = classify(breast_project, "--model", "breast-knn", "with_bomb")
    assert result.returncode == 1
    assert "skipped with_bomb/huge.png: refused as a possible decompression bomb (" in result.stderr
    assert "classified 2 images; skipped 1 that could not be read" in result.stderr
    assert [line.split(",")[0] for line in result.stdout.splitlines()[1:]] == [
        "with_bomb/ok_0.png",
        "with_bomb/ok_1.png",
    ]


def test_missing_inputs_are_one_line_errors(breast_project, tmp_path):
    absent = classify_images(breast_project, "--model", "breast-knn", "nowhere")  # the command as installed
    assert absent.returncode == 2 and absent.stderr.strip() == "error: nowhere: no such file or folder"
    no_models = classify(tmp_path, "--model", "breast-head", str(breast_project / "new"))
    assert no_models.returncode == 2
    assert no_models.stderr.strip() == "error: dvc.yaml: file not found (run from the project root)"
    shutil.copy(PROJECT / "dvc.yaml", tmp_path)
    no_models = classify(tmp_path, "--model", "breast-head", str(breast_project / "new"))
    assert no_models.returncode == 2
    assert no_models.stderr.strip() == (
        "error: models/breast/backbone.json: not found; run `dvc repro extract_vgg_features` (or `dvc pull`) first"
    )


def test_digits_get_the_cnns_own_probabilities(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    arrays = tiny_mnist()
    (tmp_path / "data/local/mnist").mkdir(parents=True)
    np.savez(tmp_path / "data/local/mnist/tiny.npz", **arrays)
    settings = yaml.safe_load((PROJECT / "params.yaml").read_text())["augment_train_mnist"]
    settings.update(data="tiny.npz", validation_size=40, epochs=1, batch_size=16, epoch_fraction=1.0)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"seed": 0, "augment_train_mnist": settings}))
    shutil.copy(PROJECT / "dvc.yaml", tmp_path)
    augment_train_mnist.main(stage_argv("augment_train_mnist"))
    save_images(tmp_path / "digits", arrays["x_test"][:10], "x_test_")
    result = classify(tmp_path, "--model", "mnist", "digits", "--batch-size", "4")
    assert result.returncode == 0, result.stderr
    rows = pd.read_csv(pd.io.common.StringIO(result.stdout))
    assert list(rows.columns) == ["file", "predicted", *(f"p_{d}" for d in range(10))]
    predictions, _ = read_predictions(tmp_path / "predictions/mnist/cnn.csv")
    test = predictions[predictions["evaluation"] == "heldout"].set_index("id")
    expected = test.loc[[f"x_test[{Path(f).stem.split('_')[-1]}]" for f in rows["file"]]]
    digits = [f"p_{d}" for d in range(10)]
    np.testing.assert_allclose(rows[digits].to_numpy(), expected[digits].to_numpy(), atol=2e-5)


def test_heat_maps_lie_over_each_scan_and_leave_the_table_as_it_was(breast_project, monkeypatch):
    with_maps = classify(breast_project, "--model", "breast-head", "new", "--heatmaps", "maps", "-o", "mapped.csv")
    assert with_maps.returncode == 0, with_maps.stderr
    assert "heat maps: Grad-CAM of breast-head's log-odds of malignant over block5, block3\n" in with_maps.stderr
    assert "wrote 12 heat maps to maps" in with_maps.stderr
    assert classify(breast_project, "--model", "breast-head", "new", "-o", "plain.csv").returncode == 0
    assert (breast_project / "mapped.csv").read_bytes() == (breast_project / "plain.csv").read_bytes()
    # Each PNG is the overlay of its own image's map: the maps of the images, in another order, differ.
    monkeypatch.chdir(breast_project)
    gradcam = classifiers.breast_classifier("breast-head", with_heatmaps=True).gradcam
    scans = [np.asarray(Image.open(f"new/test_{i}.png")) for i in range(12)]
    maps = gradcam.maps(np.stack([shared_images.prepare_image(scan, 32) for scan in scans]))
    assert sorted(path.name for path in Path("maps").iterdir()) == sorted(f"test_{i}.png.png" for i in range(12))
    for i, (scan, heat) in enumerate(zip(scans, maps)):
        written = np.asarray(Image.open(f"maps/test_{i}.png.png"))
        assert written.shape == (32, 32, 3)  # the 28 px scan, enlarged to the 32 px map
        np.testing.assert_array_equal(written, heatmaps.overlay(scan, heat))
    assert not np.allclose(maps, maps[::-1])


def test_the_knns_heat_maps_are_the_heads(breast_project):
    result = classify(breast_project, "--model", "breast-knn", "new/test_0.png", "--heatmaps", "knn_maps")
    assert result.returncode == 0, result.stderr
    assert "over block5, block3 (not of breast-knn: no gradient)" in result.stderr
    assert [path.name for path in (breast_project / "knn_maps").iterdir()] == ["test_0.png.png"]


def test_heat_maps_that_cannot_be_made_are_refused_in_one_line(breast_project, tmp_path):
    digits = classify(tmp_path, "--model", "mnist", "--heatmaps", "maps", "anything")  # refused before any file
    assert digits.returncode == 2 and digits.stderr.strip() == (
        "error: --heatmaps: heat maps are made for breast images (the breast head's Grad-CAM), not mnist"
    )
    clone = copy_of(breast_project, tmp_path)
    recipe_path = clone / "models/breast/backbone.json"
    recipe = json.loads(recipe_path.read_text())
    recipe_path.write_text(json.dumps({**recipe, "layer": "fc1"}))
    top = classify(clone, "--model", "breast-head", "new", "--heatmaps", "maps")
    assert top.returncode == 2 and top.stderr.strip() == (
        "error: --heatmaps: the breast models read fc1 features (models/breast/backbone.json), whose Dense layers "
        "mix the positions of block 5's map; the heat maps are made for pooled conv blocks only "
        "(extract_vgg_features.layer avg or max)"
    )
    recipe_path.write_text(json.dumps(recipe))
    (clone / "models/breast/head.keras").unlink()  # a KNN alone
    no_head = classify(clone, "--model", "breast-knn", "new", "--heatmaps", "maps")
    assert no_head.returncode == 2 and no_head.stderr.strip() == (
        "error: --heatmaps: models/breast/head.keras: not found; the heat maps are the Grad-CAM of train_head's "
        "model (the KNN has no gradient): run `dvc repro train_head` (or `dvc pull`) first"
    )
    assert classify(clone, "--model", "breast-knn", "new").returncode == 0  # without maps, the KNN alone does
    assert not (clone / "maps").exists()


PNG_URI = "data:image/png;base64,"
# The attributes through which a page can make its browser fetch something.
URL_ATTRIBUTES = {"src", "srcset", "href", "action", "formaction", "data", "poster", "background"}


class ReportTable(HTMLParser):
    """A report page as read: the rows of its table's body, each a list of cells (a cell's
    text and the attributes of its images), the text outside the table, the attributes
    that could fetch something, every tag, and the body's attributes."""

    def __init__(self, page: str):
        super().__init__()
        self.rows: list[list[dict]] = []
        self.text, self.urls, self.tags, self.body = [], [], set(), {}
        self.in_table = self.in_body = self.in_cell = False
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        self.urls += [(tag, name, value) for name, value in attrs if name in URL_ATTRIBUTES]
        self.in_table |= tag == "table"
        self.in_body |= tag == "tbody"
        self.in_cell |= self.in_body and tag == "td"
        if tag == "body":
            self.body = dict(attrs)
        elif self.in_body and tag == "tr":
            self.rows.append([])
        elif self.in_body and tag == "td":
            self.rows[-1].append({"text": "", "images": []})
        elif self.in_body and tag == "img":
            self.rows[-1][-1]["images"].append(dict(attrs))

    def handle_endtag(self, tag):
        self.in_table &= tag != "table"
        self.in_body &= tag != "tbody"
        self.in_cell &= tag != "td"

    def handle_data(self, data):
        if self.in_cell:
            self.rows[-1][-1]["text"] += data
        elif not self.in_table:
            self.text.append(data)


def png_of(uri: str) -> np.ndarray:
    """The pixels of a page's embedded PNG."""
    assert uri.startswith(PNG_URI)
    with Image.open(io.BytesIO(base64.b64decode(uri.removeprefix(PNG_URI), validate=True))) as image:
        assert image.format == "PNG"
        return np.asarray(image)


def test_the_report_shows_each_scan_beside_its_heat_map_most_suspicious_first(breast_project, monkeypatch):
    folder = breast_project / "report_scans"
    arrays = tiny_breast(n_train=30, n_val=10, n_test=12)
    save_images(folder, arrays["test_images"], "test_")
    odd_name = "a<b>&\"c'.png"  # to be escaped
    noise = np.random.default_rng(1).integers(0, 256, (28, 28, 3), dtype=np.uint8)
    Image.fromarray(noise).save(folder / odd_name)  # unlike the training images
    Image.fromarray(arrays["train_images"][3]).save(folder / "copy.png")  # a training image itself
    (folder / "broken.png").write_bytes(b"\x89PNG and no more")
    pngs = set(breast_project.rglob("*.png"))
    # The KNN (k = 3) gives probabilities in thirds: ties, to be ordered by file name, whatever
    # the order of the command line (here, the names backwards).
    files = sorted((str(path.relative_to(breast_project)) for path in folder.iterdir()), reverse=True)
    result = classify(breast_project, "--model", "breast-knn", *files, "--report", "report.html", "-o", "r.csv")
    assert result.returncode == 1, result.stderr  # the broken file
    assert "wrote the page of 14 images to report.html" in result.stderr
    assert set(breast_project.rglob("*.png")) == pngs  # --report alone writes no heat-map files

    table = pd.read_csv(breast_project / "r.csv", keep_default_na=False)
    expected = table.sort_values(["p_malignant", "file"], ascending=[False, True], kind="stable")
    assert expected["p_malignant"].duplicated().any() and expected["file"].tolist() != table["file"].tolist()
    assert table["unlike_training"].any() and (table["near_copy_of"] != "").any()
    html = (breast_project / "report.html").read_text(encoding="utf-8")
    page = ReportTable(html)
    assert [cells[1]["text"] for cells in page.rows] == expected["file"].tolist()
    for number, (cells, row) in enumerate(zip(page.rows, expected.itertuples()), 1):
        texts = [cell["text"] for cell in cells]
        assert texts[:2] == [str(number), row.file] and texts[4:7] == [
            f"{row.p_malignant:.4f}",
            row.predicted,
            row.called_at_operating_point,
        ]
        flags = [f"unlike the training images (distance {row.nearest_distance:.4f})"] * row.unlike_training
        flags += [f"near-copy of training image {row.near_copy_of} (trained as {row.near_copy_label})"] * bool(
            row.near_copy_of
        )
        assert texts[7] == "".join(flags)

    # Each row's pictures: its scan as read, and the heat map of the head over it.
    monkeypatch.chdir(breast_project)
    gradcam = classifiers.breast_classifier("breast-knn", with_heatmaps=True).gradcam
    scans = {file: shared_images.read_image_file(Path(file)) for file in table["file"]}
    maps = gradcam.maps(np.stack([shared_images.prepare_image(scan, 32) for scan in scans.values()]))
    assert len({heat.tobytes() for heat in maps}) == len(maps)
    heat_of = dict(zip(scans, maps))
    for cells in page.rows:
        file = cells[1]["text"]
        [scan], [heat] = cells[2]["images"], cells[3]["images"]
        np.testing.assert_array_equal(png_of(scan["src"]), scans[file])
        np.testing.assert_array_equal(png_of(heat["src"]), heatmaps.overlay(scans[file], heat_of[file]))

    # Names escaped; nothing to fetch: no script, no style sheet or frame, every URL an embedded PNG.
    assert escape(f"report_scans/{odd_name}") in html and odd_name not in html
    assert {(tag, name) for tag, name, _ in page.urls} == {("img", "src")} and len(page.urls) == 2 * len(table)
    assert all(value.startswith(PNG_URI) for *_, value in page.urls)
    assert re.search(r"https?:", html) is None
    assert not page.tags & {"script", "link", "iframe", "frame", "object", "embed", "base"}

    header = " ".join("".join(page.text).split())
    point = json.loads((breast_project / "models/breast/knn_operating_point.json").read_text())
    assert "A research tool, not a diagnosis." in header
    assert (
        "Classifier: breast-knn. Positive class: malignant. Rows are sorted by the probability of malignant" in header
    )
    assert (
        f"called malignant when its probability of malignant is at least {point['min_positive_probability']:.4f}, "
        f"the cut that caught {point['target_sensitivity']:.0%} of the malignant images" in header
    )
    assert f"unlike the training images, {table['unlike_training'].sum()} of 14" in header
    assert (
        "Grad-CAM of breast-head's log-odds of malignant (not breast-knn's: it has no gradient) over block5, block3"
        in (header)
    )
    assert "could not be read, not on the page: 1 report_scans/broken.png: cannot read image (" in header


def test_the_report_and_the_heat_map_files_show_the_same_maps_made_once(breast_project, monkeypatch):
    made = []
    maps = heatmaps.GradCam.maps
    monkeypatch.setattr(
        heatmaps.GradCam, "maps", lambda gradcam, batch: made.append(len(batch)) or maps(gradcam, batch)
    )
    both = classify(breast_project, "--model", "breast-head", "new", "--report", "both.html", "--heatmaps", "both")
    assert both.returncode == 0, both.stderr
    assert made == [12]  # one backward pass for the page and the files
    alone = classify(breast_project, "--model", "breast-head", "new", "--report", "alone.html")
    assert alone.returncode == 0, alone.stderr
    html = (breast_project / "both.html").read_bytes()
    assert html == (breast_project / "alone.html").read_bytes()  # the same images and models, the same bytes
    page = ReportTable(html.decode("utf-8"))
    table = pd.read_csv(io.StringIO(both.stdout)).set_index("file")
    assert len(page.rows) == len(table) == 12
    for cells in page.rows:
        file = Path(cells[1]["text"])
        written = (breast_project / "both" / f"{file.name}.png").read_bytes()
        assert base64.b64decode(cells[3]["images"][0]["src"].removeprefix(PNG_URI)) == written
        assert cells[6]["text"] == table.loc[str(file), "called_at_operating_point"]


def test_without_an_operating_point_the_report_has_the_argmax_alone(breast_project, tmp_path):
    clone = copy_of(breast_project, tmp_path)
    (clone / "models/breast/head_operating_point.json").write_text(
        json.dumps({"target_sensitivity": None, "call": "the most probable class"})  # as train_head writes it
    )
    result = classify(clone, "--model", "breast-head", "new", "--report", "page.html")
    assert result.returncode == 0, result.stderr
    page = ReportTable((clone / "page.html").read_text(encoding="utf-8"))
    assert "Operating point: none (target_sensitivity null): the call is the most probable class alone." in (
        " ".join("".join(page.text).split())
    )
    assert len(page.rows) == 12 and all(len(cells) == 7 for cells in page.rows)  # no column of calls at a cut
    assert "called at the operating point" not in (clone / "page.html").read_text(encoding="utf-8")


def test_a_report_whose_operating_point_is_for_another_class_is_refused(breast_project, tmp_path):
    clone = copy_of(breast_project, tmp_path)
    point_file = clone / "models/breast/head_operating_point.json"
    point_file.write_text(json.dumps({**json.loads(point_file.read_text()), "positive_class": "normal_or_benign"}))
    stale = classify(
        clone, "--model", "breast-head", "new", "--report", "page.html"
    )  # positive_class.breast: malignant
    assert stale.returncode == 2 and stale.stderr.strip().splitlines()[-1] == (
        "error: --report: breast-head's operating point is for normal_or_benign but the heat maps' positive class "
        "(positive_class.breast) is malignant: rerun `dvc repro`"
    )
    assert not (clone / "page.html").exists()


def test_a_report_of_digits_is_refused_in_one_line(tmp_path):
    digits = classify(tmp_path, "--model", "mnist", "--report", "page.html", "anything")  # refused before any file
    assert digits.returncode == 2 and digits.stderr.strip() == (
        "error: --report: the page is made for breast images (beside the breast head's heat maps), not mnist"
    )
    assert not (tmp_path / "page.html").exists()


def test_a_large_scan_is_shrunk_for_the_page_and_a_small_one_kept():
    large = np.random.default_rng(0).integers(0, 256, (600, 1000), dtype=np.uint8)
    assert png_of(report.data_uri(large)).shape == (192, 320)  # the longest side to LARGEST_SIDE, the shape kept
    small = large[:28, :28]
    np.testing.assert_array_equal(png_of(report.data_uri(small)), small)


# Run in the browser after the page has loaded: marks each image drawn (decoded, with a width
# on the page) or not, and the body with how many images it looked at.
RENDER_CHECK = """<script>
addEventListener("load", () => {
  for (const image of document.images)
    image.dataset.rendered = image.complete && image.naturalWidth > 0 && image.getBoundingClientRect().width > 0;
  document.body.dataset.checked = document.images.length;
});
</script>"""


def rendered_images(chromium: str, page: Path) -> list[list[str]]:
    """For each table row of ``page`` as headless Chromium drew it with the network off, whether
    each of its images rendered ("true" or "false"); a copy of the page carries the check."""
    checked = page.with_name(f"checked_{page.name}")
    checked.write_text(page.read_text(encoding="utf-8").replace("</body>", f"{RENDER_CHECK}</body>"), encoding="utf-8")
    result = dom_offline(chromium, checked)
    assert result.returncode == 0, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if ":CONSOLE" in line and "Uncaught" in line]
    assert not errors, "\n".join(errors)
    drawn = ReportTable(result.stdout)
    rows = [[image.get("data-rendered") for cell in cells for image in cell["images"]] for cells in drawn.rows]
    assert drawn.body.get("data-checked") == str(sum(map(len, rows))), "the check did not run"
    return rows


@pytest.mark.slow
def test_the_report_renders_in_chromium_without_network(breast_project):
    chromium = chromium_or_skip()
    result = classify(breast_project, "--model", "breast-head", "new", "--report", "browser.html")
    assert result.returncode == 0, result.stderr
    page = breast_project / "browser.html"
    assert rendered_images(chromium, page) == [["true", "true"]] * 12  # every row, each with its scan and map
    # The check sees an image that does not render: a copy whose first picture is not a PNG.
    html = page.read_text(encoding="utf-8")
    start = html.index(PNG_URI) + len(PNG_URI)
    broken = breast_project / "broken.html"
    broken.write_text(html[:start] + base64.b64encode(b"not a PNG").decode() + html[html.index('"', start) :])
    assert rendered_images(chromium, broken) == [["false", "true"]] + [["true", "true"]] * 11

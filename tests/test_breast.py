"""The breast-cancer exercise (VGG features, then KNN), without DVC and without a network.

Every test makes its own tiny data; the model tests use random weights and the
pooled layers at 32x32, where VGG is small enough to run in a second.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from stages import evaluate, find_near_copies, fit_knn, train_head
from stages import extract_vgg_features as extract
from stages.commands import check_thresholds, model_files
from stages.shared import backbone as shared_backbone
from stages.shared import breast, breast_data
from stages.shared import images as shared_images
from stages.shared.breast import FeatureSet
from stages.shared.config import ParamsError, StageError
from stages.shared.downloads import DownloadError
from stages.shared.files import save_npz
from stages.shared.predictions import read_predictions
from stages.shared.skops_files import save_skops
from tests.conftest import PROJECT, SHARED_DATA, fail_as_keras_offline, stage_argv, write_decompression_bomb

LOCAL = Path("data/local/breast")  # relative: the main() tests chdir into tmp_path


# --------------------------------------------------------------------------- fixtures
def save_image(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """Two class folders of mixed files: grey PNG, colour JPEG, BMP, TIFF, sizes differing."""
    rng = np.random.default_rng(0)
    root = tmp_path / LOCAL / "lab"
    for name in ("malignant", "benign"):
        for i in range(6):
            grey = rng.integers(0, 256, (30 + i, 40), dtype=np.uint8)
            suffix = (".png", ".jpg", ".bmp", ".tif")[i % 4]
            pixels = np.stack([grey] * 3, axis=-1) if suffix == ".jpg" else grey
            save_image(root / name / ("nested" if i == 5 else "") / f"{i}{suffix}", pixels)
    # What Windows and macOS leave in folders, all skipped: hidden files, Thumbs.db, desktop.ini, __MACOSX/.
    (root / "benign" / ".DS_Store").write_bytes(b"\0\1")
    (root / "benign" / "Thumbs.db").write_bytes(b"\0\1")
    (root / "malignant" / "desktop.ini").write_text("[.ShellClassInfo]\n")
    (root / "malignant" / "__MACOSX").mkdir()
    (root / "malignant" / "__MACOSX" / "._0.png").write_bytes(b"\0\1")
    (root / "__MACOSX").mkdir()
    (root / "desktop.ini").write_text("[.ShellClassInfo]\n")
    return root


def write_breast_npz(path: Path, **replace: np.ndarray) -> Path:
    """MedMNIST's layout at 28x28: 12 train, 4 val, 6 test; labels (N, 1) like MedMNIST's."""
    rng = np.random.default_rng(1)
    arrays = {}
    for split, n in (("train", 12), ("val", 4), ("test", 6)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).astype(np.uint8).reshape(n, 1)
    arrays.update(replace)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{key: value for key, value in arrays.items() if value is not None})
    return path


@pytest.fixture
def breast_npz(tmp_path: Path) -> Path:
    return write_breast_npz(tmp_path / LOCAL / "breast.npz")


@pytest.fixture(scope="session")
def weights_files(tmp_path_factory) -> dict[str, Path]:
    """Weights files saved from no-top VGG16 and VGG19 with random weights, as an
    air-gapped user would save ImageNet ones."""
    import keras

    folder = tmp_path_factory.mktemp("weights")
    files = {}
    for name, architecture in (("vgg16", keras.applications.VGG16), ("vgg19", keras.applications.VGG19)):
        keras.utils.set_random_seed(7)
        model = architecture(weights=None, include_top=False, input_shape=(32, 32, 3))
        files[name] = folder / f"{name}_notop.weights.h5"
        model.save_weights(files[name])
    return files


HEAD_SETTINGS = {
    "features": ["block5"],
    "hidden_units": 16,
    "dropout": 0.2,
    "l2": 0.0001,
    "learning_rate": 0.01,
    "batch_size": 8,
    "max_epochs": 30,
    "patience": 5,
    "class_weight": "none",
    "validation_fraction": 0.25,
    "ensemble_members": 2,
    "target_sensitivity": None,
}


def write_params(folder: Path, data: str, k: int = 3, **extract_overrides) -> None:
    params = {
        "seed": 0,
        "breast_cv_folds": 3,
        "extract_vgg_features": {
            "data": data,
            "backbone": "vgg19",
            "weights": "none",
            "layer": "avg",
            "blocks": [5],
            "image_size": 32,
            "batch_size": 5,
            **extract_overrides,
        },
        "find_near_copies": {"min_correlation": 0.95, "lab_groups": "none"},
        "fit_knn": {
            "features": ["block5"],
            "k": k,
            "metric": "euclidean",
            "weights": "uniform",
            "novelty_percentile": 90,
            "target_sensitivity": None,
        },
        "train_head": HEAD_SETTINGS,
        "positive_class": {"breast": None},
    }
    (folder / "params.yaml").write_text(json.dumps(params))  # JSON is YAML


# --------------------------------------------------------------------------- reading data
def test_npz_layout_is_read_split_by_split(breast_npz):
    images = breast_data.load_npz_images(breast_npz)
    assert len(images) == 22 and images.class_names == ("malignant", "normal_or_benign")
    assert images.labels.dtype == np.int64 and images.labels.shape == (22,)
    assert [int((images.split == s).sum()) for s in ("train", "val", "test")] == [12, 4, 6]
    assert images.source[0] == "train_images[0]" and images.source[-1] == "test_images[5]"
    assert images.read(12).shape == (28, 28) and images.read(12).dtype == np.uint8


def test_npz_without_val_and_test_is_all_train(tmp_path):
    path = write_breast_npz(
        tmp_path / "train_only.npz", val_images=None, val_labels=None, test_images=None, test_labels=None
    )
    assert set(breast_data.load_npz_images(path).split) == {"train"}


@pytest.mark.parametrize(
    ("replace", "message"),
    [
        ({"test_labels": None}, "missing key(s) test_labels"),
        ({"train_images": np.zeros((12, 28, 28), np.float32)}, "train_images must be uint8 (N, H, W) or"),
        ({"val_images": np.zeros((4, 28, 28, 2), np.uint8)}, "val_images must be uint8"),
        ({"val_labels": np.zeros((4, 2), np.uint8)}, "val_labels must be integers of shape (N,) or (N, 1)"),
        ({"test_labels": np.zeros(5, np.uint8)}, "test_labels has 5 labels for 6 test_images"),
        ({"train_labels": np.full(12, 2, np.uint8)}, "train_labels must be 0 (malignant) or 1"),
        (
            {
                "train_labels": np.zeros(12, np.uint8),
                "val_labels": np.zeros(4, np.uint8),
                "test_labels": np.zeros(6, np.uint8),
            },
            "only one class (label 0)",
        ),
    ],
)
def test_bad_npz_is_named_in_one_line(tmp_path, replace, message):
    path = write_breast_npz(tmp_path / "bad.npz", **replace)
    with pytest.raises(StageError) as error:
        breast_data.load_npz_images(path)
    assert str(error.value).startswith(f"{path}: ") and message in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("content", ["half", "npy"])
def test_npz_that_is_not_one(tmp_path, breast_npz, content):
    path = tmp_path / "broken.npz"
    if content == "half":
        path.write_bytes(breast_npz.read_bytes()[:1000])
    else:
        np.save(tmp_path / "one.npy", np.zeros(3))
        path.write_bytes((tmp_path / "one.npy").read_bytes())
    with pytest.raises(StageError, match="broken.npz: not a readable .npz file"):
        breast_data.load_npz_images(path)


def test_folder_classes_sources_and_reading(image_folder):
    images = breast_data.load_image_folder(image_folder)
    assert images.class_names == ("benign", "malignant")  # sorted folder names
    assert images.labels.tolist() == [0] * 6 + [1] * 6 and set(images.split) == {"train"}
    assert "benign/nested/5.jpg" in images.source.tolist() and "malignant/0.png" in images.source.tolist()
    index = images.source.tolist().index("malignant/1.jpg")
    assert images.read(index).shape == (31, 40, 3)


def test_sixteen_bit_grey_keeps_its_full_range(tmp_path):
    pixels = np.array([[0, 32896, 65535]], dtype=np.uint16)
    path = save_image(tmp_path / "deep.png", pixels)
    assert shared_images.read_image_file(path).tolist() == [[0, 128, 255]]


def image_in_mode(mode: str, pixels: list) -> Image.Image:
    """An image of one row, ``pixels`` given in ``mode``'s own terms (palette indices for
    P and PA, whose palette is (10, 20, 30), (200, 100, 50))."""
    image = Image.new(mode, (len(pixels), 1))
    if mode in ("P", "PA"):
        image.putpalette([10, 20, 30, 200, 100, 50])
    image.putdata(pixels)
    return image


# Each mode Pillow opens image files in, a file format that keeps it, pixels in the mode's
# own terms, and the 8-bit reading worked out by hand.
MODE_READINGS = [
    ("1", "png", [0, 1], [[0, 255]]),
    ("L", "png", [0, 77, 255], [[0, 77, 255]]),
    ("LA", "png", [(10, 0), (200, 128)], [[10, 200]]),  # the alpha dropped
    ("P", "png", [1, 0], [[[200, 100, 50], [10, 20, 30]]]),
    ("PA", "tif", [(1, 0), (0, 128)], [[[200, 100, 50], [10, 20, 30]]]),
    ("RGB", "png", [(1, 2, 3), (250, 0, 9)], [[[1, 2, 3], [250, 0, 9]]]),
    ("RGBA", "png", [(1, 2, 3, 0), (250, 0, 9, 255)], [[[1, 2, 3], [250, 0, 9]]]),
    # R = (255 - C) (255 - K) / 255, and so on: the usual formula, with no colour profile
    ("CMYK", "tif", [(0, 255, 255, 0), (100, 50, 0, 20)], [[[255, 0, 0], [143, 189, 235]]]),
    # JFIF's: R = Y + 1.402 (Cr - 128), G = Y - 0.344 (Cb - 128) - 0.714 (Cr - 128), B = Y + 1.772 (Cb - 128)
    ("YCbCr", "tif", [(128, 128, 128), (150, 100, 170)], [[[128, 128, 128], [209, 130, 100]]]),
    ("I;16", "png", [0, 32896, 65535], [[0, 128, 255]]),  # the full range of 16 bits
    ("I;16B", "tif", [0, 32896, 65535], [[0, 128, 255]]),
    # 32-bit integer and float: the image's own range; 70005 / 200005 * 255 = 89.3, 0.75 / 2 * 255 = 95.6
    ("I", "tif", [-5, 70_000, 200_000], [[0, 89, 255]]),
    ("F", "tif", [-0.5, 0.25, 1.5], [[0, 96, 255]]),
]


@pytest.mark.parametrize(("mode", "suffix", "pixels", "reading"), MODE_READINGS, ids=[m[0] for m in MODE_READINGS])
def test_each_image_mode_is_read_right(tmp_path, mode, suffix, pixels, reading):
    path = tmp_path / f"image.{suffix}"
    image_in_mode(mode, pixels).save(path)
    with Image.open(path) as saved:
        assert saved.mode == mode  # what the reading below is of
    read = shared_images.read_image_file(path)
    assert read.dtype == np.uint8
    # YCbCr's conversion works in fixed point, a unit off JFIF's formulas at most
    np.testing.assert_allclose(read, np.array(reading), atol=1 if mode == "YCbCr" else 0)


@pytest.mark.parametrize(
    ("mode", "pixels", "message"),
    [
        ("LAB", [(50, 0, 0)], "image mode LAB is not read here (save it as 8- or 16-bit grey, or RGB)"),
        ("F", [0.0, float("nan")], "image mode F with NaN or infinite pixels; cannot scale it to 8 bits"),
        ("I", [7, 7], "image mode I of one value (7) throughout; no range to scale to 8 bits"),
    ],
)
def test_an_image_that_cannot_be_read_right_is_named_and_refused(tmp_path, mode, pixels, message):
    path = tmp_path / "image.tif"
    image_in_mode(mode, pixels).save(path)
    with pytest.raises(StageError) as error:
        shared_images.read_image_file(path)
    assert str(error.value) == f"{path}: {message}"


def test_a_decompression_bomb_is_refused_from_its_header(tmp_path):
    bomb = write_decompression_bomb(tmp_path / "bomb.png")
    for header_only in (True, False):
        with pytest.raises(StageError, match=rf"^{re.escape(str(bomb))}: refused as a possible decompression bomb \("):
            shared_images.read_image_file(bomb, header_only)


def test_a_folder_with_an_image_refused_stops_before_the_network(image_folder):
    write_decompression_bomb(image_folder / "benign/huge.png")
    with pytest.raises(StageError, match=r"lab/benign/huge\.png: refused as a possible decompression bomb"):
        breast_data.load_image_folder(image_folder)
    (image_folder / "benign/huge.png").unlink()
    image_in_mode("LAB", [(50, 0, 0)]).save(image_folder / "malignant/lab.tif")
    with pytest.raises(StageError, match=r"lab/malignant/lab\.tif: image mode LAB is not read here"):
        breast_data.load_image_folder(image_folder)


def spoil_folder(root: Path, how: str) -> Path:
    """Break the image folder in one way; return the path that the error must name."""
    if how in ("truncated png", "truncated jpeg"):
        culprit = root / ("malignant/0.png" if how == "truncated png" else "benign/1.jpg")
        culprit.write_bytes(culprit.read_bytes()[: culprit.stat().st_size // 2])
    elif how == "not an image":
        culprit = root / "benign/3.tif"
        culprit.write_text("not a tiff")
    elif how == "unsupported file":
        culprit = root / "benign/notes.txt"
        culprit.write_text("hi")
    elif how == "empty class":
        culprit = root / "normal"
        culprit.mkdir()
    elif how == "file at the top":
        culprit = root / "README.md"
        culprit.write_text("hi")
    else:  # one class
        shutil.rmtree(root / "benign")
        culprit = root
    return culprit


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("truncated png", "cannot read image (image file is truncated"),
        ("truncated jpeg", "cannot read image"),
        ("not an image", "cannot read image"),
        ("unsupported file", "unsupported file type (expected .png, .jpg"),
        ("empty class", "empty class folder"),
        ("file at the top", "a file outside the class folders"),
        ("one class", "only 1 class folder(s) (malignant)"),
    ],
)
def test_bad_folder_is_named_in_one_line(image_folder, how, message):
    culprit = spoil_folder(image_folder, how)
    with pytest.raises(StageError) as error:  # a truncated body passes the header check, fails to decode
        list(extract.iterate_batches(breast_data.load_image_folder(image_folder), 32, batch_size=4))
    assert str(error.value).startswith(f"{culprit}: ")
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("missing.npz", "data/local/breast/missing.npz: extract_vgg_features.data not found"),
        ("list.csv", "data/local/breast/list.csv: unsupported data file"),
    ],
)
def test_data_that_is_not_there_or_not_tracked(tmp_path, monkeypatch, data, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / LOCAL).mkdir(parents=True)
    (tmp_path / LOCAL / "list.csv").write_text("a,b\n")
    with pytest.raises(StageError, match=f"^{message}"):
        breast_data.open_data(data)


def offline(*args, **kwargs):
    fail_as_keras_offline()


def test_failed_downloads_name_the_key_to_set(monkeypatch):
    import keras

    monkeypatch.setattr(keras.utils, "get_file", offline)
    with pytest.raises(StageError) as error:
        breast_data.open_data("medmnist")
    assert str(error.value) == (
        f"could not download BreastMNIST from {breast_data.MEDMNIST_RELEASES['medmnist'][1]} (URL fetch failure on "
        "https://example/x: "
        "None -- [Errno -2] Name or service not known); put a .npz or an image folder in data/local/breast/ "
        "and set extract_vgg_features.data to its name"
    )
    monkeypatch.setattr(keras.applications, "VGG16", offline)
    with pytest.raises(
        StageError,
        match=r"^could not download the ImageNet weights of vgg16 \(URL fetch "
        r"failure .*\); put a weights file of vgg16 in data/local/weights/ and set "
        r"extract_vgg_features.weights to its name$",
    ):
        shared_backbone.build_extractor("vgg16", "imagenet", "avg", 32)


def test_offline_the_stage_names_both_downloads_at_once(tmp_path, monkeypatch):
    import keras

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(keras.utils, "get_file", offline)
    monkeypatch.setattr(keras.applications, "VGG16", offline)
    write_params(tmp_path, "medmnist", backbone="vgg16", weights="imagenet")
    with pytest.raises(
        DownloadError,
        match=r"^could not download BreastMNIST .*; put .* and set "
        r"extract_vgg_features\.data to its name; and could not download the ImageNet weights of "
        r"vgg16 .*; put a weights file of vgg16 in data/local/weights/ and set "
        r"extract_vgg_features\.weights to its name$",
    ):
        extract.main(stage_argv("extract_vgg_features"))
    assert not (tmp_path / "data/breast").exists()


def test_images_become_rgb_batches_of_the_chosen_size(breast_npz, image_folder):
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    prepared = shared_images.prepare_image(grey, 8)
    assert prepared.shape == (8, 8, 3) and prepared.dtype == np.float32
    assert np.array_equal(prepared[..., 0], prepared[..., 2])  # grey repeated to three channels
    for images in (breast_data.load_npz_images(breast_npz), breast_data.load_image_folder(image_folder)):
        sizes = [batch.shape for batch in extract.iterate_batches(images, 32, batch_size=5)]
        expected = [5] * (len(images) // 5) + ([len(images) % 5] if len(images) % 5 else [])
        assert [size[0] for size in sizes] == expected and {size[1:] for size in sizes} == {(32, 32, 3)}


# --------------------------------------------------------------------------- the network
@pytest.mark.parametrize(("backbone", "layer"), [("vgg19", "avg"), ("vgg16", "max")])
def test_pooled_features_stream_through_in_batches(breast_npz, backbone, layer, capsys):
    images = breast_data.load_npz_images(breast_npz)
    model = shared_backbone.build_extractor(backbone, "none", layer, 32)
    forward = extract.make_forward_pass(model, shared_backbone.preprocess_function(backbone))
    features, _ = extract.extract_features(forward, 512, images, 32, batch_size=4, progress_every=2)
    assert features.shape == (22, 512) and features.dtype == np.float32 and np.isfinite(features).all()
    progress = capsys.readouterr().out.splitlines()
    assert len(progress) == 3 and progress[0].startswith("extract_vgg_features: 8/22 images")
    assert progress[-1].startswith("extract_vgg_features: 22/22 images")


def test_weights_file_is_loaded_by_path(weights_files):
    import keras

    keras.utils.set_random_seed(7)
    original = keras.applications.VGG19(weights=None, include_top=False, input_shape=(32, 32, 3), pooling="avg")
    loaded = shared_backbone.build_extractor("vgg19", str(weights_files["vgg19"]), "avg", 32)
    batch = np.random.default_rng(0).uniform(-100, 100, (2, 32, 32, 3)).astype(np.float32)
    assert np.allclose(original.predict_on_batch(batch), loaded.predict_on_batch(batch), atol=1e-5)


@pytest.mark.parametrize(
    ("weights", "layer", "message"),
    [
        ("vgg16", "avg", "does not fit backbone vgg19 with layer avg"),
        ("vgg19", "fc1", "does not fit backbone vgg19 with layer fc1; expected vgg19 weights"),
        ("missing", "avg", "extract_vgg_features.weights file not found"),
    ],
)
def test_weights_file_that_does_not_fit_is_named(weights_files, tmp_path, weights, layer, message):
    path = weights_files.get(weights, tmp_path / "missing.weights.h5")
    with pytest.raises(StageError) as error:
        shared_backbone.build_extractor("vgg19", str(path), layer, 224 if layer == "fc1" else 32)
    assert str(error.value).startswith(f"{path}: {message}") and "\n" not in str(error.value)


def test_extract_stage_writes_features_for_a_folder(tmp_path, monkeypatch, image_folder):
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path, "lab")
    extract.main(stage_argv("extract_vgg_features"))
    with np.load(tmp_path / "data/breast/features.npz") as saved:
        assert saved["features"].shape == (12, 512) and saved["features"].dtype == np.float32
        assert saved["labels"].tolist() == [0] * 6 + [1] * 6
        assert set(saved["split"]) == {"train"} and saved["source"][0] == "benign/0.png"
        assert saved["class_names"].tolist() == ["benign", "malignant"]
    facts = json.loads((tmp_path / "runs/extract_vgg_features.json").read_text())
    assert facts["n_images"] == 12 and facts["n_train"] == 12 and facts["n_test"] == 0
    assert facts["n_per_class"] == {"benign": 6, "malignant": 6}
    assert facts["feature_dim"] == 512 and facts["images_per_second"] > 0


def test_extract_stage_keeps_the_npz_splits(tmp_path, monkeypatch, breast_npz):
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path, "breast.npz", layer="max", batch_size=8)
    extract.main(stage_argv("extract_vgg_features"))
    with np.load(tmp_path / "data/breast/features.npz") as saved:
        assert saved["split"].tolist() == ["train"] * 12 + ["val"] * 4 + ["test"] * 6
        assert saved["source"][-1] == "test_images[5]" and saved["labels"].dtype == np.int64
    facts = json.loads((tmp_path / "runs/extract_vgg_features.json").read_text())
    assert (facts["n_train"], facts["n_val"], facts["n_test"]) == (12, 4, 6)
    assert sum(facts["n_per_class"].values()) == 22


def test_extract_stage_loads_a_weights_file_from_data_local(tmp_path, monkeypatch, breast_npz, weights_files):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data/local/weights").mkdir(parents=True)
    shutil.copy(weights_files["vgg19"], tmp_path / "data/local/weights/vgg19_notop.weights.h5")
    write_params(tmp_path, "breast.npz", weights="vgg19_notop.weights.h5")
    extract.main(stage_argv("extract_vgg_features"))
    with np.load(tmp_path / "data/breast/features.npz") as saved:
        assert saved["features"].shape == (22, 512)
    # classify-images rebuilds the backbone from the file's path, wherever it runs from.
    recipe = json.loads((tmp_path / "models/breast/backbone.json").read_text())
    assert recipe["weights"] == "data/local/weights/vgg19_notop.weights.h5"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"layer": "fc2", "image_size": 32}, "extract_vgg_features.image_size: must be 224 for layer fc2, got 32"),
        (
            {"weights": "vgg19.weights.h5"},
            "extract_vgg_features.weights: data/local/weights/vgg19.weights.h5 not "
            "found: put the file there, or set it to imagenet or none; ",
        ),
        (
            {"weights": "data/local/weights/vgg19.weights.h5"},
            "extract_vgg_features.weights: must be imagenet or none, or the name of a file inside data/local/weights/, "
            "not a path: set it to vgg19.weights.h5, the name of the file inside data/local/weights/ ",
        ),
        ({"backbone": "resnet50"}, "extract_vgg_features.backbone: must be 'vgg19' or 'vgg16', got 'resnet50'"),
        (
            {"data": "elsewhere/breast.npz"},
            "extract_vgg_features.data: must be medmnist or medmnist_224, or the name of a file or folder inside "
            "data/local/breast/, not a path: set it to breast.npz, the name of the file or folder inside "
            "data/local/breast/ ",
        ),
        (
            {"data": "missing.npz"},
            "extract_vgg_features.data: data/local/breast/missing.npz not found: put the "
            "file or folder there, or set it to medmnist or medmnist_224; ",
        ),
    ],
)
def test_extract_stage_checks_params_before_reading_data(tmp_path, monkeypatch, overrides, message):
    monkeypatch.chdir(tmp_path)
    # A download by default: a bad key must stop the stage before it is tried.
    write_params(tmp_path, overrides.pop("data", "medmnist"), **overrides)
    with pytest.raises(ParamsError, match=f"^params.yaml: {message}"):
        extract.main(stage_argv("extract_vgg_features"))


# --------------------------------------------------------------------------- KNN
CLUSTER_SEPARATION = 0.6


def clustered_features(n_per_class: int = 20, with_test: bool = True, seed: int = 0) -> FeatureSet:
    """Two overlapping Gaussian clusters in 16-d that point different ways (what survives
    L2 normalisation), split train/val/test in 3:1:1 per class."""
    rng = np.random.default_rng(seed)
    labels = np.repeat([0, 1], n_per_class)
    centres = np.array([[1.0] * 8 + [0.0] * 8, [0.0] * 8 + [1.0] * 8])
    features = rng.normal(0, 1, (2 * n_per_class, 16)) + CLUSTER_SEPARATION * centres[labels]
    per_class = np.resize(["train", "train", "train", "val", "test" if with_test else "train"], n_per_class)
    return FeatureSet(
        features=features.astype(np.float32),
        labels=labels,
        split=np.concatenate([per_class, per_class]),
        source=np.array([f"train_images[{i}]" for i in range(2 * n_per_class)]),
        class_names=("malignant", "normal_or_benign"),
        blocks=("block5",),
        groups=np.arange(2 * n_per_class),  # no near-copies
    )


def write_groups(features: Path, groups: np.ndarray | None = None, path: Path = Path("data/breast/near_copies.csv")):
    """A groups file as find_near_copies writes it for the images of ``features``: each image
    in a group of its own unless ``groups`` says otherwise."""
    source = np.load(features)["source"]
    groups = np.arange(len(source)) if groups is None else groups
    pd.DataFrame({"source": source, "group": groups}).to_csv(path, index=False)
    return path


def save_feature_set(data: FeatureSet, path: str = "data/breast/features.npz") -> None:
    """``data`` as extract_vgg_features writes it: its features are one block, block5."""
    save_npz(
        path,
        features=data.features,
        feature_blocks=np.array(["block5"]),
        block_widths=np.array([data.features.shape[1]]),
        labels=data.labels,
        split=data.split,
        source=data.source,
        class_names=np.array(data.class_names),
    )
    write_groups(Path(path), data.groups, Path(path).with_name("near_copies.csv"))


SETTINGS = fit_knn.KnnSettings(
    features=["block5"], k=5, metric="euclidean", weights="uniform", novelty_percentile=90, target_sensitivity=None
)


def knn_predictions(data, settings, seed=0, n_folds=4):
    model, frames, _ = fit_knn.fit_and_predict(data, settings, n_folds, seed)
    return model, pd.concat(frames, ignore_index=True)


def test_knn_predictions_keep_held_out_cv_and_resubstitution_apart():
    data = clustered_features()
    model, predictions = knn_predictions(data, SETTINGS)
    assert list(predictions.columns) == [
        "id",
        "evaluation",
        "protocol",
        "fold",
        "actual",
        "predicted",
        "p_malignant",
        "p_normal_or_benign",
    ]
    counts = predictions["evaluation"].value_counts().to_dict()
    assert counts == {"heldout": 8, "heldout_unseen": 8, "cv": 32, "resubstitution": 40}
    held = predictions[predictions["evaluation"] == "heldout"]
    assert set(held["protocol"]) == {"test split"} and held["fold"].isna().all()
    assert set(held["id"]) == set(data.source[data.split == "test"])
    cv = predictions[predictions["evaluation"] == "cv"]
    assert sorted(cv["fold"].unique()) == [1, 2, 3, 4] and set(cv["id"]) == set(data.source[data.split != "test"])
    assert model.named_steps["knn"].n_samples_fit_ == 32  # fitted on train+val, never on test
    # k = 5 uniform neighbours: probabilities in fifths, and the decision is the majority.
    p = predictions["p_normal_or_benign"].to_numpy()
    assert np.allclose(p * 5, np.round(p * 5))
    assert (predictions["predicted"] == np.where(p > 0.5, "normal_or_benign", "malignant")).all()


def accuracy(rows) -> float:
    return float((rows["actual"] == rows["predicted"]).mean())


def test_held_out_figures_are_below_memorisation():
    _, predictions = knn_predictions(clustered_features(), SETTINGS)
    by = {name: accuracy(rows) for name, rows in predictions.groupby("evaluation")}
    assert 0.6 < by["cv"] < by["resubstitution"]


def test_resubstitution_with_distance_weights_is_perfect_memory():
    _, predictions = knn_predictions(clustered_features(), SETTINGS.model_copy(update={"weights": "distance"}))
    by = {name: accuracy(rows) for name, rows in predictions.groupby("evaluation")}
    assert by["resubstitution"] == 1.0 and by["cv"] < 1.0


def test_without_a_test_split_cross_validation_is_the_held_out_figure():
    _, predictions = knn_predictions(clustered_features(with_test=False), SETTINGS)
    assert predictions["evaluation"].value_counts().to_dict() == {
        "heldout": 40,
        "heldout_unseen": 40,
        "resubstitution": 40,
    }
    held = predictions[predictions["evaluation"] == "heldout"]
    assert set(held["protocol"]) == {"4-fold grouped stratified cross-validation"} and held["fold"].notna().all()


def test_pipeline_normalises_each_vector():
    model = fit_knn.make_knn_pipeline(1).fit(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([0, 1]))
    # [10, 1] is far from both points, but it points the way of [1, 0].
    assert model.predict(np.array([[10.0, 1.0]])).tolist() == [0]


def test_same_seed_same_folds():
    data = clustered_features()
    first = knn_predictions(data, SETTINGS, seed=3)[1]
    pd.testing.assert_frame_equal(knn_predictions(data, SETTINGS, seed=3)[1], first)
    assert not knn_predictions(data, SETTINGS, seed=4)[1]["fold"].equals(first["fold"])


@pytest.mark.parametrize(
    ("k", "n_folds", "message"),
    [
        (25, 4, "params.yaml: fit_knn.k: 25 neighbours is more than the 24 images"),
        (5, 17, "params.yaml: breast_cv_folds: 17 folds need 17 groups of near-copies holding every class"),
    ],
)
def test_k_or_folds_too_large_for_the_data(k, n_folds, message):
    with pytest.raises(ParamsError, match=f"^{message}"):
        fit_knn.fit_and_predict(clustered_features(), SETTINGS.model_copy(update={"k": k}), n_folds, seed=0)


def test_fit_knn_stage_on_data_with_a_test_split(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path, "medmnist")
    data = clustered_features()
    save_feature_set(data)
    fit_knn.main(stage_argv("fit_knn"))
    predictions, class_names = read_predictions(tmp_path / "predictions/breast/knn.csv")
    assert class_names == ("malignant", "normal_or_benign") and len(predictions) == 8 + 8 + 32 + 40
    inputs = json.loads((tmp_path / "models/breast/knn_inputs.json").read_text())
    assert inputs == {"features": ["block5"], "n_features": 16}

    model = model_files.load_knn(tmp_path / "models/breast/knn.skops")
    assert model.named_steps["knn"].n_samples_fit_ == 32 and model.predict(data.features[:2]).shape == (2,)
    saved = (tmp_path / "models/breast/knn.skops").read_bytes()
    fit_knn.main(stage_argv("fit_knn"))  # same params, same bytes: no time or object address in the file
    assert (tmp_path / "models/breast/knn.skops").read_bytes() == saved
    # The novelty threshold: the 90th percentile of each fitted image's distance to its nearest other one.
    unit = data.features[data.split != "test"] / np.linalg.norm(data.features[data.split != "test"], axis=1)[:, None]
    distances = np.linalg.norm(unit[:, None] - unit[None], axis=-1) + np.diag(np.full(len(unit), np.inf))
    novelty = json.loads((tmp_path / "models/breast/novelty.json").read_text())
    assert novelty["training_images"] == 32 and novelty["percentile"] == 90
    assert novelty["threshold"] == pytest.approx(np.percentile(distances.min(axis=1), 90), rel=1e-5)


def test_a_tampered_knn_file_is_refused_unloaded(tmp_path):
    import zipfile

    data = clustered_features()
    model, _, _ = fit_knn.fit_and_predict(data, SETTINGS, 4, seed=0)
    save_skops(model, tmp_path / "knn.skops")
    with zipfile.ZipFile(tmp_path / "knn.skops") as saved:
        entries = {name: saved.read(name) for name in saved.namelist()}
    # What an attacker with write access to the remote would do: a node that builds a process.
    schema = entries["schema.json"].decode()
    entries["schema.json"] = (
        schema.replace('"__class__": "Normalizer"', '"__class__": "Popen"')
        .replace('"__module__": "sklearn.preprocessing._data"', '"__module__": "subprocess"')
        .encode()
    )
    assert entries["schema.json"] != schema.encode()
    with zipfile.ZipFile(tmp_path / "tampered.skops", "w") as tampered:
        for name, content in entries.items():
            tampered.writestr(name, content)
    with pytest.raises(StageError) as refused:
        model_files.load_knn(tmp_path / "tampered.skops")
    message = str(refused.value)
    assert message.startswith(f"{tmp_path / 'tampered.skops'}: refused: it holds types that fit_knn never writes")
    assert "subprocess.Popen" in message and "\n" not in message
    (tmp_path / "broken.skops").write_bytes((tmp_path / "knn.skops").read_bytes()[:100])
    with pytest.raises(StageError, match="broken.skops: not a readable skops model"):
        model_files.load_knn(tmp_path / "broken.skops")


def test_both_stages_and_evaluate_on_a_folder(tmp_path, monkeypatch, image_folder):
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path, "lab")
    extract.main(stage_argv("extract_vgg_features"))
    find_near_copies.main(stage_argv("find_near_copies"))
    fit_knn.main(stage_argv("fit_knn"))
    train_head.main(stage_argv("train_head"))
    evaluate.main(stage_argv("evaluate", "breast"))
    metrics = json.loads((tmp_path / "metrics/breast/knn.json").read_text())
    assert list(metrics) == ["heldout", "heldout_unseen", "resubstitution"]
    assert metrics["heldout_unseen"] == metrics["heldout"]  # grouped folds: every held-out image is unseen
    for classifier in ("knn", "head"):
        heldout = json.loads((tmp_path / f"metrics/breast/{classifier}.json").read_text())["heldout"]
        assert heldout["protocol"] == "3-fold grouped stratified cross-validation" and heldout["n"] == 12
    confusion = (tmp_path / "plots/breast/evaluation/confusion/knn.csv").read_text().splitlines()
    assert len(confusion) == 1 + 12 and set(",".join(confusion[1:]).split(",")) <= {"benign", "malignant"}
    # The project's breast bounds find their metrics in a folder's layout too (from cross-validation).
    _, table = check_thresholds.check(PROJECT / "thresholds.yaml", tmp_path, only=["metrics/breast"])
    assert "MISSING" not in table and "metrics/breast/knn.json:heldout." in table


def test_fit_knn_without_features_says_what_to_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path, "medmnist")
    with pytest.raises(StageError, match="features.npz: not found; run `dvc repro extract_vgg_features`"):
        fit_knn.main(stage_argv("fit_knn"))


# --------------------------------------------------------------------------- real data, when present
BREASTMNIST_28 = SHARED_DATA / "breastmnist_28.npz"


@pytest.mark.skipif(not BREASTMNIST_28.exists(), reason=f"{BREASTMNIST_28} is absent")
def test_breastmnist_28_is_read_as_medmnist_lays_it_out():
    images = breast_data.load_npz_images(BREASTMNIST_28)
    assert [int((images.split == s).sum()) for s in ("train", "val", "test")] == [546, 78, 156]
    assert np.bincount(images.labels).tolist()[0] < np.bincount(images.labels).tolist()[1]
    assert shared_images.prepare_image(images.read(0), 224).shape == (224, 224, 3)


# --------------------------------------------------------------------------- pooled blocks
def test_several_blocks_are_pooled_and_concatenated():
    import keras

    batch = np.random.default_rng(0).uniform(-100, 100, (2, 32, 32, 3)).astype(np.float32)
    one = shared_backbone.load_backbone(
        {"backbone": "vgg16", "weights": "none", "layer": "avg", "blocks": [5], "image_size": 32}
    )
    three = shared_backbone.load_backbone(
        {"backbone": "vgg16", "weights": "none", "layer": "avg", "blocks": [3, 4, 5], "image_size": 32}
    )
    assert one.output_shape == (None, 512) and three.output_shape == (None, 256 + 512 + 512)
    # Block 5 alone is Keras's own pooling="avg"; with [3, 4, 5] it is the last 512 columns.
    keras.utils.set_random_seed(shared_backbone.RANDOM_WEIGHTS_SEED)
    stock = keras.applications.VGG16(weights=None, include_top=False, input_shape=(32, 32, 3), pooling="avg")
    np.testing.assert_allclose(one.predict_on_batch(batch), stock.predict_on_batch(batch), rtol=1e-5)
    np.testing.assert_allclose(three.predict_on_batch(batch)[:, -512:], one.predict_on_batch(batch), rtol=1e-5)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"layer": "fc1", "image_size": 224, "blocks": [4, 5]}, "blocks: must be [5] for layer fc1"),
        ({"blocks": [5, 5]}, "blocks: a block twice in [5, 5]"),
        ({"blocks": [6]}, "blocks[0]: must be less than or equal to 5, got 6"),
    ],
)
def test_bad_blocks_are_named(tmp_path, monkeypatch, overrides, message):
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path, "medmnist", **overrides)  # a bad key stops the stage before the download
    with pytest.raises(ParamsError, match=re.escape(f"params.yaml: extract_vgg_features.{message}")):
        extract.main(stage_argv("extract_vgg_features"))


def test_the_backbone_recipe_rebuilds_the_same_features(tmp_path, monkeypatch, breast_npz):
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path, "breast.npz", blocks=[4, 5])
    extract.main(stage_argv("extract_vgg_features"))
    recipe = json.loads((tmp_path / "models/breast/backbone.json").read_text())
    rebuilt = shared_backbone.load_backbone(recipe)
    assert recipe == {
        "backbone": "vgg19",
        "weights": "none",
        "layer": "avg",
        "blocks": [4, 5],
        "image_size": 32,
        "class_names": ["malignant", "normal_or_benign"],
        "feature_blocks": ["block4", "block5"],
        "block_widths": [512, 512],
        "weights_sha256": shared_backbone.weights_digest(rebuilt),
    }
    images = breast_data.load_npz_images(breast_npz)
    batch = next(extract.iterate_batches(images, 32, batch_size=4))
    again = rebuilt.predict_on_batch(shared_backbone.preprocess_function("vgg19")(batch))
    with np.load(tmp_path / "data/breast/features.npz") as saved:
        np.testing.assert_allclose(again, saved["features"][:4], rtol=1e-5, atol=1e-6)
        assert saved["feature_blocks"].tolist() == ["block4", "block5"] and saved["block_widths"].tolist() == [512, 512]
    # Each classifier takes its own blocks out of the one extraction, in the order it names them.
    whole = np.load(tmp_path / "data/breast/features.npz")["features"]
    groups = write_groups(Path("data/breast/features.npz"))
    block5 = breast.load_features(Path("data/breast/features.npz"), ["block5"], "fit_knn.features", groups)
    both = breast.load_features(Path("data/breast/features.npz"), ["block5", "block4"], "train_head.features", groups)
    np.testing.assert_array_equal(block5.features, whole[:, 512:])
    np.testing.assert_array_equal(both.features, np.concatenate([whole[:, 512:], whole[:, :512]], axis=1))
    assert block5.blocks == ("block5",)
    with pytest.raises(ParamsError) as error:
        breast.load_features(Path("data/breast/features.npz"), ["block3"], "fit_knn.features", groups)
    assert str(error.value) == (
        "params.yaml: fit_knn.features: block3 is not among the blocks of "
        "data/breast/features.npz (block4, block5); choose among those, or add it to "
        "extract_vgg_features.blocks"
    )


def test_the_weights_digest_tells_weights_apart(weights_files):
    same = [
        shared_backbone.weights_digest(shared_backbone.build_extractor("vgg16", str(weights_files["vgg16"]), "avg", 32))
        for _ in range(2)
    ]
    other_size = shared_backbone.weights_digest(
        shared_backbone.build_extractor("vgg16", str(weights_files["vgg16"]), "avg", 64)
    )
    random = shared_backbone.weights_digest(
        shared_backbone.load_backbone(
            {"backbone": "vgg16", "weights": "none", "layer": "avg", "blocks": [5], "image_size": 32}
        )
    )
    assert same[0] == same[1] == other_size != random  # the image size changes no weight


# --------------------------------------------------------------------------- the trained head
HEAD = train_head.HeadSettings(**HEAD_SETTINGS)


def head_predictions(data, settings=HEAD, seed=0, n_folds=4):
    return pd.concat(protocol_frames(data, settings, seed, n_folds), ignore_index=True)


def protocol_frames(data, settings, seed, n_folds):
    return train_head.fit_and_predict(data, settings, n_folds, seed)[2]


def test_head_is_scored_on_the_knns_test_split_and_folds():
    data = clustered_features(n_per_class=40)
    head = head_predictions(data)
    knn = knn_predictions(data, SETTINGS)[1]

    def folds(frame, evaluation):
        return frame[frame["evaluation"] == evaluation].set_index("id")["fold"].sort_index()

    for evaluation in ("heldout", "cv"):
        pd.testing.assert_series_equal(folds(head, evaluation), folds(knn, evaluation))
    # Well above chance on what it did not train on.
    cv = head[head["evaluation"] == "cv"]
    assert (cv["actual"] == cv["predicted"]).mean() > 0.65


def test_head_stops_on_the_validation_split_or_a_share_of_the_training_images():
    data = clustered_features(n_per_class=40)
    rest = np.flatnonzero(data.split != "test")
    fit, stop = train_head.stopping_split(data, rest, 0.25, seed=0)
    assert set(data.split[stop]) == {"val"} and set(data.split[fit]) == {"train"}
    no_val = clustered_features(n_per_class=40, with_test=False)
    everything = np.arange(80)
    no_val = dataclasses.replace(no_val, split=np.full(80, "train"))
    fit, stop = train_head.stopping_split(no_val, everything, 0.25, seed=0)
    assert len(stop) == 20 and np.bincount(no_val.labels[stop]).tolist() == [10, 10]
    assert sorted([*fit, *stop]) == everything.tolist()


def test_each_member_stops_on_its_own_fold():
    data = clustered_features(n_per_class=40)
    rest = np.flatnonzero(data.split != "test")
    splits = train_head.member_splits(data, rest, HEAD.model_copy(update={"ensemble_members": 4}), seed=0)
    assert len(splits) == 4
    assert sorted(np.concatenate([stop for _, stop in splits])) == rest.tolist()  # the folds cover the images once
    for train, stop in splits:
        assert sorted([*train, *stop]) == rest.tolist() and np.bincount(data.labels[stop]).tolist() == [8, 8]
    one = train_head.member_splits(data, rest, HEAD.model_copy(update={"ensemble_members": 1}), seed=0)
    assert [set(data.split[part]) for part in one[0]] == [{"train"}, {"val"}]
    with pytest.raises(ParamsError, match="^params.yaml: train_head.ensemble_members: 33 folds need 33"):
        train_head.member_splits(data, rest, HEAD.model_copy(update={"ensemble_members": 33}), seed=0)


def test_head_training_repeats_and_keeps_its_best_epoch():
    data = clustered_features(n_per_class=40)
    rest = np.flatnonzero(data.split != "test")
    split = train_head.stopping_split(data, rest, 0.25, seed=1)
    trainer = train_head.HeadTrainer(16, data.class_names, HEAD, seed=1)
    head = trainer.train(data, *split)
    trainer.train(data, rest[: len(rest) // 2], split[1])  # another training in between changes nothing
    again = trainer.train(data, *split)
    fresh = train_head.HeadTrainer(16, data.class_names, HEAD, seed=1).train(data, *split)
    for other in (again, fresh):
        assert all(np.array_equal(a, b) for a, b in zip(head.weights, other.weights))
    best = int(np.argmax(head.history["val_roc_auc"]))
    assert len(head.history["loss"]) <= best + 1 + HEAD.patience
    assert head.history["val_roc_auc"][-1] < head.history["val_roc_auc"][best]  # so the best and the last differ
    kept = train_head.roc_auc(data.labels[head.stop], trainer.probabilities([head], data.features[head.stop]))
    assert kept == pytest.approx(head.history["val_roc_auc"][best])  # the best epoch's weights, not the last
    # The exported model standardises by itself, as the training did.
    exported = trainer.export([head]).predict(data.features[head.stop], verbose=0)
    np.testing.assert_allclose(exported, trainer.probabilities([head], data.features[head.stop]), atol=1e-6)


def test_the_ensemble_averages_its_members():
    data = clustered_features(n_per_class=40)
    rest = np.flatnonzero(data.split != "test")
    trainer = train_head.HeadTrainer(16, data.class_names, HEAD, seed=0)
    heads = [
        trainer.train(data, *split)
        for split in train_head.member_splits(data, rest, HEAD.model_copy(update={"ensemble_members": 3}), 0)
    ]
    test = data.features[data.split == "test"]
    each = [trainer.probabilities([head], test) for head in heads]
    assert not np.allclose(each[0], each[1])  # members trained on other images differ
    np.testing.assert_allclose(trainer.probabilities(heads, test), np.mean(each, axis=0))
    exported = trainer.export(heads)
    assert [layer.name for layer in exported.layers if layer.name.startswith("head_")] == ["head_1", "head_2", "head_3"]
    np.testing.assert_allclose(exported.predict(test, verbose=0), np.mean(each, axis=0), atol=1e-6)


@pytest.mark.parametrize("hidden_units", [0, 16])
def test_head_shapes_and_class_weights(hidden_units):
    data = clustered_features(n_per_class=20)
    settings = HEAD.model_copy(update={"hidden_units": hidden_units, "class_weight": "balanced", "max_epochs": 3})
    trainer = train_head.HeadTrainer(16, data.class_names, settings, seed=0)
    model = trainer.export(
        [trainer.train(data, *train_head.stopping_split(data, np.flatnonzero(data.split != "test"), 0.25, seed=0))]
    )
    dense = [layer.name for layer in trainer.model.layers if layer.__class__.__name__ == "Dense"]
    assert dense == (["hidden", "class_probabilities"] if hidden_units else ["class_probabilities"])
    assert model.input_shape == (None, 16) and model.output_shape == (None, 2)


def test_train_head_stage_writes_its_outputs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path, "medmnist")
    data = clustered_features(n_per_class=30)
    save_feature_set(data)
    train_head.main(stage_argv("train_head"))
    predictions, _ = read_predictions(tmp_path / "predictions/breast/head.csv")
    counts = predictions["evaluation"].value_counts().to_dict()
    # Each of the 2 members stopped on its own half of the 48 non-test images.
    assert counts == {"heldout": 12, "heldout_unseen": 12, "cv": 48, "validation": 48}
    assert set(predictions.loc[predictions["evaluation"] == "validation", "id"]) == set(
        data.source[data.split != "test"]
    )
    assert json.loads((tmp_path / "models/breast/head_inputs.json").read_text()) == {
        "features": ["block5"],
        "n_features": 16,
    }
    histories = sorted((tmp_path / "plots/breast/head_history").iterdir())
    assert [path.name for path in histories] == ["member_1.csv", "member_2.csv"]
    assert histories[0].read_text().splitlines()[0] == "epoch,accuracy,loss,val_roc_auc"
    facts = json.loads((tmp_path / "runs/train_head.json").read_text())
    assert len(facts["trainings"]) == 2 + 3 * 2 and facts["seconds"] > 0  # the kept ensemble, one per fold
    import keras

    model = keras.models.load_model(tmp_path / "models/breast/head.keras")
    heldout = predictions[predictions["evaluation"] == "heldout"]
    test = data.split == "test"
    np.testing.assert_allclose(
        model.predict(data.features[test], verbose=0)[:, 1], heldout["p_normal_or_benign"].to_numpy(), atol=1e-6
    )


# --------------------------------------------------------------------------- the original's recipe
def readme_recipe_overrides() -> dict[str, object]:
    """The ``-S key=value`` pairs of the README's command for the original's recipe, values
    parsed as YAML (as DVC parses them)."""
    import shlex

    import yaml

    command = next(
        line.strip()
        for line in (PROJECT / "README.md").read_text().splitlines()
        if line.strip().startswith("dvc exp run") and "layer=fc1" in line
    )
    words = shlex.split(command)
    pairs = [words[i + 1] for i, word in enumerate(words) if word == "-S"]
    return {key: yaml.safe_load(value) for key, value in (pair.split("=", 1) for pair in pairs)}


@pytest.mark.slow
def test_the_originals_recipe_runs_as_the_readme_prints_it(tmp_path, monkeypatch, breast_npz):
    """VGG19 up to fc1 on 224x224 images, both classifiers on fc1: the README's overrides on
    tiny data, with random weights instead of the ImageNet download."""
    overrides = readme_recipe_overrides()
    assert overrides == {
        "extract_vgg_features.data": "medmnist_224",
        "extract_vgg_features.backbone": "vgg19",
        "extract_vgg_features.layer": "fc1",
        "extract_vgg_features.blocks": [5],
        "fit_knn.features": ["fc1"],
        "train_head.features": ["fc1"],
    }
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path, "breast.npz", image_size=224)
    params = json.loads((tmp_path / "params.yaml").read_text())
    for key, value in overrides.items():
        if key != "extract_vgg_features.data":  # a download: the tiny local copy stands in
            section, name = key.split(".")
            params[section][name] = value
    (tmp_path / "params.yaml").write_text(json.dumps(params))
    extract.main(stage_argv("extract_vgg_features"))
    find_near_copies.main(stage_argv("find_near_copies"))
    fit_knn.main(stage_argv("fit_knn"))
    train_head.main(stage_argv("train_head"))
    evaluate.main(stage_argv("evaluate", "breast"))
    with np.load(tmp_path / "data/breast/features.npz") as saved:
        assert saved["feature_blocks"].tolist() == ["fc1"] and saved["features"].shape == (22, 4096)
    for classifier in ("knn", "head"):
        assert json.loads((tmp_path / f"models/breast/{classifier}_inputs.json").read_text())["features"] == ["fc1"]
        heldout = json.loads((tmp_path / f"metrics/breast/{classifier}.json").read_text())["heldout"]
        assert heldout["positive_class"] == "malignant" and heldout["n"] == 6

"""The toy datasets and MLPs, without DVC."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stages import common, generate_toy, train_toy
from stages.toy import DATASETS


@pytest.mark.parametrize("name", DATASETS)
def test_dataset_shapes_classes_and_seed(name):
    x, y = generate_toy.generate(name, n_samples=101, noise=0.5, seed=3)
    assert x.shape == (101, 2) and x.dtype == np.float32
    assert y.shape == (101,) and set(np.unique(y)) == {0, 1}
    again_x, again_y = generate_toy.generate(name, n_samples=101, noise=0.5, seed=3)
    assert np.array_equal(x, again_x) and np.array_equal(y, again_y)
    other_x, _ = generate_toy.generate(name, n_samples=101, noise=0.5, seed=4)
    assert not np.array_equal(x, other_x)


def test_layouts_are_the_seeds():
    rng = np.random.default_rng(0)
    x, y = generate_toy.blob_in_ring(400, 0.1, rng)
    radius = np.linalg.norm(x, axis=1)
    assert radius[y == 0].max() < 1.0 and radius[y == 1].min() > 2.0
    x, y = generate_toy.four_blobs_xor(400, 0.1, rng)
    # XOR: the class is whether the two coordinates have different signs.
    assert np.array_equal(y, (np.sign(x[:, 0]) != np.sign(x[:, 1])).astype(int))


@pytest.mark.parametrize(("layers", "expected"), [([3, 5], 41), ([5, 15, 10], 287)])
def test_mlp_parameter_counts_match_the_seed(layers, expected):
    assert train_toy.make_model(layers).count_params() == expected


def write_params(path, **train_overrides):
    settings = {"hidden_layers": [5, 15, 10], "activation": "relu", "learning_rate": 0.01,
                "batch_size": 32, "epochs": 5, "holdout_fraction": 0.25, **train_overrides}
    params = {"seed": 0, "generate_toy": {"blop_circle": {"n_samples": 120, "noise": 0.3}},
              "train_toy": {"blop_circle": settings}}
    path.write_text(json.dumps(params))  # JSON is YAML


def test_stages_write_their_outputs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path / "params.yaml")
    generate_toy.main(["blop_circle"])
    train_toy.main(["blop_circle"])
    metrics = json.loads((tmp_path / "results/toy/blop_circle.json").read_text())
    assert metrics["params"] == 287 and metrics["n_train"] == 90 and metrics["n_heldout"] == 30
    assert 0.0 <= metrics["heldout_accuracy"] <= 1.0
    history = (tmp_path / "plots/toy/blop_circle/history.csv").read_text().splitlines()
    assert history[0] == "epoch,accuracy,loss,val_accuracy,val_loss" and len(history) == 6
    for png in ("data.png", "boundary.png"):
        assert (tmp_path / "plots/toy/blop_circle" / png).read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "models/toy/blop_circle.keras").stat().st_size > 0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"epochs": -1}, "train_toy.blop_circle.epochs: must be an integer >= 1, got -1"),
        ({"hidden_layers": []}, "train_toy.blop_circle.hidden_layers: must be a list of at least 1 item(s)"),
        ({"activation": "swish"}, "train_toy.blop_circle.activation: must be one of relu, tanh"),
        ({"holdout_fraction": 0.9}, "train_toy.blop_circle.holdout_fraction: must be a number >= 0.05 and <= 0.5"),
        ({"dropout": 0.1}, "train_toy.blop_circle.dropout: unknown key"),
    ],
)
def test_bad_params_stop_before_any_work(tmp_path, monkeypatch, overrides, message):
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path / "params.yaml", **overrides)
    with pytest.raises(common.ParamsError) as error:
        train_toy.main(["blop_circle"])
    assert str(error.value).startswith(f"params.yaml: {message}")
    assert not (tmp_path / "results").exists()


def test_unknown_dataset_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("seed: 0\ngenerate_toy: {3blop: {n_samples: 10, noise: 1}}\n")
    with pytest.raises(common.ParamsError, match=r"generate_toy\.3blop: unknown name"):
        generate_toy.main(["2blop"])
    with pytest.raises(common.StageError, match="usage: python -m stages.generate_toy NAME"):
        generate_toy.main(["3blop"])


def test_missing_input_names_the_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path / "params.yaml")
    with pytest.raises(common.StageError, match=r"data/toy/blop_circle\.npz: not found"):
        train_toy.main(["blop_circle"])

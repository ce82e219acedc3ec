"""The toy datasets and MLPs, without DVC."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stages import generate_toy, train_toy
from stages.shared.config import ParamsError, StageError
from stages.shared.predictions import read_predictions
from tests.conftest import project_params, stage_argv, stage_paths


@pytest.mark.parametrize("layout", generate_toy.LAYOUTS)
def test_dataset_shapes_classes_and_seed(layout):
    x, y = generate_toy.generate(layout, n_samples=101, noise=0.5, seed=3)
    assert x.shape == (101, 2) and x.dtype == np.float32
    assert y.shape == (101,) and set(np.unique(y)) == {0, 1}
    again_x, again_y = generate_toy.generate(layout, n_samples=101, noise=0.5, seed=3)
    assert np.array_equal(x, again_x) and np.array_equal(y, again_y)
    other_x, _ = generate_toy.generate(layout, n_samples=101, noise=0.5, seed=4)
    assert not np.array_equal(x, other_x)


def test_the_originals_three_datasets_are_in_params():
    params = project_params()
    layouts = {name: settings["layout"] for name, settings in params["generate_toy"].items()}
    assert layouts == {"two_blops": "blob_pair", "blop_circle": "blob_in_ring", "four_blops": "xor_blobs"}
    assert list(params["train_toy"]) == list(layouts)  # every dataset is trained


def test_layouts_are_the_originals():
    rng = np.random.default_rng(0)
    x, y = generate_toy.blob_in_ring(400, 0.1, rng)
    radius = np.linalg.norm(x, axis=1)
    assert radius[y == 0].max() < 1.0 and radius[y == 1].min() > 2.0
    x, y = generate_toy.xor_blobs(400, 0.1, rng)
    # XOR: the class is whether the two coordinates have different signs.
    assert np.array_equal(y, (np.sign(x[:, 0]) != np.sign(x[:, 1])).astype(int))


@pytest.mark.parametrize(("layers", "expected"), [([3, 5], 41), ([5, 15, 10], 287)])
def test_mlp_parameter_counts_match_the_original(layers, expected):
    assert train_toy.make_model(layers).count_params() == expected


def write_params(path, **train_overrides):
    settings = {
        "hidden_layers": [5, 15, 10],
        "activation": "relu",
        "learning_rate": 0.01,
        "batch_size": 32,
        "epochs": 5,
        "holdout_fraction": 0.25,
        **train_overrides,
    }
    params = {
        "seed": 0,
        "generate_toy": {"blop_circle": {"layout": "blob_in_ring", "n_samples": 120, "noise": 0.3}},
        "train_toy": {"blop_circle": settings},
    }
    path.write_text(json.dumps(params))  # JSON is YAML


def test_stages_write_their_outputs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path / "params.yaml")
    generate_toy.main(stage_argv("generate_toy", "blop_circle"))
    train_toy.main(stage_argv("train_toy", "blop_circle"))
    outputs = {**stage_paths("generate_toy", "blop_circle"), **stage_paths("train_toy", "blop_circle")}
    predictions, class_names = read_predictions(outputs["predictions"])
    assert class_names == ("class_0", "class_1") and len(predictions) == 30  # the held-out quarter
    assert set(predictions["evaluation"]) == {"heldout"} and predictions["id"].nunique() == 30
    probabilities = predictions[["p_class_0", "p_class_1"]].to_numpy()
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-6)
    assert (predictions["predicted"] == np.where(probabilities[:, 1] > 0.5, "class_1", "class_0")).all()
    facts = json.loads((tmp_path / "runs/train_toy@blop_circle.json").read_text())
    assert facts["params"] == 287 and facts["seconds"] > 0 and "tensorflow" in facts["versions"]
    history = outputs["history"].read_text().splitlines()
    assert history[0] == "epoch,accuracy,loss,val_accuracy,val_loss" and len(history) == 6
    for png in ("scatter", "boundary"):
        assert outputs[png].read_bytes()[:4] == b"\x89PNG"
    assert outputs["model"].stat().st_size > 0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"epochs": -1}, "train_toy.blop_circle.epochs: must be greater than or equal to 1, got -1"),
        ({"hidden_layers": []}, "train_toy.blop_circle.hidden_layers: must hold at least 1 item(s), got []"),
        ({"activation": "swish"}, "train_toy.blop_circle.activation: must be 'relu', 'tanh', 'sigmoid', 'elu' or"),
        (
            {"holdout_fraction": 0.9},
            "train_toy.blop_circle.holdout_fraction: must be less than or equal to 0.5, got 0.9",
        ),
        ({"dropout": 0.1}, "train_toy.blop_circle.dropout: unknown key"),
    ],
)
def test_bad_params_stop_before_any_work(tmp_path, monkeypatch, overrides, message):
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path / "params.yaml", **overrides)
    with pytest.raises(ParamsError) as error:
        train_toy.main(stage_argv("train_toy", "blop_circle"))
    assert str(error.value).startswith(f"params.yaml: {message}")
    assert not (tmp_path / "predictions").exists() and not (tmp_path / "models").exists()


def test_dataset_names_and_layouts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(
        "seed: 0\ngenerate_toy: {3blop: {layout: xor_blobs, n_samples: 10, noise: 1}}\n"
    )
    with pytest.raises(ParamsError, match=r"generate_toy\.3blop: a name must start with a letter"):
        generate_toy.main(stage_argv("generate_toy", "3blop"))
    (tmp_path / "params.yaml").write_text("seed: 0\ngenerate_toy: {b3: {layout: spiral, n_samples: 10, noise: 1}}\n")
    with pytest.raises(
        ParamsError, match=r"generate_toy\.b3\.layout: must be 'blob_pair', 'blob_in_ring' or 'xor_blobs'"
    ):
        generate_toy.main(stage_argv("generate_toy", "b3"))
    (tmp_path / "params.yaml").write_text("seed: 0\ngenerate_toy: {b3: {layout: xor_blobs, n_samples: 10, noise: 1}}\n")
    with pytest.raises(SystemExit) as usage:  # argparse: usage and the choices on stderr, exit status 2
        generate_toy.main(stage_argv("generate_toy", "b4"))
    assert usage.value.code == 2
    generate_toy.main(stage_argv("generate_toy", "b3"))  # any identifier names a dataset
    assert (tmp_path / "data/toy/b3.npz").is_file()


def test_missing_input_names_the_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path / "params.yaml")
    with pytest.raises(StageError, match=r"data/toy/blop_circle\.npz: not found"):
        train_toy.main(stage_argv("train_toy", "blop_circle"))

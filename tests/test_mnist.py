"""The augmented MNIST stage on a tiny synthetic MNIST-shaped file, without DVC."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from stages import augment_train_mnist as mnist
from stages.shared import mnist_digits, resume
from stages.shared.config import ParamsError, StageError
from stages.shared.predictions import read_predictions
from stages.shared.runner import write_json
from tests.conftest import (
    PROJECT,
    fail_as_keras_offline,
    project_env,
    stage_argv,
    tiny_mnist,
    tool_env,
    two_cpu_devices_script,
)

LOCAL_NAME = "tiny.npz"  # augment_train_mnist.data: the file's name inside data/local/mnist/
LOCAL_FILE = f"data/local/mnist/{LOCAL_NAME}"
# How far the held-out accuracy of a two-device run may fall from a one-device run's on
# the tiny data's 40 test digits (1.0 and 0.9 on a 2-core CPU; chance is 0.1).
TWO_DEVICE_ACCURACY_GAP = 0.2


def small_settings(**overrides) -> dict:
    with open(Path(__file__).resolve().parents[1] / "params.yaml") as f:
        settings = yaml.safe_load(f)["augment_train_mnist"]
    settings.update(data=LOCAL_NAME, validation_size=40, epochs=3, batch_size=16, epoch_fraction=1.0)
    settings.update(overrides)
    return settings


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data/local/mnist").mkdir(parents=True)
    np.savez(tmp_path / LOCAL_FILE, **tiny_mnist())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"seed": 7, "augment_train_mnist": small_settings()}))
    return tmp_path


def test_model_is_the_originals():
    model = mnist.make_model()
    assert model.count_params() == 727_530
    assert sum(int(np.prod(weight.shape)) for weight in model.trainable_weights) == 725_610
    assert model.input_shape == (None, 28, 28, 1) and model.output_shape == (None, 10)


def test_augmentation_keeps_shape_and_changes_images():
    import tensorflow as tf

    images = mnist_digits.mnist_model_input(tiny_mnist(10, 0)["x_train"])
    augment = mnist.make_augmentation(20, 0.1, 0.2)
    augmented = augment(images, seed=tf.constant([1, 0]))
    assert augmented.shape == (10, 28, 28, 1) and augmented.dtype == tf.float32
    assert float(tf.reduce_max(tf.abs(augmented - images))) > 0.1
    assert 0.0 <= float(tf.reduce_min(augmented)) and float(tf.reduce_max(augmented)) <= 1.0
    # Stateless: the seed alone decides the transforms.
    np.testing.assert_array_equal(augment(images, seed=tf.constant([1, 0])), augmented)
    assert not np.array_equal(augment(images, seed=tf.constant([1, 1])), augmented)
    assert mnist.make_augmentation(0, 0, 0) is None


def bright_spot(row: int, col: int):
    """A batch of 64 black images with one white 2x2 spot whose top-left pixel is (row, col)."""
    images = np.zeros((64, 28, 28, 1), np.float32)
    images[:, row : row + 2, col : col + 2] = 1.0
    return images


def spot_centres(images) -> np.ndarray:
    """(row, col) of each image's centre of brightness."""
    images = np.asarray(images)[..., 0]
    rows, cols = np.mgrid[:28, :28]
    mass = images.sum(axis=(1, 2))
    return np.stack([(images * rows).sum(axis=(1, 2)) / mass, (images * cols).sum(axis=(1, 2)) / mass], axis=1)


@pytest.mark.parametrize("rotation, zoom", [(45, 0), (0, 0.3), (45, 0.3)])
def test_rotation_and_zoom_turn_about_the_centre(rotation, zoom):
    import tensorflow as tf

    augment = mnist.make_augmentation(rotation, 0, zoom)
    centre = augment(bright_spot(13, 13), seed=tf.constant([3, 0]))
    np.testing.assert_allclose(spot_centres(centre), 13.5, atol=0.05)  # the spot at the centre stays put
    # A spot 8 pixels right of the centre turns by up to 45 degrees, and moves away from
    # or towards the centre by the zoom (the layer samples the input at scale * distance).
    moved = spot_centres(augment(bright_spot(13, 21), seed=tf.constant([3, 0]))) - 13.5
    distance = np.hypot(moved[:, 0], moved[:, 1])
    assert np.all(distance > 8 / (1 + zoom) - 0.3) and np.all(distance < 8 / (1 - zoom) + 0.3)
    angle = np.degrees(np.abs(np.arctan2(moved[:, 0], moved[:, 1])))
    assert np.all(angle <= rotation + 1)
    assert rotation == 0 or angle.max() > rotation / 2  # the angles are spread, not all near 0


def test_shift_moves_by_at_most_the_fraction():
    import tensorflow as tf

    shifted = spot_centres(mnist.make_augmentation(0, 0.1, 0)(bright_spot(13, 13), seed=tf.constant([5, 0])))
    offsets = shifted - 13.5
    assert np.all(np.abs(offsets) <= 2.8 + 0.05)  # 0.1 of 28 pixels
    assert np.abs(offsets).max() > 1.5 and offsets.min() < 0 < offsets.max()  # both ways, not just jitter


@pytest.mark.parametrize(
    "levers, history_columns",
    [
        ({}, "epoch,accuracy,loss,val_accuracy,val_loss"),
        # The averaged weights live in the optimizer's state, which the checkpoint must keep.
        (
            {"label_smoothing": 0.1, "weight_averaging": 0.9},
            "epoch,accuracy,loss,val_accuracy,val_loss,val_averaged_accuracy",
        ),
    ],
    ids=["original", "smoothing-and-averaging"],
)
def test_one_short_run_writes_every_output_and_a_killed_run_resumes_to_its_weights(
    workdir, monkeypatch, levers, history_columns
):
    import keras

    params = yaml.safe_load((workdir / "params.yaml").read_text())
    params["augment_train_mnist"].update(levers)
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))
    mnist.main(stage_argv("augment_train_mnist"))
    predictions, class_names = read_predictions(workdir / "predictions/mnist/cnn.csv")
    assert class_names == tuple("0123456789")
    by_evaluation = predictions.groupby("evaluation")["id"].agg(list)
    assert len(by_evaluation["validation"]) == 40 and all(i.startswith("x_train[") for i in by_evaluation["validation"])
    assert by_evaluation["heldout"] == [f"x_test[{i}]" for i in range(40)]
    assert set(predictions.loc[predictions["evaluation"] == "heldout", "protocol"]) == {"test set"}
    facts = json.loads((workdir / "runs/augment_train_mnist.json").read_text())
    assert 1 <= facts["best_epoch"] <= 3 and facts["device"].startswith("CPU") and facts["params_total"] == 727_530
    assert facts["params_trainable"] == 725_610
    history = (workdir / "plots/mnist/history.csv").read_text().splitlines()
    assert history[0] == history_columns and len(history) == 4
    assert (workdir / "models/mnist/model.keras").is_file()
    assert not (workdir / "checkpoints/mnist").exists()  # cleared once the run is complete

    # Same params, same bytes (on this machine): kill a second run right after epoch 2 was
    # checkpointed, start it again, and it ends as the uninterrupted one did.
    uninterrupted = (workdir / "predictions/mnist/cnn.csv").read_bytes()
    uninterrupted_history = (workdir / "plots/mnist/history.csv").read_text()
    weights = [w.copy() for w in keras.models.load_model(workdir / "models/mnist/model.keras").get_weights()]

    real_save = mnist.Checkpoint.save

    def save_then_die(self, model, best_model, state):
        real_save(self, model, best_model, state)
        if state["epochs_done"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(mnist.Checkpoint, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        mnist.main(stage_argv("augment_train_mnist"))
    assert json.loads((workdir / "checkpoints/mnist/state.json").read_text())["epochs_done"] == 2
    monkeypatch.setattr(mnist.Checkpoint, "save", real_save)
    mnist.main(stage_argv("augment_train_mnist"))
    assert (workdir / "predictions/mnist/cnn.csv").read_bytes() == uninterrupted
    # The kept weights may be an epoch's from before the kill; the history shows the epoch
    # trained after the resume too.
    assert (workdir / "plots/mnist/history.csv").read_text() == uninterrupted_history
    resumed_weights = keras.models.load_model(workdir / "models/mnist/model.keras").get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(weights, resumed_weights))


def training_line(log: str) -> str:
    """What the stage's log says it trains on, but the devices."""
    return re.search(r"^training on [^(]*\([^)]*\): (.*)$", log, flags=re.M).group(1)


@pytest.mark.slow  # second tier: child processes of TensorFlow
def test_training_mirrored_over_two_devices(workdir, capsys):
    # The MirroredStrategy path a machine with several GPUs takes, on two logical CPUs,
    # against a run of the same params on one device. Batch norm normalises each device's
    # half of a batch by itself, so the weights differ; the outputs' form, the batches
    # and the images seen are the same, and the accuracy is close.
    import keras

    mnist.main(stage_argv("augment_train_mnist"))
    one_device = {
        "log": capsys.readouterr().out,
        "predictions": read_predictions(workdir / "predictions/mnist/cnn.csv")[0],
        "history": pd.read_csv(workdir / "plots/mnist/history.csv"),
        "model": keras.models.load_model(workdir / "models/mnist/model.keras"),
    }
    command = [sys.executable, "-c", two_cpu_devices_script("augment_train_mnist"), *stage_argv("augment_train_mnist")]
    result = subprocess.run(command, cwd=workdir, env=project_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    facts = json.loads((workdir / "runs/augment_train_mnist.json").read_text())
    assert facts["device"].startswith("CPU:0, CPU:1") and 1 <= facts["best_epoch"] <= 3
    # The same global batch (16) and steps per epoch as on one device; MirroredStrategy gives each half.
    assert training_line(result.stdout) == training_line(one_device["log"])
    assert "7 steps of 16 per epoch, 3 epochs" in training_line(result.stdout)
    predictions = read_predictions(workdir / "predictions/mnist/cnn.csv")[0]
    history = pd.read_csv(workdir / "plots/mnist/history.csv")
    model = keras.models.load_model(workdir / "models/mnist/model.keras")
    same_rows = ["id", "evaluation", "protocol", "fold", "actual"]
    assert list(predictions.columns) == list(one_device["predictions"].columns)
    assert predictions[same_rows].equals(one_device["predictions"][same_rows])
    assert list(history.columns) == list(one_device["history"].columns) and len(history) == 3
    assert [w.shape for w in model.get_weights()] == [w.shape for w in one_device["model"].get_weights()]

    def heldout_accuracy(frame):
        heldout = frame[frame["evaluation"] == "heldout"]
        return (heldout["predicted"] == heldout["actual"]).mean()

    one, two = heldout_accuracy(one_device["predictions"]), heldout_accuracy(predictions)
    assert min(one, two) >= 0.75 and abs(one - two) <= TWO_DEVICE_ACCURACY_GAP, (one, two)


@pytest.mark.slow  # second tier: a child process of TensorFlow
def test_weight_averaging_and_label_smoothing_over_two_devices(workdir):
    # On several GPUs the weights are mirrored variables: swapping the average in and out
    # of them at each epoch's end must work there too, and the model kept must be the
    # average of the epoch where the average scored best on validation, not the weights
    # trained on. Momentum 0.8 keeps the average far enough behind them on the tiny data
    # that the two score apart at that epoch.
    params = yaml.safe_load((workdir / "params.yaml").read_text())
    params["augment_train_mnist"].update(label_smoothing=0.1, weight_averaging=0.8)
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))
    command = [sys.executable, "-c", two_cpu_devices_script("augment_train_mnist"), *stage_argv("augment_train_mnist")]
    result = subprocess.run(command, cwd=workdir, env=project_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    facts = json.loads((workdir / "runs/augment_train_mnist.json").read_text())
    assert facts["device"].startswith("CPU:0, CPU:1")
    history = pd.read_csv(workdir / "plots/mnist/history.csv")
    assert len(history) == 3
    best = history["val_averaged_accuracy"].idxmax()  # the first epoch of the highest
    assert facts["best_epoch"] == history["epoch"][best]
    averaged, own = history["val_averaged_accuracy"][best], history["val_accuracy"][best]
    assert averaged != own, "the average and the weights trained on score alike: nothing tells them apart"
    predictions = read_predictions(workdir / "predictions/mnist/cnn.csv")[0]
    validation = predictions[predictions["evaluation"] == "validation"]
    assert (validation["predicted"] == validation["actual"]).mean() == averaged


MIRRORED_SWAP_SCRIPT = """
import numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from stages.augment_train_mnist import averaged_weights_in_place
with tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]).scope():
    model = keras.Sequential([keras.Input(shape=(3,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.Adam(0.1, use_ema=True, ema_momentum=0.5), loss="mse")
rng = np.random.default_rng(0)
for _ in range(4):
    model.train_on_batch(rng.normal(size=(8, 3)), rng.normal(size=(8, 2)))
own = [w.copy() for w in model.get_weights()]
averages = [v.numpy() for v in model.optimizer._model_variables_moving_average]
assert not any(np.array_equal(a, b) for a, b in zip(own, averages))
with averaged_weights_in_place(model):
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), averages))
    # every replica's copy holds the average, not only the first
    for variable, average in zip(model.trainable_variables, averages):
        for copy in variable.value.values:
            assert np.array_equal(copy.numpy(), average)
assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), own))
for variable, value in zip(model.trainable_variables, own):
    for copy in variable.value.values:
        assert np.array_equal(copy.numpy(), value)
print("swapped on", len(variable.value.values), "replicas")
"""


def test_averaged_weights_swap_on_every_replica_of_mirrored_variables():
    # A child process, to split the CPU into two devices before TensorFlow starts (7 s).
    result = subprocess.run(
        [sys.executable, "-c", MIRRORED_SWAP_SCRIPT],
        env=project_env(),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "swapped on 2 replicas" in result.stdout


@pytest.mark.slow  # second tier: XLA compiles the model, half a minute on 2 cores
def test_mixed_precision_and_xla_options_run(workdir, capsys):
    arrays = mnist.load_mnist(LOCAL_NAME)
    settings = mnist.MnistTraining(
        **small_settings(epochs=1, mixed_precision=True, jit_compile=True, deterministic=False)
    )
    x, y = arrays["x_train"], arrays["y_train"]
    try:
        model, history, summary = mnist.train(x[40:], y[40:], x[:40], y[:40], settings, seed=0)
        assert "XLA on, mixed precision on, op determinism off" in capsys.readouterr().out
        assert model.layers[1].compute_dtype == "float16"
        assert model.output.dtype == "float32"  # the softmax stays in float32
        assert len(history["val_accuracy"]) == 1 and summary["best_epoch"] == 1
    finally:
        import keras

        keras.mixed_precision.set_global_policy("float32")


def test_a_checkpoint_from_other_params_is_not_resumed(workdir, capsys):
    folder = workdir / "checkpoints/mnist"
    mnist.Checkpoint(folder, mnist.run_fingerprint({"seed": 2}, {}, devices=1))
    write_json(folder / "state.json", {"epochs_done": 2})
    (folder / "last-2.keras").write_bytes(b"a model of other params")
    checkpoint = mnist.Checkpoint(folder, mnist.run_fingerprint({"seed": 1}, {}, devices=1))
    assert checkpoint.load() is None
    assert "starting afresh" in capsys.readouterr().out
    assert sorted(path.name for path in folder.iterdir()) == ["key.json"]  # nothing of the other run is left


def checkpoint_opened(monkeypatch, devices: int = 1) -> mnist.Checkpoint:
    """The checkpoint that the stage opens on ``devices`` devices, stopped before training."""
    opened = []

    def stop(*args):
        opened.append(args[-1])
        raise KeyboardInterrupt

    monkeypatch.setattr(mnist, "device_names", lambda: [f"/device:CPU:{i}" for i in range(devices)])
    monkeypatch.setattr(mnist, "train", stop)
    with pytest.raises(KeyboardInterrupt):
        mnist.main(stage_argv("augment_train_mnist"))
    return opened[0]


def test_a_checkpoint_from_another_number_of_devices_is_not_resumed(workdir, monkeypatch, capsys):
    write_json(checkpoint_opened(monkeypatch, 1).folder / "state.json", {"epochs_done": 2})
    assert checkpoint_opened(monkeypatch, 1).load() == {"epochs_done": 2}  # the same devices resume it
    assert checkpoint_opened(monkeypatch, 2).load() is None
    assert "checkpoints/mnist is from a run with other devices: starting afresh" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("module", "old", "new"),
    [
        ("stages/augment_train_mnist.py", "x = dense_block(x, 512)", "x = dense_block(x, 384)"),  # the model
        ("stages/shared/augmentation.py", 'interpolation="bilinear"', 'interpolation="nearest"'),  # the augmentation
    ],
)
def test_a_checkpoint_of_other_code_is_not_resumed(workdir, monkeypatch, capsys, module, old, new):
    # The resume key reads the code of the project that dvc.yaml lies in: here a copy, edited
    # between the killed run and the next.
    code = workdir / "code"
    shutil.copytree(PROJECT / "stages", code / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(PROJECT / "dvc.yaml", code)
    monkeypatch.setattr(resume, "PROJECT_ROOT", code)
    write_json(checkpoint_opened(monkeypatch).folder / "state.json", {"epochs_done": 2})
    assert checkpoint_opened(monkeypatch).load() == {"epochs_done": 2}  # the same code resumes it
    text = (code / module).read_text()
    assert old in text
    (code / module).write_text(text.replace(old, new))
    capsys.readouterr()
    assert checkpoint_opened(monkeypatch).load() is None
    assert capsys.readouterr().out == f"checkpoints/mnist is from a run with other code ({module}): starting afresh\n"


@pytest.mark.slow  # second tier: child processes of TensorFlow
def test_a_killed_run_whose_model_code_was_edited_starts_afresh_with_the_new_model(workdir):
    import keras

    # The project's code beside the data, where `python -m` finds it, to be edited between runs.
    shutil.copytree(PROJECT / "stages", workdir / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(PROJECT / "dvc.yaml", workdir)
    params = yaml.safe_load((workdir / "params.yaml").read_text())
    params["augment_train_mnist"]["epochs"] = 8  # time to see the first checkpoint before the run ends
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))

    def stage() -> subprocess.Popen:
        command = [sys.executable, "-m", "stages.augment_train_mnist", *stage_argv("augment_train_mnist")]
        return subprocess.Popen(command, cwd=workdir, env=tool_env(), stdout=subprocess.PIPE, text=True)

    killed = stage()
    while not (workdir / "checkpoints/mnist/state.json").exists() and killed.poll() is None:
        time.sleep(0.01)
    killed.kill()
    assert killed.wait() == -signal.SIGKILL, killed.communicate()[0]
    model_code = workdir / "stages/augment_train_mnist.py"
    model_code.write_text(model_code.read_text().replace("x = dense_block(x, 512)", "x = dense_block(x, 384)"))

    rerun = stage()
    log = rerun.communicate()[0]
    assert rerun.returncode == 0, log
    assert "checkpoints/mnist is from a run with other code (stages/augment_train_mnist.py): starting afresh" in log
    assert "resuming" not in log
    model = keras.models.load_model(workdir / "models/mnist/model.keras")
    assert [layer.units for layer in model.layers if isinstance(layer, keras.layers.Dense)] == [384, 256, 10]


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (lambda a: a.pop("y_test"), "missing key(s) y_test (has x_test, x_train, y_train)"),
        (lambda a: a.update(x_train=a["x_train"][:, :27]), "x_train must have shape (N, 28, 28), got (160, 27, 28)"),
        (lambda a: a.update(x_test=a["x_test"].astype(np.float32)), "x_test must be uint8 pixels 0-255, got float32"),
        (lambda a: a.update(y_train=a["y_train"][:-1]), "y_train must have shape (160,), got (159,)"),
        (lambda a: a.update(y_test=a["y_test"] + 5), "y_test has labels outside 0-9 (5..14)"),
    ],
)
def test_bad_files_are_named(workdir, spoil, message):
    arrays = tiny_mnist()
    spoil(arrays)
    np.savez(workdir / LOCAL_FILE, **arrays)
    with pytest.raises(StageError) as error:
        mnist.main(stage_argv("augment_train_mnist"))
    assert str(error.value) == f"{LOCAL_FILE}: {message}"
    assert not (workdir / "predictions").exists() and not (workdir / "models").exists()


def test_failed_download_says_what_to_do(monkeypatch):
    import keras

    monkeypatch.setattr(keras.datasets.mnist, "load_data", lambda: fail_as_keras_offline("https://example/mnist.npz"))
    with pytest.raises(StageError) as error:
        mnist.load_mnist("keras")
    assert str(error.value) == (
        "could not download MNIST through Keras (URL fetch failure on https://example/mnist.npz: None -- "
        "[Errno -2] Name or service not known); put a .npz with Keras's keys in data/local/mnist/ and set "
        "augment_train_mnist.data to its name"
    )


def test_unreadable_or_absent_file_is_named(workdir):
    (workdir / LOCAL_FILE).write_text("not an npz")
    with pytest.raises(StageError, match=rf"^{LOCAL_FILE}: not a readable \.npz file"):
        mnist.load_mnist(LOCAL_NAME)
    with pytest.raises(StageError, match=r"^data/local/mnist/absent\.npz: not found"):
        mnist.load_mnist("absent.npz")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            "data/local/mnist/mnist.npz",
            "augment_train_mnist.data: must be keras, or the name of a file inside data/local/mnist/, not a path: "
            "set it to mnist.npz, the name of the file inside data/local/mnist/ (copy or link it there, so that DVC "
            "tracks it), got 'data/local/mnist/mnist.npz'",
        ),
        (
            "/elsewhere/mnist.npz",
            "augment_train_mnist.data: must be keras, or the name of a file inside "
            "data/local/mnist/, not a path: set it to mnist.npz, the name of the file inside data/local/mnist/ "
            "(copy or link it there, so that DVC tracks it), got '/elsewhere/mnist.npz'",
        ),
        (
            "absent.npz",
            "augment_train_mnist.data: data/local/mnist/absent.npz not found: put the file there, "
            "or set it to keras; got 'absent.npz'",
        ),
    ],
)
def test_a_path_or_a_name_not_in_the_local_folder_is_refused_before_any_work(workdir, monkeypatch, data, message):
    params = yaml.safe_load((workdir / "params.yaml").read_text())
    params["augment_train_mnist"]["data"] = data
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.setattr(mnist, "load_mnist", lambda data: pytest.fail("read the data before checking params"))
    with pytest.raises(ParamsError) as error:
        mnist.main(stage_argv("augment_train_mnist"))
    assert str(error.value) == f"params.yaml: {message}"


def test_a_keyword_means_its_download_whatever_file_has_its_name(workdir, monkeypatch):
    import keras

    download = tiny_mnist(seed=1)
    monkeypatch.setattr(
        keras.datasets.mnist,
        "load_data",
        lambda: ((download["x_train"], download["y_train"]), (download["x_test"], download["y_test"])),
    )
    with open(workdir / "data/local/mnist/keras", "wb") as shadow:  # other digits, under the keyword's name
        np.savez(shadow, **tiny_mnist(seed=2))
    assert np.array_equal(mnist.load_mnist("keras")["x_train"], download["x_train"])


def test_xla_under_op_determinism_stops_before_any_work(workdir, monkeypatch):
    params = yaml.safe_load((workdir / "params.yaml").read_text())
    params["augment_train_mnist"].update(jit_compile=True, deterministic=True)
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.setattr(mnist, "load_mnist", lambda data: pytest.fail("read the data before checking params"))
    with pytest.raises(ParamsError, match=r"augment_train_mnist\.jit_compile: Keras does not compile with XLA"):
        mnist.main(stage_argv("augment_train_mnist"))

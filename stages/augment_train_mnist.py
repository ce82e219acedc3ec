"""Stage ``augment_train_mnist``: the original's batch-norm CNN on augmented MNIST.

    python -m stages.augment_train_mnist --model MODEL.keras --history HISTORY.csv
        --predictions PREDICTIONS.csv --checkpoints FOLDER

Reads ``seed`` and ``augment_train_mnist`` from params.yaml, and MNIST either from
Keras (downloaded once, hash-checked, cached in ~/.keras/datasets) or from a local
``.npz`` with Keras's keys in ``data/local/mnist/``, which ``augment_train_mnist.data``
names. Writes the model (the weights of the epoch with the best validation accuracy, or
with ``weight_averaging`` the moving average of the weights at that epoch),
its per-epoch history and its predictions on the validation images and the test set,
which ``evaluate@mnist`` scores. A run killed halfway resumes from its last finished
epoch, kept in the checkpoints folder (git-ignored, not a DVC output), and ends with the
same weights as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from pathlib import Path
from typing import Literal

import numpy as np
import pydantic
from pydantic import Field

from stages.shared.config import ParamsError, Section, StageError, read_params
from stages.shared.downloads import download_or_stop, local_copy, local_or
from stages.shared.files import read_npz
from stages.shared.keras_files import save_keras_model, write_history_csv
from stages.shared.mnist_digits import MNIST_CLASS_NAMES, MNIST_IMAGE_SHAPE, MNIST_NUM_CLASSES, mnist_model_input
from stages.shared.predictions import prediction_frame, write_predictions
from stages.shared.resume import ResumeFolder, code_digests
from stages.shared.runner import run_stage, stage_args, write_json
from stages.shared.tensorflow_runtime import (
    describe_devices,
    device_names,
    distribution_strategy,
    quiet_tensorflow_stderr,
    seed_everything,
    write_run_facts,
)

LOCAL_DATA_DIR = Path("data/local/mnist")


class Augmentation(Section):
    """The original's ImageDataGenerator settings."""

    rotation_degrees: float = Field(ge=0, le=180)
    shift: float = Field(ge=0, le=1)
    zoom: float = Field(ge=0, le=0.95)


class MnistTraining(Section):
    # "keras" (downloaded once, hash-checked, cached in ~/.keras/datasets) or a local .npz's name
    data: local_or(LOCAL_DATA_DIR, "file", "keras")  # type: ignore[valid-type]
    validation_size: int = Field(ge=10)
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    epoch_fraction: float = Field(gt=0, le=1)
    learning_rate: float = Field(gt=0)
    lr_schedule: Literal["constant", "cosine"]
    dropout: float = Field(ge=0, le=0.95)
    label_smoothing: float = Field(ge=0, lt=1)
    weight_averaging: float = Field(ge=0, lt=1)
    augmentation: Augmentation
    mixed_precision: bool
    jit_compile: bool
    deterministic: bool

    @pydantic.model_validator(mode="after")
    def xla_needs_nondeterministic_ops(self) -> MnistTraining:
        if self.jit_compile and self.deterministic:
            # Keras would quietly train without XLA: say so before any work instead.
            raise ValueError(
                "jit_compile: Keras does not compile with XLA under op determinism; "
                "set augment_train_mnist.deterministic to false to use it"
            )
        return self


class Params(Section):
    seed: int = Field(ge=0)
    augment_train_mnist: MnistTraining


# --------------------------------------------------------------------------- data
def check_mnist_arrays(arrays: dict[str, np.ndarray], source: str) -> None:
    """Stop with a message naming ``source`` unless Keras's four arrays in ``arrays`` look like MNIST."""
    for part in ("train", "test"):
        x, y = arrays[f"x_{part}"], arrays[f"y_{part}"]
        if x.ndim != 3 or x.shape[1:] != MNIST_IMAGE_SHAPE:
            raise StageError(f"{source}: x_{part} must have shape (N, 28, 28), got {x.shape}")
        if x.dtype != np.uint8:
            raise StageError(f"{source}: x_{part} must be uint8 pixels 0-255, got {x.dtype}")
        if y.shape != (len(x),):
            raise StageError(f"{source}: y_{part} must have shape ({len(x)},), got {y.shape}")
        if not np.issubdtype(y.dtype, np.integer):
            raise StageError(f"{source}: y_{part} must hold integer labels, got {y.dtype}")
        if len(y) and (y.min() < 0 or y.max() >= MNIST_NUM_CLASSES):
            raise StageError(f"{source}: y_{part} has labels outside 0-9 ({y.min()}..{y.max()})")


def load_mnist(data: str) -> dict[str, np.ndarray]:
    """MNIST as Keras's four arrays, from Keras's download (``data == "keras"``) or the local
    file of that name in ``LOCAL_DATA_DIR``."""
    if data == "keras":
        import keras

        with download_or_stop(
            "MNIST through Keras", "augment_train_mnist.data", "a .npz with Keras's keys", LOCAL_DATA_DIR
        ):
            (x_train, y_train), (x_test, y_test) = keras.datasets.mnist.load_data()
        return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    path = local_copy(LOCAL_DATA_DIR, data)
    arrays = read_npz(path, ("x_train", "y_train", "x_test", "y_test"))
    check_mnist_arrays(arrays, str(path))
    return arrays


def validation_split(y: np.ndarray, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the training images to fit on and of ``size`` held out, stratified by
    digit, to choose the best epoch."""
    from sklearn.model_selection import train_test_split

    if size >= len(y):
        raise ParamsError(
            f"params.yaml: augment_train_mnist.validation_size: must be below the {len(y)} training images"
        )
    return train_test_split(np.arange(len(y)), test_size=size, stratify=y, random_state=seed)


# --------------------------------------------------------------------------- model
def make_model(dropout: float = 0.5):
    """The original's CNN: 727,530 parameters, of which 725,610 trainable.

    Convolutions without padding, batch norm before every ReLU, dropout after the
    two dense blocks. The output layer stays float32 so that mixed precision keeps a
    numerically safe softmax.
    """
    import keras
    from keras import layers

    def conv_block(x, filters):
        x = layers.Conv2D(filters, 3)(x)
        x = layers.BatchNormalization()(x)
        return layers.Activation("relu")(x)

    def dense_block(x, units):
        x = layers.Dense(units)(x)
        x = layers.BatchNormalization()(x)
        x = layers.Activation("relu")(x)
        return layers.Dropout(dropout)(x)

    inputs = keras.Input(shape=(*MNIST_IMAGE_SHAPE, 1), name="digit")
    x = conv_block(inputs, 32)
    x = conv_block(x, 32)
    x = layers.MaxPooling2D()(x)
    x = conv_block(x, 64)
    x = conv_block(x, 64)
    x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    x = dense_block(x, 512)
    x = dense_block(x, 256)
    outputs = layers.Dense(MNIST_NUM_CLASSES, activation="softmax", dtype="float32", name="digit_probabilities")(x)
    return keras.Model(inputs, outputs, name="mnist_cnn")


def make_augmentation(rotation_degrees: float, shift: float, zoom: float):
    """The original's ImageDataGenerator settings as one Keras layer, or None when all are 0.

    See ``stages.shared.augmentation`` for why one ``RandomAffine`` rather than Keras's
    separate rotation, translation and zoom layers.
    """
    if not (rotation_degrees or shift or zoom):
        return None
    from stages.shared.augmentation import RandomAffine

    return RandomAffine(rotation_degrees, shift, zoom, name="augmentation")


def train_dataset(x, y, batch_size: int, steps: int, augmentation, seed: int, one_hot: bool = False):
    """One epoch of shuffled, augmented batches as a ``tf.data`` pipeline.

    Augmentation is applied to whole batches (one call per batch, not per image) in
    a parallel map, and ``prefetch`` overlaps it with the training step. Batch ``i``
    is augmented with the stateless seed ``(seed, i)``: the same seed gives the same
    epoch whatever order the parallel map finishes in, and a resumed run rebuilds
    the epoch from its seed alone. ``augmentation`` None leaves the images as they are;
    ``one_hot`` gives the labels as one-hot rows, which label smoothing needs.
    """
    import tensorflow as tf

    # Each op of the pipeline on one thread: otherwise its ops may borrow TensorFlow's
    # shared intra-op thread pool, which the training step needs.
    options = tf.data.Options()
    options.threading.max_intra_op_parallelism = 1

    def prepare(index, batch):
        images, labels = batch
        images = mnist_model_input(images)
        if augmentation is not None:
            images = augmentation(images, seed=tf.stack([tf.constant(seed, tf.int64), index]))
        if one_hot:
            labels = tf.one_hot(labels, MNIST_NUM_CLASSES)
        return images, labels

    return (
        tf.data.Dataset.from_tensor_slices((x, y))
        .shuffle(len(y), seed=seed)
        .take(steps * batch_size)
        .batch(batch_size, drop_remainder=True)
        .enumerate()
        .map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
        .with_options(options)
    )


def epoch_seed(seed: int, epoch: int) -> int:
    """A seed for one epoch, derived from the run's seed so that it does not depend on history."""
    return (seed * 1_000_003 + epoch * 7919) % (2**31 - 1)


def reseed_dropout(model, seed: int) -> None:
    """Set the state of the model's random-number generators (its dropout layers) from ``seed``.

    Keras does not save that state with the model, so a resumed run resets it at every
    epoch start, and an uninterrupted run does the same, to draw the same dropout masks.
    """
    for i, variable in enumerate(v for v in model.variables if v.path.endswith("seed_generator_state")):
        variable.assign(np.array([seed + i, 0], dtype=variable.dtype))


def on_off(flag: bool) -> str:
    return "on" if flag else "off"


def make_loss(label_smoothing: float):
    """The cross-entropy the model is trained on: on digit numbers when ``label_smoothing``
    is 0, as the original; otherwise on one-hot rows, because only Keras's categorical
    cross-entropy smooths labels."""
    import keras

    if label_smoothing:
        return keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)
    return "sparse_categorical_crossentropy"


@contextlib.contextmanager
def averaged_weights_in_place(model):
    """Within the block, the model's trainable weights are the optimizer's moving average
    of them (batch norm's statistics stay the model's own); after it, its own again."""
    own = [variable.numpy() for variable in model.trainable_variables]
    model.optimizer.finalize_variable_values(model.trainable_variables)
    try:
        yield
    finally:
        for variable, value in zip(model.trainable_variables, own):
            variable.assign(value)


# --------------------------------------------------------------------------- resumable training
def run_fingerprint(params: dict, arrays: dict[str, np.ndarray], devices: int) -> dict:
    """What a checkpoint must match to be resumed, part by part: the params, the data, the
    number of devices and the code the stage runs. Batch norm normalises each device's
    share of a batch by itself, so a run resumed on another number of devices would end
    with weights that neither would give; and a run resumed under other code (the model,
    the augmentation) would go on from a model that the new code did not build."""
    data = hashlib.sha256()
    for key in sorted(arrays):
        data.update(key.encode())
        data.update(np.ascontiguousarray(arrays[key]).tobytes())
    return {
        "params": params,
        "data": data.hexdigest(),
        "devices": devices,
        "code": code_digests("augment_train_mnist"),
    }


class Checkpoint(ResumeFolder):
    """The state of a run after its last finished epoch, for the run whose fingerprint
    (``run_fingerprint``) is the folder's key.

    ``state.json`` is written last and atomically, so a run killed while saving
    resumes from the epoch before.
    """

    def load(self) -> dict | None:
        """The saved state, or None when no epoch has finished."""
        try:
            return json.loads((self.folder / "state.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def save(self, model, best_model, state: dict) -> None:
        # Files named by epoch, so the state written last always points at complete files.
        epoch = state["epochs_done"]
        save_keras_model(model, self.folder / f"last-{epoch}.keras")
        save_keras_model(best_model, self.folder / f"best-{epoch}.keras")
        write_json(self.folder / "state.json", state)
        for old in self.folder.glob("*.keras"):
            if not old.stem.endswith(f"-{epoch}"):
                old.unlink()

    def models(self, state: dict):
        import keras

        epoch = state["epochs_done"]
        return [keras.models.load_model(self.folder / f"{kind}-{epoch}.keras") for kind in ("last", "best")]


def epoch_bookkeeping(
    best_model,
    state: dict,
    seed: int,
    images_per_epoch: int,
    checkpoint: Checkpoint | None,
    averaged_validation: tuple | None = None,
):
    """A callback for ``fit`` that does, around each epoch, what the resume needs.

    Before: reseed the dropout from the epoch's seed. After: keep the weights if the
    validation accuracy is the best so far, add the epoch to the history, print a line,
    and save the checkpoint (the model, the best weights and ``state``). With weight
    averaging, ``averaged_validation`` is ``(x_val, y_val, batch_size)``: the weights
    judged and kept are the moving average's, and the history gains ``val_averaged_accuracy``.
    """
    import keras
    from sklearn.metrics import accuracy_score

    class EpochBookkeeping(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            reseed_dropout(self.model, epoch_seed(seed, epoch))
            self.started = time.perf_counter()

        def on_test_begin(self, logs: dict | None = None) -> None:
            # On several devices each replica updates batch norm's moving statistics from its
            # own share of the batches, so validation would judge each half of the images with
            # other statistics than the model kept, which holds the first replica's (those
            # get_weights reads). Only inference reads them: giving every replica the first
            # one's before validation leaves training as it was.
            for variable in self.model.non_trainable_variables:
                if variable.path.endswith(("moving_mean", "moving_variance")):
                    variable.assign(variable.numpy())

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            took = time.perf_counter() - self.started
            for key, value in logs.items():
                if key != "learning_rate":
                    state["history"].setdefault(key, []).append(float(value))
            judged = logs["val_accuracy"]
            with averaged_weights_in_place(self.model) if averaged_validation else contextlib.nullcontext():
                if averaged_validation:
                    x_val, y_val, batch_size = averaged_validation
                    predicted = self.model.predict(x_val, batch_size=batch_size, verbose=0).argmax(axis=1)
                    judged = float(accuracy_score(y_val, predicted))
                    state["history"].setdefault("val_averaged_accuracy", []).append(judged)
                improved = judged > state["best_val_accuracy"]
                if improved:
                    best_model.set_weights(self.model.get_weights())
                    state.update(best_epoch=epoch + 1, best_val_accuracy=float(judged))
            state["epochs_done"] = epoch + 1
            state["train_seconds"] += took
            print(
                f"epoch {epoch + 1}/{self.params['epochs']}  loss={logs['loss']:.4f}  "
                f"accuracy={logs['accuracy']:.4f}  val_accuracy={logs['val_accuracy']:.4f}"
                f"{f'  averaged={judged:.4f}' if averaged_validation else ''}"
                f"{'  (best so far)' if improved else ''}  {took:.1f}s, {images_per_epoch / took:.0f} images/s",
                flush=True,
            )
            if checkpoint:
                checkpoint.save(self.model, best_model, state)

    return EpochBookkeeping()


def train(x_train, y_train, x_val, y_val, settings: MnistTraining, seed: int, checkpoint: Checkpoint | None = None):
    """Train the CNN with augmentation and return ``(best_model, history, summary)``.

    One Keras ``fit`` over the epochs not yet done: the batches of epoch ``e`` come from
    its own seed, so a resumed run feeds the same ones (Keras's ``BackupAndRestore``
    would restore the weights but neither the data position nor the dropout's random
    state, which is why the checkpoint is this stage's own). The best model is the one
    with the highest accuracy on the validation images ``(x_val, y_val)``, or, with
    ``weight_averaging``, the moving average of the weights (Keras's ``use_ema``) with the
    highest; the test set is not looked at here. ``history`` maps each Keras metric to its per-epoch values;
    ``summary`` holds the best epoch, timing and the device.
    """
    import functools

    import keras

    seed_everything(seed, settings.deterministic)
    # Set either way: the policy is global to the process and would outlive one run.
    keras.mixed_precision.set_global_policy("mixed_float16" if settings.mixed_precision else "float32")
    batch_size, epochs = settings.batch_size, settings.epochs
    steps = int(len(y_train) * settings.epoch_fraction) // batch_size
    if steps < 1:
        raise ParamsError(
            "params.yaml: augment_train_mnist.batch_size: larger than the images in one epoch "
            f"({int(len(y_train) * settings.epoch_fraction)})"
        )
    strategy, devices = distribution_strategy()
    device = describe_devices(devices)

    state = checkpoint.load() if checkpoint else None
    with strategy.scope():
        if state:
            model, best_model = checkpoint.models(state)
            print(f"resuming after epoch {state['epochs_done']} from {checkpoint.folder}", flush=True)
        else:
            model = make_model(settings.dropout)
            # A cosine schedule is a function of the optimizer's step count, which the
            # checkpoint keeps, so a resumed run continues it where it stopped.
            rate = settings.learning_rate
            if settings.lr_schedule == "cosine":
                rate = keras.optimizers.schedules.CosineDecay(rate, decay_steps=steps * epochs)
            # The average is the optimizer's state, so the checkpoint keeps it for a resume.
            averaging = (
                {"use_ema": True, "ema_momentum": settings.weight_averaging} if settings.weight_averaging else {}
            )
            model.compile(
                optimizer=keras.optimizers.Adam(rate, **averaging),
                loss=make_loss(settings.label_smoothing),
                metrics=["accuracy"],
                jit_compile=settings.jit_compile,
            )
            best_model = keras.models.clone_model(model)
            state = {"epochs_done": 0, "history": {}, "best_epoch": 0, "best_val_accuracy": -1.0, "train_seconds": 0.0}

    augmentation = make_augmentation(**settings.augmentation.model_dump())
    one_hot = settings.label_smoothing > 0  # the labels make_loss's loss takes
    x_val_input = mnist_model_input(x_val)
    y_val_for_loss = keras.utils.to_categorical(y_val, MNIST_NUM_CLASSES) if one_hot else y_val
    print(
        f"training on {device}: {len(y_train)} images, {len(y_val)} held out for validation, "
        f"{steps} steps of {batch_size} per epoch, {epochs} epochs; XLA {on_off(model.jit_compile)}, "
        f"mixed precision {on_off(settings.mixed_precision)}, "
        f"op determinism {on_off(settings.deterministic)}",
        flush=True,
    )
    remaining = range(state["epochs_done"], epochs)
    if remaining:
        batches = functools.reduce(
            lambda a, b: a.concatenate(b),
            [
                train_dataset(x_train, y_train, batch_size, steps, augmentation, epoch_seed(seed, epoch), one_hot)
                for epoch in remaining
            ],
        )
        model.fit(
            batches,
            epochs=epochs,
            initial_epoch=remaining.start,
            steps_per_epoch=steps,
            validation_data=(x_val_input, y_val_for_loss),
            validation_batch_size=batch_size,
            shuffle=False,
            verbose=0,
            callbacks=[
                epoch_bookkeeping(
                    best_model,
                    state,
                    seed,
                    steps * batch_size,
                    checkpoint,
                    (x_val_input, y_val, batch_size) if settings.weight_averaging else None,
                )
            ],
        )

    summary = {
        "best_epoch": state["best_epoch"],
        "epochs": epochs,
        "seconds_per_epoch": round(state["train_seconds"] / epochs, 2),
        "train_images_per_second": round(steps * batch_size * epochs / state["train_seconds"], 1),
        "device": device,
    }
    return best_model, state["history"], summary


def main(argv: list[str]) -> None:
    params = read_params(Params)
    args = stage_args("augment_train_mnist", argv, "model", "history", "predictions", "checkpoints")
    settings = params.augment_train_mnist
    arrays = load_mnist(settings.data)
    fit, val = validation_split(arrays["y_train"], settings.validation_size, params.seed)
    (x_fit, y_fit), (x_val, y_val) = ((arrays["x_train"][i], arrays["y_train"][i]) for i in (fit, val))
    x_test, y_test = arrays["x_test"], arrays["y_test"]
    checkpoint = Checkpoint(args.checkpoints, run_fingerprint(params.model_dump(), arrays, len(device_names())))
    model, history, summary = train(x_fit, y_fit, x_val, y_val, settings, params.seed, checkpoint)

    def probabilities(x):
        return model.predict(mnist_model_input(x), batch_size=settings.batch_size, verbose=0)

    predictions = [
        prediction_frame(
            [f"x_train[{i}]" for i in val],
            y_val,
            probabilities(x_val),
            MNIST_CLASS_NAMES,
            "validation",
            f"{len(val)} training images held out to choose the epoch",
        ),
        prediction_frame(
            [f"x_test[{i}]" for i in range(len(y_test))],
            y_test,
            probabilities(x_test),
            MNIST_CLASS_NAMES,
            "heldout",
            "test set",
        ),
    ]
    save_keras_model(model, args.model)
    write_history_csv(history, args.history)
    write_predictions(args.predictions, predictions)
    trainable = sum(int(np.prod(weight.shape)) for weight in model.trainable_weights)
    write_run_facts(
        "augment_train_mnist", {**summary, "params_total": model.count_params(), "params_trainable": trainable}
    )
    checkpoint.clear()
    print(f"augment_train_mnist: {summary}")


if __name__ == "__main__":
    run_stage(main, quiet_tensorflow_stderr)

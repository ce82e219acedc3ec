"""Stage ``train_toy``: fit a small Keras MLP to one toy dataset.

    python -m stages.train_toy NAME --data DATA.npz --model MODEL.keras --history HISTORY.csv
        --boundary BOUNDARY.png --predictions PREDICTIONS.csv

Reads ``seed`` and ``train_toy.<name>`` from params.yaml and the points (``--data``,
from ``generate_toy``); writes the model, its per-epoch history, a decision-boundary
plot and its predictions on the stratified held-out share, which ``evaluate@toy`` scores.
"""

from __future__ import annotations

import time
from typing import Annotated, Literal

import numpy as np
from pydantic import Field

from stages.shared.config import Name, Section, read_params
from stages.shared.files import read_npz, save_figure
from stages.shared.keras_files import save_keras_model, write_history_csv
from stages.shared.predictions import prediction_frame, write_predictions
from stages.shared.runner import run_stage, stage_args
from stages.shared.tensorflow_runtime import quiet_tensorflow_stderr, seed_everything, write_run_facts

CLASS_NAMES = ("class_0", "class_1")


class ToyTraining(Section):
    hidden_layers: list[Annotated[int, Field(ge=1)]] = Field(min_length=1)
    activation: Literal["relu", "tanh", "sigmoid", "elu", "gelu"]
    learning_rate: float = Field(gt=0)
    batch_size: int = Field(ge=1)
    epochs: int = Field(ge=1)
    holdout_fraction: float = Field(ge=0.05, le=0.5)


class Params(Section):
    seed: int = Field(ge=0)
    train_toy: dict[Name, ToyTraining] = Field(min_length=1)


def make_model(hidden_layers: list[int], activation: str = "relu"):
    """An MLP from 2-D points to two class probabilities, as in the original.

    ``[3, 5]`` gives the original's 41-parameter ``2blop`` network, ``[5, 15, 10]`` its
    287-parameter networks for ``blop_circle`` and ``4blop``.
    """
    import keras

    inputs = keras.Input(shape=(2,), name="point")
    x = inputs
    for i, units in enumerate(hidden_layers, start=1):
        x = keras.layers.Dense(units, activation=activation, name=f"hidden_{i}")(x)
    outputs = keras.layers.Dense(len(CLASS_NAMES), activation="softmax", name="class_probabilities")(x)
    return keras.Model(inputs, outputs, name="toy_mlp")


def epoch_lines(epochs: int, every: int):
    """A Keras callback that prints one flushed line per ``every`` epochs.

    DVC captures a stage's output through a pipe, where Keras's progress bar turns
    into a wall of carriage returns. Keras's ``verbose=2`` prints one line for every
    epoch, hundreds for the toy MLPs, so this prints every ``every``-th, with its time.
    """
    import keras

    class EpochLine(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self._started = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            done = epoch + 1
            if done % every and done != epochs:
                return
            shown = "  ".join(f"{k}={v:.4f}" for k, v in (logs or {}).items() if k != "learning_rate")
            took = time.perf_counter() - self._started
            print(f"epoch {done}/{epochs}  {shown}  ({took:.1f}s)", flush=True)

    return EpochLine()


def train(x, y, fit: np.ndarray, held: np.ndarray, settings: ToyTraining, seed: int, verbose_every: int = 10):
    """Fit the MLP on the points ``fit`` (indices), watching the loss on ``held``.

    Returns ``(model, history)``: ``history`` is Keras's per-epoch dict (``loss``,
    ``accuracy``, ``val_loss``, ``val_accuracy``, where ``val_`` is the held-out part).
    """
    import keras

    seed_everything(seed)
    model = make_model(settings.hidden_layers, settings.activation)
    model.compile(
        optimizer=keras.optimizers.Adam(settings.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    history = model.fit(
        x[fit],
        y[fit],
        batch_size=settings.batch_size,
        epochs=settings.epochs,
        validation_data=(x[held], y[held]),
        shuffle=True,
        verbose=0,
        callbacks=[epoch_lines(settings.epochs, verbose_every)],
    )
    return model, history.history


def boundary_figure(model, x: np.ndarray, y: np.ndarray, title: str, resolution: int = 200):
    """The model's P(class 1) over a grid around the data, with the points on top."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no figure to close

    margin = 1.0
    (x_min, y_min), (x_max, y_max) = x.min(axis=0) - margin, x.max(axis=0) + margin
    gx, gy = np.meshgrid(np.linspace(x_min, x_max, resolution), np.linspace(y_min, y_max, resolution))
    grid = np.stack([gx.ravel(), gy.ravel()], axis=1).astype(np.float32)
    prob = model.predict(grid, batch_size=8192, verbose=0)[:, 1].reshape(gx.shape)

    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    filled = ax.contourf(gx, gy, prob, levels=np.linspace(0, 1, 11), cmap="RdBu", alpha=0.8)
    ax.contour(gx, gy, prob, levels=[0.5], colors="k", linewidths=1)
    ax.scatter(*x.T, c=y, cmap="RdBu", edgecolors="k", linewidths=0.3, s=10)
    fig.colorbar(filled, ax=ax, label="P(class 1)")
    ax.set(title=title, xlabel="x1", ylabel="x2", aspect="equal")
    return fig


def main(argv: list[str]) -> None:
    from sklearn.model_selection import train_test_split

    params = read_params(Params)
    args = stage_args("train_toy", argv, "data", "model", "history", "boundary", "predictions", items=params.train_toy)
    name = args.name
    settings = params.train_toy[name]
    arrays = read_npz(args.data, ("x", "y"), f"generate_toy@{name}")
    x, y = arrays["x"], arrays["y"]
    # A stratified split: both classes keep their share in the held-out part.
    fit, held = train_test_split(
        np.arange(len(y)), test_size=settings.holdout_fraction, stratify=y, random_state=params.seed
    )
    print(
        f"train_toy {name}: {len(fit)} points to fit, {len(held)} held out; hidden layers {settings.hidden_layers}",
        flush=True,
    )
    started = time.perf_counter()
    model, history = train(x, y, fit, held, settings, params.seed)
    seconds = time.perf_counter() - started
    probabilities = model.predict(x[held], verbose=0)
    save_keras_model(model, args.model)
    write_history_csv(history, args.history)
    save_figure(boundary_figure(model, x, y, f"{name}: P(class 1)"), args.boundary)
    protocol = f"stratified hold-out of {settings.holdout_fraction:g}"
    write_predictions(
        args.predictions,
        [prediction_frame(held, y[held], probabilities, CLASS_NAMES, "heldout", protocol)],
    )
    write_run_facts(f"train_toy@{name}", {"seconds": round(seconds, 1), "params": model.count_params()})
    print(f"train_toy {name}: {model.count_params()} parameters, trained in {seconds:.1f}s")


if __name__ == "__main__":
    run_stage(main, quiet_tensorflow_stderr)

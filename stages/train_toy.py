"""Stage ``train_toy``: fit a small Keras MLP to one toy dataset.

    python -m stages.train_toy 2blop

Reads ``seed`` and ``train_toy.<name>`` from params.yaml and ``data/toy/<name>.npz``;
writes ``models/toy/<name>.keras``, the per-epoch history
``plots/toy/<name>/history.csv``, a decision-boundary plot
``plots/toy/<name>/boundary.png`` and ``results/toy/<name>.json`` (held-out and
train accuracy, held-out loss, parameter count).
"""

from __future__ import annotations

import numpy as np

from stages import common
from stages.toy import DATASETS, data_path, dataset_from_argv, settings_for

NUM_CLASSES = 2

SCHEMA = {
    "seed": common.integer(minimum=0),
    "train_toy": common.named(
        DATASETS,
        common.mapping(
            {
                "hidden_layers": common.list_of(common.integer(minimum=1)),
                "activation": common.choice("relu", "tanh", "sigmoid", "elu", "gelu"),
                "learning_rate": common.number(minimum=0, exclusive_min=True),
                "batch_size": common.integer(minimum=1),
                "epochs": common.integer(minimum=1),
                "holdout_fraction": common.number(minimum=0.05, maximum=0.5),
            }
        ),
    ),
}


def make_model(hidden_layers: list[int], activation: str = "relu"):
    """An MLP from 2-D points to two class probabilities, as in the seed.

    ``[3, 5]`` gives the seed's 41-parameter ``2blop`` network, ``[5, 15, 10]`` its
    287-parameter networks for ``blop_circle`` and ``4blop``.
    """
    import keras

    inputs = keras.Input(shape=(2,), name="point")
    x = inputs
    for i, units in enumerate(hidden_layers, start=1):
        x = keras.layers.Dense(units, activation=activation, name=f"hidden_{i}")(x)
    outputs = keras.layers.Dense(NUM_CLASSES, activation="softmax", name="class_probabilities")(x)
    return keras.Model(inputs, outputs, name="toy_mlp")


def holdout_split(x: np.ndarray, y: np.ndarray, fraction: float, seed: int):
    """Stratified split: both classes keep their share in the held-out part."""
    from sklearn.model_selection import train_test_split

    return train_test_split(x, y, test_size=fraction, stratify=y, random_state=seed)


def train(x: np.ndarray, y: np.ndarray, settings: dict, seed: int, verbose_every: int = 10):
    """Fit the MLP on a stratified share of ``(x, y)`` and score it on the rest.

    Returns ``(model, history, metrics)``: ``history`` is Keras's per-epoch dict
    (``loss``, ``accuracy``, ``val_loss``, ``val_accuracy``, where ``val_`` is the
    held-out part); ``metrics`` holds the final held-out accuracy and loss, the
    train accuracy and the parameter count.
    """
    import keras

    common.seed_everything(seed)
    x_train, x_held, y_train, y_held = holdout_split(x, y, settings["holdout_fraction"], seed)
    model = make_model(settings["hidden_layers"], settings["activation"])
    model.compile(
        optimizer=keras.optimizers.Adam(settings["learning_rate"]),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
    )
    one_hot = lambda labels: keras.utils.to_categorical(labels, NUM_CLASSES)  # noqa: E731
    history = model.fit(
        x_train,
        one_hot(y_train),
        batch_size=settings["batch_size"],
        epochs=settings["epochs"],
        validation_data=(x_held, one_hot(y_held)),
        shuffle=True,
        verbose=0,
        callbacks=[common.keras_progress(settings["epochs"], every=verbose_every)],
    )
    held_loss, held_accuracy = model.evaluate(x_held, one_hot(y_held), verbose=0)
    _, train_accuracy = model.evaluate(x_train, one_hot(y_train), verbose=0)
    metrics = {
        "heldout_accuracy": round(float(held_accuracy), 4),
        "heldout_loss": round(float(held_loss), 4),
        "train_accuracy": round(float(train_accuracy), 4),
        "n_train": int(len(y_train)),
        "n_heldout": int(len(y_held)),
        "params": int(model.count_params()),
    }
    return model, history.history, metrics


def boundary_figure(model, x: np.ndarray, y: np.ndarray, title: str, resolution: int = 200):
    """The model's P(class 1) over a grid around the data, with the points on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    margin = 1.0
    (x_min, y_min), (x_max, y_max) = x.min(axis=0) - margin, x.max(axis=0) + margin
    gx, gy = np.meshgrid(np.linspace(x_min, x_max, resolution), np.linspace(y_min, y_max, resolution))
    grid = np.stack([gx.ravel(), gy.ravel()], axis=1).astype(np.float32)
    prob = model.predict(grid, batch_size=8192, verbose=0)[:, 1].reshape(gx.shape)

    fig, ax = plt.subplots(figsize=(5, 5))
    filled = ax.contourf(gx, gy, prob, levels=np.linspace(0, 1, 11), cmap="RdBu", alpha=0.8)
    ax.contour(gx, gy, prob, levels=[0.5], colors="k", linewidths=1)
    ax.scatter(*x.T, c=y, cmap="RdBu", edgecolors="k", linewidths=0.3, s=10)
    fig.colorbar(filled, ax=ax, label="P(class 1)")
    ax.set(title=title, xlabel="x1", ylabel="x2", aspect="equal")
    return fig


def load_dataset(name: str) -> tuple[np.ndarray, np.ndarray]:
    path = data_path(name)
    try:
        with np.load(path) as data:
            return data["x"], data["y"]
    except FileNotFoundError:
        raise common.StageError(f"{path}: not found; run `dvc repro generate_toy@{name}` first") from None


def main(argv: list[str]) -> None:
    name = dataset_from_argv("train_toy", argv)
    params = common.read_params(SCHEMA)
    settings = settings_for(params, "train_toy", name)
    x, y = load_dataset(name)
    print(f"train_toy {name}: {len(y)} points, hidden layers {settings['hidden_layers']}", flush=True)
    model, history, metrics = train(x, y, settings, params["seed"])
    common.save_keras_model(model, f"models/toy/{name}.keras")
    common.write_history_csv(history, f"plots/toy/{name}/history.csv")
    title = f"{name}: held-out accuracy {metrics['heldout_accuracy']:.3f}"
    common.save_figure(boundary_figure(model, x, y, title), f"plots/toy/{name}/boundary.png")
    common.write_json(f"results/toy/{name}.json", metrics)
    print(f"train_toy {name}: {metrics}")


if __name__ == "__main__":
    common.run_stage(main)

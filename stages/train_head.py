"""Stage ``train_head``: the original's transfer learning, a classifier trained on the frozen
backbone's features.

    python -m stages.train_head --features FEATURES.npz --groups GROUPS.csv --model HEAD.keras --inputs INPUTS.json
        --operating-point POINT.json --predictions PREDICTIONS.csv --history FOLDER

The original names it without doing it: "freezing all the CNN layers and defining our own
output layer and training this with our data". The backbone is ``extract_vgg_features``'s,
frozen by construction: this stage reads its features, so a change to the head never
reruns the backbone.

Reads ``seed``, ``breast_cv_folds`` and ``train_head`` from params.yaml and, of the
features that ``extract_vgg_features`` wrote, the blocks ``train_head.features`` names
(``--inputs`` records them for ``classify-images``), and the groups of near-copies that
``find_near_copies`` wrote (``--groups``): every split below keeps a group whole. The model is an ensemble of
``ensemble_members`` heads whose class probabilities are averaged (a cross-validation
ensemble): the images it is fitted on are split into that many stratified folds, and
each head trains on all but one and stops at the epoch with the best ROC AUC on that
one. With one member, the head trains on the training split and stops on those images of
the data's validation split that have no near-copy among the training images (the split
is the data's, so it cannot be regrouped) or, when there is none, trains on the rest of
the images it is fitted on and stops on a stratified, grouped share of them
(``validation_fraction``). Never on the test split. Writes

* ``--model``: the ensemble fitted on the non-test images, as one Keras model from raw
  features (standardisation and averaging included);
* ``--predictions``: ``heldout`` and ``cv`` by the protocol it shares with ``fit_knn``
  (``stages.shared.breast``): ``cv`` fits a whole ensemble in each fold, so it scores the
  reported model's method; and ``validation``: each member of that model on the images
  that chose its stopping epoch (optimistic by construction);
* ``--operating-point``: where the saved ensemble calls an image positive
  (``target_sensitivity``; null: the argmax alone), the cut of the positive class's
  probability chosen on the cross-validation's out-of-fold predictions. Each
  cross-validation fold's own calls use a cut chosen on the predictions of that fold's
  ensemble members on the images each stopped on: out of fold, at no extra training, but
  slightly optimistic, since those images chose each member's epoch (docs/breast.md);
* ``--history``: a folder of ``member_<n>.csv``, each member's loss and validation ROC
  AUC per epoch.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import Field

from stages.shared.breast import (
    FeatureBlocks,
    FeatureSet,
    FoldParams,
    OperatingPoint,
    TargetSensitivity,
    load_features,
    operating_point,
    protocol_predictions,
    stratified_folds,
    unseen,
    write_model_inputs,
    write_operating_point,
)
from stages.shared.config import Section, StageError, read_params
from stages.shared.keras_files import save_keras_model, write_history_csv
from stages.shared.predictions import prediction_frame, write_predictions
from stages.shared.runner import run_stage, stage_args
from stages.shared.tensorflow_runtime import quiet_tensorflow_stderr, seed_everything, write_run_facts


class HeadSettings(Section):
    features: FeatureBlocks
    hidden_units: int = Field(ge=0)
    dropout: float = Field(ge=0, le=0.9)
    l2: float = Field(ge=0)
    learning_rate: float = Field(gt=0)
    batch_size: int = Field(ge=1)
    max_epochs: int = Field(ge=1)
    patience: int = Field(ge=1)
    class_weight: Literal["none", "balanced"]
    validation_fraction: float = Field(ge=0.05, le=0.5)
    ensemble_members: int = Field(ge=1)
    target_sensitivity: TargetSensitivity  # the operating point; null: the argmax alone


class Params(FoldParams):
    train_head: HeadSettings


def make_model(
    n_features: int, n_classes: int, hidden_units: int, dropout: float, l2: float, name: str = "breast_head"
):
    """Dropout on the (standardised) features, an optional hidden ReLU layer, and a softmax
    over the classes: the original's "own output layer"."""
    import keras

    regulariser = keras.regularizers.L2(l2) if l2 else None
    inputs = keras.Input(shape=(n_features,), name="standardised_features")
    x = keras.layers.Dropout(dropout, name="feature_dropout")(inputs)
    if hidden_units:
        x = keras.layers.Dense(hidden_units, activation="relu", kernel_regularizer=regulariser, name="hidden")(x)
        x = keras.layers.Dropout(dropout, name="hidden_dropout")(x)
    outputs = keras.layers.Dense(
        n_classes, activation="softmax", kernel_regularizer=regulariser, name="class_probabilities"
    )(x)
    return keras.Model(inputs, outputs, name=name)


@dataclass(frozen=True)
class TrainedHead:
    """One training's result: the weights of its best epoch, the standardisation fitted on
    its training images, the images it stopped on, and Keras's per-epoch history."""

    weights: list
    mean: np.ndarray
    std: np.ndarray
    stop: np.ndarray
    history: dict


def roc_auc(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """ROC AUC of the second class for two classes; one-vs-rest, averaged, for more."""
    from sklearn.metrics import roc_auc_score

    if probabilities.shape[1] == 2:
        return float(roc_auc_score(labels, probabilities[:, 1]))
    return float(roc_auc_score(labels, probabilities, multi_class="ovr", labels=range(probabilities.shape[1])))


def validation_roc_auc(x, y):
    """A callback that adds ``val_roc_auc`` on ``(x, y)`` to each epoch's logs.

    Keras's own ``AUC`` metric bins the scores into 200 thresholds and needs one-hot
    labels; scikit-learn's is exact, and the predictions fit in one batch.
    """
    import keras

    class ValidationRocAuc(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            logs["val_roc_auc"] = roc_auc(y, np.asarray(self.model.predict_on_batch(x)))

    return ValidationRocAuc()


def member_splits(data: FeatureSet, indices: np.ndarray, settings: HeadSettings, seed: int):
    """``(train, stop)`` index pairs over ``indices``, one per member of the ensemble: each
    stratified fold to stop on, the others to train on; or, for one member, ``stopping_split``."""
    if settings.ensemble_members == 1:
        return [stopping_split(data, indices, settings.validation_fraction, seed)]
    folds = stratified_folds(
        data.labels[indices], data.groups[indices], settings.ensemble_members, seed, key="train_head.ensemble_members"
    )
    return [(indices[train], indices[stop]) for train, stop in folds]


def stopping_split(data: FeatureSet, indices: np.ndarray, fraction: float, seed: int):
    """``(train, stop)``: the images of ``indices`` to train on and to choose the epoch on.

    The images of the data's validation split among them that have no near-copy among the
    others (the training images), when those hold every class; else a stratified share
    of about ``fraction`` that keeps each group whole.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    is_val = data.split[indices] == "val"
    train = indices[~is_val]
    stop = unseen(indices[is_val], train, data.groups)
    if len(train) and set(data.labels[stop]) == set(data.labels[indices]):
        if len(stop) < is_val.sum():
            print(
                f"train_head: stopping on the {len(stop)} of {is_val.sum()} validation images with no near-copy "
                f"among the training images (the data's own split, which cannot be regrouped)",
                flush=True,
            )
        return train, stop
    labels, groups = data.labels[indices], data.groups[indices]
    if min(len(np.unique(groups[labels == label])) for label in np.unique(labels)) < 2:
        raise StageError("a class has fewer than 2 groups of images to train on; the head needs more images")
    # The first of round(1 / fraction) grouped stratified folds: a share of about `fraction`.
    folds = StratifiedGroupKFold(max(2, round(1 / fraction)), shuffle=True, random_state=seed)
    fit, held = next(folds.split(indices, labels, groups))
    return indices[fit], indices[held]


class HeadTrainer:
    """Trains heads one after another on one compiled Keras model.

    The stage trains the members of an ensemble per cross-validation fold and of the one
    to keep. Building and
    tracing a Keras model took about 3 s on 2 CPU cores, as long as training a head on
    500 images, so the model is built once, and each training starts from the state it
    was built in (weights, optimizer state, dropout seeds): the same start a fresh model
    built from the same seed would have. The features are standardised outside the
    model, by each training's own statistics (Keras's ``Normalization`` layer would keep
    its first adapted values inside the traced functions); ``export`` puts them in.
    """

    def __init__(self, n_features: int, class_names: tuple[str, ...], settings: HeadSettings, seed: int):
        import keras

        seed_everything(seed)
        self.settings, self.seed = settings, seed
        self.model = make_model(n_features, len(class_names), settings.hidden_units, settings.dropout, settings.l2)
        # Up to 32 steps per call into TensorFlow: Keras's per-step Python cost was about
        # as much as a step of this small network (0.22 s an epoch of 18 steps, 0.12 s so).
        self.model.compile(
            optimizer=keras.optimizers.Adam(settings.learning_rate),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
            steps_per_execution=32,
        )
        self.model.optimizer.build(self.model.trainable_variables)
        self.state = self.model.variables + self.model.optimizer.variables
        self.initial = [variable.numpy() for variable in self.state]
        self.trainings: list[dict] = []  # images, epochs and best epoch of each training, for the run facts

    def train(self, data: FeatureSet, fit: np.ndarray, stop: np.ndarray) -> TrainedHead:
        """Train a head on the images ``fit``: it keeps the weights of the epoch with the
        best ROC AUC on the images ``stop``."""
        import keras
        import tensorflow as tf
        from sklearn.utils.class_weight import compute_class_weight

        began = time.perf_counter()
        for variable, value in zip(self.state, self.initial):
            variable.assign(value)
        settings, seed = self.settings, self.seed
        x, y = data.features, data.labels
        mean, std = x[fit].mean(axis=0), x[fit].std(axis=0)
        standardised = standardise(x, mean, std)
        batches = (
            tf.data.Dataset.from_tensor_slices((standardised[fit], y[fit]))
            .shuffle(len(fit), seed=seed)  # a new order every epoch, the same orders every run
            .batch(settings.batch_size)
        )
        class_weight = None
        if settings.class_weight == "balanced":  # n / (classes * count), scikit-learn's weights
            classes = np.unique(y[fit])
            class_weight = dict(zip(classes.tolist(), compute_class_weight("balanced", classes=classes, y=y[fit])))
        history = self.model.fit(
            batches,
            epochs=settings.max_epochs,
            class_weight=class_weight,
            shuffle=False,  # the dataset shuffles itself, from the seed
            verbose=0,
            callbacks=[
                validation_roc_auc(standardised[stop], y[stop]),  # before EarlyStopping, which reads what it logs
                keras.callbacks.EarlyStopping(
                    monitor="val_roc_auc", mode="max", patience=settings.patience, restore_best_weights=True
                ),
            ],
        ).history
        scores, best = history["val_roc_auc"], int(np.argmax(history["val_roc_auc"]))
        self.trainings.append({"images": len(fit), "epochs": len(scores), "best_epoch": best + 1})
        print(
            f"train_head: trained on {len(fit)} images, stopped on {len(stop)}: best epoch {best + 1} of "
            f"{len(scores)} (validation ROC AUC {scores[best]:.3f}), {time.perf_counter() - began:.1f}s",
            flush=True,
        )
        return TrainedHead(self.model.get_weights(), mean, std, stop, history)

    def probabilities(self, heads: list[TrainedHead], x: np.ndarray) -> np.ndarray:
        """The class probabilities that ``heads`` give the (raw) features ``x``, averaged."""
        each = []
        for head in heads:
            self.model.set_weights(head.weights)
            # One batch: the features of a few thousand images fit, and the callback has
            # already traced this function (Keras's predict() builds a dataset every call).
            each.append(np.asarray(self.model.predict_on_batch(standardise(x, head.mean, head.std)), dtype=np.float64))
        return np.mean(each, axis=0)

    def export(self, heads: list[TrainedHead]):
        """``heads`` as one Keras model from raw features: each standardises them as its
        training did, and their probabilities are averaged."""
        import keras

        settings = self.settings
        n_features, n_classes = self.model.input_shape[1], self.model.output_shape[1]
        inputs = keras.Input(shape=(n_features,), name="features")
        outputs = []
        for number, head in enumerate(heads, start=1):
            member = make_model(
                n_features, n_classes, settings.hidden_units, settings.dropout, settings.l2, name=f"head_{number}"
            )
            member.set_weights(head.weights)
            scaled = keras.layers.Normalization(
                mean=head.mean, variance=np.square(head.std), name=f"standardise_{number}"
            )(inputs)
            outputs.append(member(scaled))
        averaged = keras.layers.Average(name="mean_probabilities")(outputs) if len(outputs) > 1 else outputs[0]
        return keras.Model(inputs, averaged, name="breast_head_ensemble")


def standardise(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(x - mean) / std, as Keras's ``Normalization`` computes it (a tiny std counts as 1e-7)."""
    return ((x - mean) / np.maximum(std, 1e-7)).astype(np.float32)


def fit_and_predict(
    data: FeatureSet, settings: HeadSettings, n_folds: int, seed: int, point: OperatingPoint | None = None
):
    """Fit the ensemble and predict every evaluation (see the module docstring), with each
    image's call at the operating ``point`` if there is one.

    Returns ``(trainer, heads, frames, described)``: the trainer (which exports the heads
    and knows its trainings), the members of the ensemble fitted on all non-test images,
    the rows of the predictions file, and where its operating point is (None without one).
    """
    trainer = HeadTrainer(data.features.shape[1], data.class_names, settings, seed)

    def on_their_stops(heads: list[TrainedHead]) -> tuple[np.ndarray, np.ndarray]:
        # Each member on the images it stopped on: out of fold for the ensemble's images.
        stops = np.concatenate([head.stop for head in heads])
        return stops, np.concatenate([trainer.probabilities([head], data.features[head.stop]) for head in heads])

    heads, frames, described = protocol_predictions(
        data,
        fit=lambda indices: [trainer.train(data, *split) for split in member_splits(data, indices, settings, seed)],
        predict_proba=lambda heads, indices: trainer.probabilities(heads, data.features[indices]),
        n_folds=n_folds,
        seed=seed,
        point=point,
        inner_out_of_fold=lambda heads, _: on_their_stops(heads),
    )
    stops, each = on_their_stops(heads)
    frames.append(
        prediction_frame(
            data.source[stops],
            data.labels[stops],
            each,
            data.class_names,
            "validation",
            "each member on the images that chose its stopping epoch",
            called=point.calls(each, described["min_positive_probability"]) if point else None,
        )
    )
    return trainer, heads, frames, described


def main(argv: list[str]) -> None:
    params = read_params(Params)
    args = stage_args(
        "train_head", argv, "features", "groups", "model", "inputs", "operating_point", "predictions", "history"
    )
    settings, n_folds = params.train_head, params.breast_cv_folds
    data = load_features(args.features, settings.features, "train_head.features", args.groups)
    print(
        f"train_head: {len(data.labels)} images, {data.features.shape[1]}-d features of "
        f"{', '.join(data.blocks)}; hidden units "
        f"{settings.hidden_units}, dropout {settings.dropout}, L2 {settings.l2}, "
        f"{settings.ensemble_members} member(s), {n_folds}-fold CV",
        flush=True,
    )
    started = time.perf_counter()
    point = operating_point(params, settings.target_sensitivity, data, "train_head.target_sensitivity", args.features)
    trainer, heads, frames, described = fit_and_predict(data, settings, n_folds, params.seed, point)
    save_keras_model(trainer.export(heads), args.model)
    write_model_inputs(args.inputs, data)
    write_operating_point(args.operating_point, described, data, point)
    write_predictions(args.predictions, frames)
    shutil.rmtree(args.history, ignore_errors=True)  # no member of an earlier, larger ensemble
    for number, head in enumerate(heads, start=1):
        write_history_csv(head.history, args.history / f"member_{number}.csv")
    seconds = time.perf_counter() - started
    write_run_facts(
        "train_head",
        {
            "seconds": round(seconds, 1),
            "trainings": trainer.trainings,
            "params": trainer.model.count_params() * len(heads),
        },
    )
    print(
        f"train_head: wrote {args.model} and {args.predictions} in {seconds:.1f}s ({len(trainer.trainings)} trainings)"
    )


if __name__ == "__main__":
    run_stage(main, quiet_tensorflow_stderr)

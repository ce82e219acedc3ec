"""Training throughput of the MNIST stage's input pipeline against two baselines.

    python bench/bench_mnist_pipeline.py [--npz data/local/mnist/mnist.npz] [--rounds 15] [--keras-layers]

Trains the stage's CNN on batches of 64 from
  (a) the stage's tf.data pipeline with its ``RandomAffine`` augmentation layer,
  (b) the same pipeline with no augmentation at all,
  (c) the original's way: tf-keras's ImageDataGenerator feeding ``fit`` (pip install -e '.[bench]'),
  (k) with --keras-layers, the same pipeline with Keras's RandomRotation,
      RandomTranslation and RandomZoom instead (what the stage used before),
and prints images per second for each and the ratios a/b, a/c (and k/b). Training
calls the model's compiled training step, the one ``fit`` runs for every batch. Then it
times each input alone, with no training: the most it could feed a faster device.

The variants take turns in one process, a short stretch each (a b c, then b c a, ...),
after an untimed warm-up. This machine's speed jumps between levels for tens of seconds
at a time (some stretches run at exactly half speed), so variants timed minutes apart
are not comparable; each ratio is the median over rounds of the two variants' speeds
within one round, seconds apart. Every stretch starts a fresh iterator of its
pipeline, so no variant's input pipeline works in the background of another's turn.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stages import augment_train_mnist as mnist
from stages.shared.files import read_npz
from stages.shared.runner import run_stage
from stages.shared.tensorflow_runtime import seed_everything

ROTATION, SHIFT, ZOOM = 20, 0.1, 0.2


def load_images(npz: str | None, count: int) -> tuple[np.ndarray, np.ndarray]:
    if npz:
        arrays = read_npz(Path(npz))
        mnist.check_mnist_arrays(arrays, npz)
        return arrays["x_train"][:count], arrays["y_train"][:count]
    rng = np.random.default_rng(0)  # throughput does not depend on what the pixels show
    return rng.integers(0, 256, (count, 28, 28), dtype=np.uint8), rng.integers(0, 10, count).astype(np.uint8)


def compiled_model():
    model = mnist.make_model()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.make_train_function()
    return model


def images_per_second(dataset, consume, steps: int, batch_size: int, untimed: int = 0) -> float:
    """Images per second of ``steps`` calls of ``consume(iterator)`` on a fresh iterator of ``dataset``.

    ``consume`` is ``next``, to time the input alone (the most it could feed a faster
    device), or a model's ``train_function``, to train on each batch. ``untimed`` calls
    come first, to leave start-up out. The last result is fetched, so that work still
    queued on a device counts. The iterator is dropped at the end, which stops its
    background work, so that it does not go on reading ahead during the next turn.
    """
    import tensorflow as tf

    iterator = iter(dataset)
    for _ in range(untimed):
        consume(iterator)
    started = time.perf_counter()
    for _ in range(steps):
        last = consume(iterator)
    tf.nest.map_structure(np.asarray, last)
    took = time.perf_counter() - started
    del iterator
    return steps * batch_size / took


def stage_pipeline(x, y, batch_size, augmentation):
    """The stage's own ``train_dataset``, repeated."""
    return mnist.train_dataset(x, y, batch_size, len(y) // batch_size, augmentation, seed=1).repeat()


def keras_stock_layers():
    """Keras's three separate random layers, called as the stage calls its augmentation layer."""
    import keras
    from keras import layers

    stock = keras.Sequential(
        [
            layers.RandomRotation(ROTATION / 360, fill_mode="constant", seed=1),
            layers.RandomTranslation(SHIFT, SHIFT, fill_mode="constant", seed=2),
            layers.RandomZoom((-ZOOM, ZOOM), fill_mode="constant", seed=3),
        ]
    )
    return lambda images, seed: stock(images, training=True)  # they keep their own random state


def seed_generator(x, y, batch_size):
    """The original's ImageDataGenerator loop (tf-keras), fed as Keras 3's ``fit`` feeds a generator.

    That is, through ``tf.data.Dataset.from_generator`` with prefetch: the generator runs
    in a background thread, as the original's ``fit_generator`` ran it.
    """
    import tensorflow as tf
    from tf_keras.preprocessing.image import ImageDataGenerator

    datagen = ImageDataGenerator(
        rotation_range=ROTATION, width_shift_range=SHIFT, height_shift_range=SHIFT, zoom_range=ZOOM
    )
    flow = datagen.flow(x[..., None].astype(np.float32) / 255.0, y, batch_size=batch_size, seed=1)
    signature = (tf.TensorSpec((batch_size, 28, 28, 1), tf.float32), tf.TensorSpec((batch_size,), y.dtype))
    return tf.data.Dataset.from_generator(lambda: flow, output_signature=signature).prefetch(tf.data.AUTOTUNE)


VARIANTS = {
    "a": "stage pipeline (tf.data + RandomAffine layer)",
    "b": "same pipeline, no augmentation",
    "c": "original's ImageDataGenerator loop",
    "k": "same pipeline, Keras's 3 stock random layers",
}


def make_batches(variant: str, x, y, batch_size: int):
    if variant == "a":
        return stage_pipeline(x, y, batch_size, mnist.make_augmentation(ROTATION, SHIFT, ZOOM))
    if variant == "b":
        return stage_pipeline(x, y, batch_size, None)
    if variant == "k":
        return stage_pipeline(x, y, batch_size, keras_stock_layers())
    return seed_generator(x, y, batch_size)


def median(values: list[float]) -> float:
    return float(np.median(values))


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="timed batches per variant per round")
    parser.add_argument("--warmup", type=int, default=20, help="untimed batches per variant, once")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--feed-steps", type=int, default=200, help="batches read to time each input alone")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--npz", help="a Keras-layout MNIST .npz (default: random pixels)")
    parser.add_argument("--no-deterministic", action="store_true", help="leave TF op determinism off")
    parser.add_argument("--keras-layers", action="store_true", help="also time Keras's stock random layers (k)")
    args = parser.parse_args(argv)

    keys = [key for key in VARIANTS if key != "k" or args.keras_layers]
    try:
        import tf_keras  # noqa: F401
    except ImportError:
        print("tf-keras is not installed (pip install -e '.[bench]'): skipping variant c", file=sys.stderr)
        keys.remove("c")
    print(
        f"{os.cpu_count()} CPU cores; op determinism {'off' if args.no_deterministic else 'on'}; "
        f"{args.rounds} rounds of {args.steps} timed batches of {args.batch_size} per variant, "
        f"after {args.warmup} warm-up batches",
        flush=True,
    )
    seed_everything(0, deterministic=not args.no_deterministic)
    x, y = load_images(args.npz, 8192)
    # A model per variant, so that each keeps its own compiled training step.
    runs = {key: (compiled_model(), make_batches(key, x, y, args.batch_size)) for key in keys}
    for model, batches in runs.values():
        images_per_second(batches, model.train_function, args.warmup, args.batch_size)
    speeds: dict[str, list[float]] = {key: [] for key in keys}
    for round_ in range(args.rounds):
        for key in keys[round_ % len(keys) :] + keys[: round_ % len(keys)]:  # rotate who goes first
            model, batches = runs[key]
            speeds[key].append(images_per_second(batches, model.train_function, args.steps, args.batch_size))
        print(f"round {round_ + 1}: " + ", ".join(f"{key} {speeds[key][-1]:.0f}" for key in keys), flush=True)

    feeds = {
        key: images_per_second(batches, next, args.feed_steps, args.batch_size, untimed=1)
        for key, (_, batches) in runs.items()
    }

    def ratio(top: str, bottom: str) -> str:
        ratios = [t / b for t, b in zip(speeds[top], speeds[bottom])]
        return f"{top}/{bottom} = {median(ratios):.3f} (rounds {min(ratios):.3f}-{max(ratios):.3f})"

    for key in keys:
        print(
            f"{key}: {VARIANTS[key]:<48} {median(speeds[key]):6.0f} images/s trained (median of "
            f"{args.rounds} rounds); the input alone: {feeds[key]:6.0f} images/s"
        )
    print(f"{ratio('a', 'b')}  goal >= 0.95: augmentation costs under 5%")
    if "c" in keys:
        print(f"{ratio('a', 'c')}  goal >= 1.0: at least as fast as the original's loop")
    if "k" in keys:
        print(f"{ratio('k', 'b')}  Keras's stock layers, for comparison")


if __name__ == "__main__":
    run_stage(main)  # a bad --npz file is one line that names it

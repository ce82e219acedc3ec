"""Training throughput of the MNIST stage's input pipeline against two baselines.

    python bench/bench_mnist_pipeline.py [--steps 120] [--npz data/local/mnist/mnist.npz]

Trains the stage's CNN for the same number of batches through
  (a) the stage's tf.data pipeline with Keras augmentation layers,
  (b) the same pipeline with no augmentation at all,
  (c) the seed's way: tf-keras's ImageDataGenerator feeding ``fit`` (pip install -e '.[bench]'),
in one process, and prints images per second for each and the ratios a/b and a/c.
Each variant first runs warm-up steps (tracing, thread pools) that are not timed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stages import augment_train_mnist as mnist  # noqa: E402
from stages import common  # noqa: E402

ROTATION, SHIFT, ZOOM = 20, 0.1, 0.2


def load_images(npz: str | None, count: int) -> tuple[np.ndarray, np.ndarray]:
    if npz:
        with np.load(npz) as data:
            return data["x_train"][:count], data["y_train"][:count]
    rng = np.random.default_rng(0)  # throughput does not depend on what the pixels show
    return rng.integers(0, 256, (count, 28, 28), dtype=np.uint8), rng.integers(0, 10, count).astype(np.uint8)


def compiled_model():
    model = mnist.make_model()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def timed_fit(model, batches, warmup: int, steps: int, batch_size: int) -> float:
    """Images per second over ``steps`` batches, after ``warmup`` untimed ones."""
    model.fit(batches, steps_per_epoch=warmup, epochs=1, verbose=0)
    started = time.perf_counter()
    model.fit(batches, steps_per_epoch=steps, epochs=1, verbose=0)
    return steps * batch_size / (time.perf_counter() - started)


def stage_pipeline(x, y, batch_size, augment: bool):
    """The stage's own ``train_dataset``, repeated so that warm-up and timed steps draw from it."""
    augmentation = mnist.make_augmentation(*((ROTATION, SHIFT, ZOOM) if augment else (0, 0, 0)), seed=1)
    return mnist.train_dataset(x, y, batch_size, len(y) // batch_size, augmentation, seed=1).repeat()


def seed_generator(x, y, batch_size):
    """The seed's ImageDataGenerator loop, from the tf-keras package."""
    from tf_keras.preprocessing.image import ImageDataGenerator

    datagen = ImageDataGenerator(rotation_range=ROTATION, width_shift_range=SHIFT, height_shift_range=SHIFT,
                                 zoom_range=ZOOM)
    flow = datagen.flow(x[..., None].astype(np.float32) / 255.0, y, batch_size=batch_size, seed=1)
    return (batch for batch in flow)  # Keras 3 takes a plain Python generator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=120, help="timed batches per variant")
    parser.add_argument("--warmup", type=int, default=15, help="untimed batches per variant")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--npz", help="a Keras-layout MNIST .npz (default: random pixels)")
    parser.add_argument("--no-deterministic", action="store_true", help="leave TF op determinism off")
    args = parser.parse_args()

    common.seed_everything(0, deterministic=not args.no_deterministic)
    x, y = load_images(args.npz, 8192)
    variants = {
        "a: stage pipeline (tf.data + augmentation layers)": stage_pipeline(x, y, args.batch_size, augment=True),
        "b: same pipeline, no augmentation": stage_pipeline(x, y, args.batch_size, augment=False),
    }
    try:
        variants["c: seed's ImageDataGenerator loop"] = seed_generator(x, y, args.batch_size)
    except ImportError:
        print("tf-keras is not installed (pip install -e '.[bench]'): skipping variant c", file=sys.stderr)

    print(f"{os.cpu_count()} CPU cores; op determinism {'off' if args.no_deterministic else 'on'}; "
          f"{args.steps} timed batches of {args.batch_size} per variant after {args.warmup} warm-up batches")
    speed = {}
    for name, batches in variants.items():
        speed[name[0]] = timed_fit(compiled_model(), batches, args.warmup, args.steps, args.batch_size)
        print(f"{name:<52} {speed[name[0]]:8.0f} images/s", flush=True)
    print(f"a/b = {speed['a'] / speed['b']:.3f}  (goal >= 0.95: augmentation costs under 5%)")
    if "c" in speed:
        print(f"a/c = {speed['a'] / speed['c']:.3f}  (goal >= 1.0: at least as fast as the seed's loop)")


if __name__ == "__main__":
    main()

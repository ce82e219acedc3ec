"""Training throughput of the MNIST stage's input pipeline against two baselines.

    python bench/bench_mnist_pipeline.py [--steps 120] [--npz data/local/mnist/mnist.npz]

Trains the stage's CNN for the same number of batches through
  (a) the stage's tf.data pipeline with Keras augmentation layers,
  (b) the same pipeline with no augmentation at all,
  (c) the seed's way: tf-keras's ImageDataGenerator feeding ``fit`` (pip install -e '.[bench]'),
in one process, and prints images per second for each and the ratios a/b and a/c.
Each turn runs in a fresh child process (no thread pools or graphs left over from
another variant) and first runs warm-up steps that are not timed; the variants take
turns over several rounds (a b c a b c ...) so that neither order nor a passing load
on the machine favours one, and each variant's best turn counts.
"""

from __future__ import annotations

import argparse
import os
import subprocess
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


VARIANTS = {
    "a": "stage pipeline (tf.data + augmentation layers)",
    "b": "same pipeline, no augmentation",
    "c": "seed's ImageDataGenerator loop",
}


def one_turn(args: argparse.Namespace) -> float:
    """Images per second of ``args.variant`` in this process."""
    common.seed_everything(0, deterministic=not args.no_deterministic)
    x, y = load_images(args.npz, 8192)
    if args.variant == "c":
        batches = seed_generator(x, y, args.batch_size)
    else:
        batches = stage_pipeline(x, y, args.batch_size, augment=args.variant == "a")
    return timed_fit(compiled_model(), batches, args.warmup, args.steps, args.batch_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100, help="timed batches per turn")
    parser.add_argument("--warmup", type=int, default=15, help="untimed batches per turn")
    parser.add_argument("--rounds", type=int, default=3, help="turns per variant")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--npz", help="a Keras-layout MNIST .npz (default: random pixels)")
    parser.add_argument("--no-deterministic", action="store_true", help="leave TF op determinism off")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # one turn, in a child
    args = parser.parse_args()
    if args.variant:
        print(f"{one_turn(args):.1f}")
        return

    variants = dict(VARIANTS)
    try:
        import tf_keras  # noqa: F401
    except ImportError:
        print("tf-keras is not installed (pip install -e '.[bench]'): skipping variant c", file=sys.stderr)
        del variants["c"]
    print(f"{os.cpu_count()} CPU cores; op determinism {'off' if args.no_deterministic else 'on'}; "
          f"{args.steps} timed batches of {args.batch_size} per turn after {args.warmup} warm-up batches; "
          f"{args.rounds} rounds", flush=True)
    speeds: dict[str, list[float]] = {key: [] for key in variants}
    for _ in range(args.rounds):
        for key in variants:
            child = subprocess.run(
                [sys.executable, __file__, *sys.argv[1:], "--variant", key],
                capture_output=True, text=True, check=True,
                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
            )
            speeds[key].append(float(child.stdout.split()[-1]))
    best = {key: max(values) for key, values in speeds.items()}
    for key, name in variants.items():
        turns = ", ".join(f"{v:.0f}" for v in speeds[key])
        print(f"{key}: {name:<48} {best[key]:6.0f} images/s (turns: {turns})")
    print(f"a/b = {best['a'] / best['b']:.3f}  (goal >= 0.95: augmentation costs under 5%)")
    if "c" in best:
        print(f"a/c = {best['a'] / best['c']:.3f}  (goal >= 1.0: at least as fast as the seed's loop)")


if __name__ == "__main__":
    main()

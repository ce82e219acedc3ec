"""Benchmark VGG feature extraction: the original's way against the stage's way.

    python bench/bench_vgg_features.py [--images 64] [--npz PATH] [--batch-size 16]

(a) the original's way: every image prepared up front into one float array, then one
    ``model.predict`` call per image;
(b) ``extract_vgg_features``'s way: images decoded and resized a batch at a time and
    one ``predict_on_batch`` call per batch.

Both run on the same images (random 224x224 grey ones, or the first ``--images`` of
an .npz in MedMNIST's layout) with the same seeded random weights (``weights=None``:
the ImageNet file cannot be downloaded everywhere; the arithmetic is the same). Each
way runs in a child process of its own after one untimed warm-up call, so neither
inherits the other's memory or compiled graphs. Memory is the peak resident set size
(RSS, sampled by psutil every 5 ms) of that child while it extracts, model included.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere, no install

from stages import extract_vgg_features as stage
from stages.shared import backbone as shared_backbone
from stages.shared import breast_data
from stages.shared import images as shared_images
from stages.shared.tensorflow_runtime import seed_everything

SEED = 0


class PeakRss:
    """Samples this process's resident set size in a thread and keeps the maximum."""

    def __init__(self, interval_s: float = 0.005):
        import psutil

        self._process, self._interval = psutil.Process(), interval_s
        self._stop = threading.Event()
        self.peak_bytes = self._process.memory_info().rss

    def _sample(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak_bytes = max(self.peak_bytes, self._process.memory_info().rss)

    def __enter__(self) -> PeakRss:
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def load_images(npz: str | None, count: int) -> breast_data.ImageSet:
    """``count`` uint8 images: the first ones of ``npz``, or random 224x224 grey ones."""
    if npz:
        source = breast_data.load_npz_images(Path(npz))
        raw = [source.read(i) for i in range(min(count, len(source)))]
    else:
        raw = list(np.random.default_rng(SEED).integers(0, 256, (count, 224, 224), dtype=np.uint8))
    return breast_data.ImageSet(
        read=raw.__getitem__,
        labels=np.zeros(len(raw), dtype=np.int64),
        split=np.array(["train"] * len(raw)),
        source=np.array([str(i) for i in range(len(raw))]),
        class_names=("unused",),
        identity="bench",
    )


def original_way(model, preprocess, images: breast_data.ImageSet, image_size: int) -> np.ndarray:
    """As the original: the whole data set in memory as floats, then one predict per image."""
    prepared = np.stack([shared_images.prepare_image(images.read(i), image_size) for i in range(len(images))])
    rows = [model.predict(preprocess(image[np.newaxis]), verbose=0)[0] for image in prepared]
    return np.stack(rows)


def stage_way(model, preprocess, images: breast_data.ImageSet, image_size: int, batch_size: int) -> np.ndarray:
    forward = stage.make_forward_pass(model, preprocess)
    features, _ = stage.extract_features(
        forward, model.output_shape[-1], images, image_size, batch_size, progress_every=None
    )
    return features


def run_one_way(way: str, args: argparse.Namespace, results: multiprocessing.Queue) -> None:
    """In a child process: build the model, warm it up, then time one way over the images."""
    seed_everything(SEED)
    model = shared_backbone.build_extractor(args.backbone, "none", args.layer, args.image_size)
    preprocess = shared_backbone.preprocess_function(args.backbone)
    images = load_images(args.npz, args.images)
    warm_up = np.zeros((args.batch_size, args.image_size, args.image_size, 3), "float32")
    if way == "original":
        model.predict(preprocess(warm_up[:1]), verbose=0)
    else:
        model.predict_on_batch(preprocess(warm_up))
    with PeakRss() as memory:
        started = time.perf_counter()
        if way == "original":
            features = original_way(model, preprocess, images, args.image_size)
        else:
            features = stage_way(model, preprocess, images, args.image_size, args.batch_size)
        seconds = time.perf_counter() - started
    results.put({"seconds": seconds, "peak_rss_mib": memory.peak_bytes / 2**20, "features": features})


def measure(way: str, args: argparse.Namespace) -> dict:
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    child = context.Process(target=run_one_way, args=(way, args, results))
    child.start()
    result = results.get()  # before join: a child with a full queue pipe would never exit
    child.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=64, help="how many images (default 64)")
    parser.add_argument("--npz", help="take the images from this .npz (MedMNIST layout), not random ones")
    parser.add_argument("--batch-size", type=int, default=16, help="the stage's batch size (default 16)")
    parser.add_argument("--backbone", choices=("vgg19", "vgg16"), default="vgg19")
    parser.add_argument("--layer", choices=(*shared_backbone.TOP_LAYERS, *shared_backbone.POOLED_LAYERS), default="fc1")
    parser.add_argument("--image-size", type=int, default=shared_backbone.TOP_IMAGE_SIZE)
    args = parser.parse_args()

    print(
        f"{args.images} images, {args.backbone} {args.layer} at {args.image_size}x{args.image_size}, "
        f"random weights, {'from ' + args.npz if args.npz else 'random pixels'}",
        flush=True,
    )
    original = measure("original", args)
    batched = measure("stage", args)
    ways = (("the original: one predict per image", original), (f"stage: batches of {args.batch_size}", batched))
    for name, result in ways:
        rate = len(result["features"]) / result["seconds"]
        print(
            f"{name:32s} {rate:6.2f} images/s  ({result['seconds']:.1f}s)  "
            f"peak RSS while extracting {result['peak_rss_mib']:.0f} MiB",
            flush=True,
        )
    speedup = original["seconds"] / batched["seconds"]
    difference = np.abs(original["features"] - batched["features"]).max() / np.abs(original["features"]).max()
    print(f"speed-up {speedup:.2f}x; largest feature difference {difference:.1e} of the largest feature")


if __name__ == "__main__":
    main()

"""Measure classify-images' flag for images unlike the training images.

    python bench/measure_novelty_flag.py --breast data/local/breast/breastmnist_28.npz --mnist PATH/mnist.npz
        [--per-kind 50]

Run from the project root after `dvc repro` (the breast models and the novelty threshold
must be there). Every image goes through classify-images' own breast pipeline (the same
reading, resizing, backbone, model and flag), from arrays instead of files. The flag's
false-positive rate is measured on the BreastMNIST test split (in distribution: never
used to fit anything), its true-positive rate on images of other kinds:

* MNIST test digits;
* uniform random noise, grey and colour;
* smooth random textures (noise blurred);
* geometric shapes (ellipses and rectangles on a flat background);
* flat images and linear gradients.

Last, what the flag cannot see: the reference restricted to the non-test benign or
normal scans, with its own threshold, and the test split's malignant scans measured
against it. A scan of the same kind is near the reference even when its class is not in it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere, no install

from stages import fit_knn
from stages.commands import classifiers
from stages.commands.model_files import stage_paths
from stages.shared import breast
from stages.shared import images as shared_images
from stages.shared.breast import load_features
from stages.shared.config import read_params
from stages.shared.files import read_npz

SEED = 0


def other_kinds(mnist: Path, n: int) -> dict[str, np.ndarray]:
    """``n`` images of each out-of-distribution kind, uint8, 28x28 grey or 64x64 colour."""
    rng = np.random.default_rng(SEED)
    digits = read_npz(mnist, ("x_test",))["x_test"][:n]
    grey_noise = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    colour_noise = rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)
    textures = []
    for _ in range(n):  # noise averaged over a random window: blobs of some size
        width = int(rng.integers(2, 8))
        kernel = np.ones(width) / width
        field = rng.normal(size=(28 + width, 28 + width))
        field = np.apply_along_axis(np.convolve, 0, field, kernel, "valid")
        field = np.apply_along_axis(np.convolve, 1, field, kernel, "valid")[:28, :28]
        textures.append((field - field.min()) / np.ptp(field) * 255)
    rows, cols = np.mgrid[:28, :28]
    shapes = []
    for _ in range(n):
        image = np.full((28, 28), rng.integers(0, 256), float)
        for _ in range(int(rng.integers(1, 4))):
            r, c, h, w = rng.integers(3, 25), rng.integers(3, 25), rng.integers(2, 10), rng.integers(2, 10)
            inside = (
                ((rows - r) / h) ** 2 + ((cols - c) / w) ** 2 <= 1
                if rng.random() < 0.5
                else (abs(rows - r) <= h) & (abs(cols - c) <= w)
            )
            image[inside] = rng.integers(0, 256)
        shapes.append(image)
    flats = []
    for i in range(n):  # half flat, half a gradient in a random direction
        angle, low, high = rng.uniform(0, np.pi), rng.integers(0, 128), rng.integers(128, 256)
        ramp = np.cos(angle) * rows + np.sin(angle) * cols
        ramp = (ramp - ramp.min()) / np.ptp(ramp)
        flats.append(np.full((28, 28), low, float) if i % 2 else low + (high - low) * ramp)
    return {
        "MNIST digits": digits,
        "uniform noise, grey": grey_noise,
        "uniform noise, colour": colour_noise,
        "smooth random textures": np.asarray(textures, np.uint8),
        "geometric shapes": np.asarray(shapes, np.uint8),
        "flat images and gradients": np.asarray(flats, np.uint8),
    }


def flagged(columns, size: int, images: np.ndarray, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """classify-images' ``unlike_training`` and ``nearest_distance`` for an array of images."""
    flags, distances = [], []
    for start in range(0, len(images), batch_size):
        batch = np.stack(
            [shared_images.prepare_image(image, size, "RGB") for image in images[start : start + batch_size]]
        )
        other = columns(batch)[1]
        flags.append(other["unlike_training"])
        distances.append(other["nearest_distance"])
    return np.concatenate(flags), np.concatenate(distances)


def unseen_class_rate(features_path: Path, groups_path: Path, percentile: float) -> tuple[int, float]:
    """How often the test split's malignant scans are flagged against a reference of the
    non-test benign or normal ones alone, with a threshold fitted on that reference."""
    data = load_features(features_path, read_params(fit_knn.Params).fit_knn.features, "fit_knn.features", groups_path)
    benign = (data.split != "test") & (data.labels == data.class_names.index("normal_or_benign"))
    malignant = (data.split == "test") & (data.labels == data.class_names.index("malignant"))
    knn = fit_knn.make_knn_pipeline(1).fit(data.features[benign], data.labels[benign])
    threshold = fit_knn.novelty_threshold(knn, percentile)["threshold"]
    return int(malignant.sum()), float((breast.nearest_distances(knn, data.features[malignant]) > threshold).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--breast", type=Path, required=True, help="BreastMNIST .npz (its test split)")
    parser.add_argument("--mnist", type=Path, required=True, help="MNIST .npz with x_test")
    parser.add_argument("--per-kind", type=int, default=50, help="images of each other kind")
    parser.add_argument("--features", type=Path, default=Path("data/breast/features.npz"))
    parser.add_argument(
        "--groups", type=Path, default=Path("data/breast/near_copies.csv"), help="find_near_copies' groups"
    )
    args = parser.parse_args()
    classifier = classifiers.breast_classifier("breast-head")
    columns, size, threshold = classifier.columns, classifier.image_size, classifier.novelty_threshold
    novelty = json.loads(stage_paths("fit_knn")["novelty"].read_text())
    kinds = {
        "BreastMNIST test split (in distribution)": read_npz(args.breast, ("test_images",))["test_images"],
        **other_kinds(args.mnist, args.per_kind),
    }
    print(
        f"threshold {threshold:.4f}: the {novelty['percentile']:g}th percentile of the "
        f"{novelty['training_images']} training images' leave-one-out nearest-neighbour distances\n"
    )
    print("| images | n | flagged | rate | median distance |\n| --- | --- | --- | --- | --- |")
    for kind, images in kinds.items():
        flags, distances = flagged(columns, size, images)
        print(
            f"| {kind} | {len(flags)} | {int(flags.sum())} | {flags.mean():.3f} | {np.median(distances):.4f} |",
            flush=True,
        )
    n, rate = unseen_class_rate(args.features, args.groups, novelty["percentile"])
    print(
        f"| malignant test scans against a benign-or-normal-only reference (a class the reference lacks) | "
        f"{n} | {round(rate * n)} | {rate:.3f} | |"
    )


if __name__ == "__main__":
    main()

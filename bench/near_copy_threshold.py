"""Where to set ``find_near_copies.min_correlation``: how many images each threshold groups,
and a picture of the pairs on either side of it.

    python bench/near_copy_threshold.py --data data/local/breast/breastmnist_28.npz \
        [--features data/breast/features.npz] [--picture docs/images/near_copy_threshold.png]

For each threshold, by ``stages.shared.near_copies``' own rule (pixel correlation of 28x28
grey thumbnails, groups joined through shared images): the images with a near-copy, the
groups, the largest group, the test images with a near-copy outside the test split, and the
groups whose images carry different labels. The picture shows, for bands of each image's
highest correlation with another image, a few random pairs side by side, so that a person
can see where "the same scan" ends. With ``--features`` (``extract_vgg_features``' output of
the same images), the same counts for the other rule one might try, the cosine of the block-5
features, to show how it chains different scans into one group.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from stages.shared.breast_data import load_image_folder, load_npz_images
from stages.shared.files import save_figure
from stages.shared.near_copies import group_ids, thumbnail, unit_rows

THRESHOLDS = (0.999, 0.99, 0.98, 0.97, 0.96, 0.95, 0.94, 0.93, 0.92, 0.90)
BANDS = ((0.90, 0.92), (0.92, 0.94), (0.94, 0.95), (0.95, 0.96), (0.96, 0.98), (0.98, 1.0))
PAIRS_PER_BAND = 6


def counts(similarity: np.ndarray, threshold: float, labels: np.ndarray, split: np.ndarray) -> str:
    """One table row: what grouping at ``threshold`` does."""
    first, second = np.nonzero(np.triu(similarity >= threshold, k=1))
    groups = group_ids(len(labels), first, second)
    sizes = np.bincount(groups)[groups]
    fitted = set(groups[split != "test"])
    test_with_copy = sum(g in fitted for g in groups[split == "test"])
    conflicting = sum(len(set(labels[groups == g])) > 1 for g in np.unique(groups[sizes > 1]))
    return (
        f"| {threshold} | {(sizes > 1).sum()} | {len(np.unique(groups[sizes > 1]))} | {sizes.max()} "
        f"| {test_with_copy} | {conflicting} |"
    )


def draw_bands(images, similarity: np.ndarray, path: Path) -> None:
    from matplotlib.figure import Figure

    best, partner = similarity.max(axis=1), similarity.argmax(axis=1)
    rng = np.random.default_rng(0)
    fig = Figure(figsize=(2 * PAIRS_PER_BAND * 1.1, 1.35 * len(BANDS)))
    for row, (low, high) in enumerate(BANDS):
        pairs = [i for i in np.flatnonzero((best >= low) & (best < high)) if i < partner[i]]
        chosen = rng.permutation(pairs)[:PAIRS_PER_BAND]
        for column in range(2 * PAIRS_PER_BAND):
            ax = fig.add_subplot(len(BANDS), 2 * PAIRS_PER_BAND, row * 2 * PAIRS_PER_BAND + column + 1)
            ax.axis("off")
            pair = column // 2
            if pair < len(chosen):
                i = chosen[pair]
                ax.imshow(images.read(partner[i] if column % 2 else i), cmap="gray", vmin=0, vmax=255)
                if column % 2 == 0:
                    ax.set_title(f"{best[i]:.3f}", fontsize=7, loc="left")
            if column == 0:
                ax.text(-0.9, 0.5, f"{low} to {high}", transform=ax.transAxes, fontsize=8, ha="right")
    fig.suptitle("Pairs of images by their thumbnails' pixel correlation (each pair side by side)", fontsize=9)
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="a MedMNIST-layout .npz or a folder of class folders")
    parser.add_argument("--features", type=Path, help="extract_vgg_features' output of the same images")
    parser.add_argument("--picture", type=Path, help="where to draw the pairs on either side of the thresholds")
    args = parser.parse_args()
    images = load_image_folder(args.data) if args.data.is_dir() else load_npz_images(args.data)
    unit = unit_rows(np.stack([thumbnail(images.read(i)) for i in range(len(images))]))
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    header = "| threshold | images with a near-copy | groups | largest | test images with one outside | two labels |"
    print(f"pixel correlation of 28x28 thumbnails, {len(images)} images\n{header}\n{'| --- ' * 6}|")
    for threshold in THRESHOLDS:
        print(counts(similarity, threshold, images.labels, images.split))
    if args.features:
        with np.load(args.features) as saved:
            blocks = saved["feature_blocks"].tolist()
            start = int(np.sum(saved["block_widths"][: blocks.index("block5")]))
            block5 = saved["features"][:, start : start + saved["block_widths"][blocks.index("block5")]]
        normed = block5 / np.linalg.norm(block5, axis=1, keepdims=True)
        cosine = normed.astype(np.float64) @ normed.T
        np.fill_diagonal(cosine, -np.inf)
        print(f"\ncosine of the block-5 features\n{header}\n{'| --- ' * 6}|")
        for threshold in (0.99, 0.98, 0.97, 0.96, 0.95):
            print(counts(cosine, threshold, images.labels, images.split))
    if args.picture:
        draw_bands(images, similarity, args.picture)
        print(f"\nwrote {args.picture}")


if __name__ == "__main__":
    main()

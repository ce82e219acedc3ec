"""What the operating point costs and how honest its figure is on data without a test split.

    python bench/measure_operating_point.py --features data/breast/features.npz \
        [--groups data/breast/near_copies.csv] [--target 0.9] [--seeds 42]

A lab's folder has no test split, so its figure at the operating point comes from the
cross-validation, with each fold's cut chosen without that fold's images: for the KNN by
nested cross-validation, for the head by its ensemble members' predictions on the images
each stopped on (no extra training, but those images chose each member's epoch). This runs
both classifiers' own ``fit_and_predict`` on BreastMNIST's non-test images as if they were
such a folder (every image ``train``), with params.yaml's settings, and prints for each the
sensitivity and specificity its calls reach against the target, and the seconds it took
with and without the operating point. A cut chosen on the same images it is read on would
reach the target by construction; one that falls short of it shows how optimistic the cuts
are.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere, no install

from stages import fit_knn, train_head
from stages.shared.breast import OperatingPoint, load_features
from stages.shared.config import read_params


def reached(frames: list, positive: str) -> tuple[float, float]:
    """Sensitivity and specificity of the held-out rows' calls at the operating point."""
    rows = pd.concat(frames).query("evaluation == 'heldout'")
    actual, called = rows["actual"] == positive, rows["called"] == positive
    return float(called[actual].mean()), float((~called[~actual]).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", type=Path, required=True)
    parser.add_argument("--groups", type=Path, default=Path("data/breast/near_copies.csv"))
    parser.add_argument("--target", type=float, default=0.9)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    args = parser.parse_args()
    knn_params, head_params = read_params(fit_knn.Params), read_params(train_head.Params)
    print("| classifier | seed | sensitivity reached | specificity | seconds with the point | without |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, stage, params, settings in (
        ("KNN (nested)", fit_knn, knn_params, knn_params.fit_knn),
        ("head (members' stopping folds)", train_head, head_params, head_params.train_head),
    ):
        data = load_features(args.features, settings.features, f"{name} features", args.groups)
        folder = np.flatnonzero(data.split != "test")
        data = dataclasses.replace(
            data,
            **{field: getattr(data, field)[folder] for field in ("features", "labels", "source", "groups")},
            split=np.full(len(folder), "train"),
        )
        point = OperatingPoint(data.class_names.index("malignant"), args.target)
        for seed in args.seeds:
            seconds = []
            for with_point in (point, None):
                started = time.perf_counter()
                result = stage.fit_and_predict(data, settings, params.breast_cv_folds, seed, with_point)
                seconds.append(time.perf_counter() - started)
                if with_point:
                    sensitivity, specificity = reached(result[-2], "malignant")
            print(
                f"| {name} | {seed} | {sensitivity:.3f} (target {args.target}) | {specificity:.3f} "
                f"| {seconds[0]:.1f} | {seconds[1]:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()

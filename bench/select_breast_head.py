"""Choose the breast head's ensemble size by cross-validation of the non-test images, over seeds.

    python bench/select_breast_head.py --features data/breast/features.npz [--members 1 5] [--seeds 42 43 44 45 46]

Run from the project root. On the blocks ``train_head.features`` names, for each ``train_head.ensemble_members`` and seed, runs
``train_head``'s own ``fit_and_predict`` with params.yaml's other ``train_head`` settings
and ``breast_cv_folds``, and scores its predictions with ``evaluate``'s ``score``. The
choice is the size with the best mean ``cv`` ROC AUC: stratified cross-validation of the
non-test images in which every fold fits a whole ensemble, so it scores the method that
is reported, and never looks at the test split. The test split's figures (``heldout``) are
printed beside it, for the report, once the choice is made.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere, no install

from stages import train_head
from stages.evaluate import score
from stages.shared.breast import load_features
from stages.shared.config import read_params
from stages.shared.predictions import PROBABILITY_PREFIX


def figures(frames: list, evaluation: str, class_names: tuple[str, ...]) -> tuple[float, float]:
    """Accuracy and ROC AUC of one evaluation's rows."""
    import pandas as pd

    rows = pd.concat(frames, ignore_index=True).query("evaluation == @evaluation")
    index = {name: i for i, name in enumerate(class_names)}
    probabilities = rows[[PROBABILITY_PREFIX + name for name in class_names]].to_numpy(np.float64)
    metrics = score(
        rows["actual"].map(index).to_numpy(), rows["predicted"].map(index).to_numpy(), probabilities, class_names
    )
    return metrics["accuracy"], metrics["roc_auc"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", type=Path, required=True)
    parser.add_argument(
        "--groups", type=Path, default=Path("data/breast/near_copies.csv"), help="find_near_copies' groups"
    )
    parser.add_argument("--members", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44, 45, 46])
    args = parser.parse_args()
    params = read_params(train_head.Params)
    data = load_features(args.features, params.train_head.features, "train_head.features", args.groups)
    table = {}
    for members in args.members:
        settings = params.train_head.model_copy(update={"ensemble_members": members})
        for seed in args.seeds:
            started = time.perf_counter()
            _, _, frames, _ = train_head.fit_and_predict(data, settings, params.breast_cv_folds, seed)
            table[members, seed] = (
                *figures(frames, "cv", data.class_names),
                *figures(frames, "heldout", data.class_names),
                time.perf_counter() - started,
            )
            print(
                f"members {members} seed {seed}: cv ACC/AUC {table[members, seed][0]:.4f} / "
                f"{table[members, seed][1]:.4f}, {table[members, seed][4]:.0f}s",
                file=sys.stderr,
                flush=True,
            )
    print(
        "| members | seed | cv ACC | cv AUC | test ACC | test AUC | seconds |\n| --- | --- | --- | --- | --- | --- | --- |"
    )
    for (members, seed), row in table.items():
        print(f"| {members} | {seed} | " + " | ".join(f"{value:.4f}" for value in row[:4]) + f" | {row[4]:.0f} |")
    for members in args.members:
        rows = np.array([table[members, seed] for seed in args.seeds])
        print(
            f"| {members} | mean (std) | "
            + " | ".join(f"{m:.4f} ({s:.4f})" for m, s in zip(rows.mean(0)[:4], rows.std(0, ddof=1)[:4]))
            + f" | {rows[:, 4].mean():.0f} |"
        )
    chosen = max(args.members, key=lambda m: np.mean([table[m, seed][1] for seed in args.seeds]))
    print(f"\nchosen by mean cv ROC AUC: ensemble_members {chosen}")


if __name__ == "__main__":
    main()

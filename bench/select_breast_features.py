"""Choose the blocks of features each breast classifier reads, by cross-validation of the non-test images.

    python bench/select_breast_features.py --features data/breast/features.npz --classifier knn
        [--candidates block5 block4,block5 ...] [--seeds 42 43 44 45 46]

Run from the project root, on features that hold every candidate block (params.yaml's
``extract_vgg_features.blocks``). For each candidate (comma-separated block names; by
default every non-empty set of the extracted blocks for the KNN, and the last one, two,
... blocks for the head) and seed, runs the classifier stage's own ``fit_and_predict``
with params.yaml's other settings and ``breast_cv_folds``, and scores its predictions
with ``evaluate``'s ``score``. The choice is the candidate with the best mean ``cv`` ROC
AUC: stratified cross-validation of the non-test images, which never looks at the test
split. The chosen candidate's test-split figures (``heldout``) are printed after the
choice, for the report, and no other candidate's.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere, no install

from select_breast_head import figures

from stages import fit_knn, train_head
from stages.shared.breast import load_features
from stages.shared.config import read_params
from stages.shared.files import read_npz


def default_candidates(blocks: list[str], classifier: str) -> list[list[str]]:
    """Every non-empty set of ``blocks`` for the KNN (each fit takes milliseconds); for the
    head (minutes), the last block, the last two, and so on."""
    if classifier == "head":
        return [blocks[-n:] for n in range(1, len(blocks) + 1)]
    return [list(chosen) for n in range(1, len(blocks) + 1) for chosen in itertools.combinations(blocks, n)]


def predictions(classifier: str, features: Path, groups: Path, blocks: list[str], seed: int):
    """The predictions frames of one run of the classifier's stage code on ``blocks``."""
    if classifier == "knn":
        params = read_params(fit_knn.Params)
        data = load_features(features, blocks, "--candidates", groups)
        return data, fit_knn.fit_and_predict(data, params.fit_knn, params.breast_cv_folds, seed)[1]
    params = read_params(train_head.Params)
    data = load_features(features, blocks, "--candidates", groups)
    return data, train_head.fit_and_predict(data, params.train_head, params.breast_cv_folds, seed)[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", type=Path, required=True)
    parser.add_argument(
        "--groups", type=Path, default=Path("data/breast/near_copies.csv"), help="find_near_copies' groups"
    )
    parser.add_argument("--classifier", choices=["knn", "head"], required=True)
    parser.add_argument("--candidates", nargs="+", help="comma-separated block names, e.g. block4,block5")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44, 45, 46])
    args = parser.parse_args()
    extracted = read_npz(args.features, ["feature_blocks"])["feature_blocks"].tolist()
    candidates = (
        [c.split(",") for c in args.candidates] if args.candidates else default_candidates(extracted, args.classifier)
    )
    cv, test = {}, {}
    for blocks, seed in itertools.product(candidates, args.seeds):
        started = time.perf_counter()
        data, frames = predictions(args.classifier, args.features, args.groups, blocks, seed)
        cv[",".join(blocks), seed] = figures(frames, "cv", data.class_names)
        test[",".join(blocks), seed] = figures(frames, "heldout", data.class_names)
        print(
            f"{args.classifier} {','.join(blocks)} seed {seed}: cv ACC/AUC {cv[','.join(blocks), seed][0]:.4f} / "
            f"{cv[','.join(blocks), seed][1]:.4f}, {time.perf_counter() - started:.0f}s",
            file=sys.stderr,
            flush=True,
        )
    names = [",".join(blocks) for blocks in candidates]
    print(f"| {args.classifier}: blocks | cv ACC, mean (std) | cv ROC AUC, mean (std) |\n| --- | --- | --- |")
    for name in names:
        rows = np.array([cv[name, seed] for seed in args.seeds])
        spread = rows.std(0, ddof=1) if len(args.seeds) > 1 else np.zeros(2)
        print(f"| {name} | {rows[:, 0].mean():.4f} ({spread[0]:.4f}) | {rows[:, 1].mean():.4f} ({spread[1]:.4f}) |")
    chosen = max(names, key=lambda name: np.mean([cv[name, seed][1] for seed in args.seeds]))
    print(f"\nchosen by mean cv ROC AUC: {chosen}")
    for seed in args.seeds:  # read once the choice is made
        print(f"  its test split, seed {seed}: ACC {test[chosen, seed][0]:.4f}, ROC AUC {test[chosen, seed][1]:.4f}")


if __name__ == "__main__":
    main()

"""Stage ``evaluate``: gather one exercise's results into ``metrics/<exercise>.json``.

    python -m stages.evaluate toy|mnist|breast

Each training stage writes its figures as JSON under ``results/<exercise>/``;
this stage nests them by file name (``results/toy/2blop.json`` becomes the
``2blop.*`` keys of ``metrics/toy.json``). Those small files are committed to git,
so ``dvc metrics show`` and ``dvc metrics diff`` read them without a DVC remote,
and ``check-thresholds`` holds them against ``thresholds.yaml``.
"""

from __future__ import annotations

import json
from pathlib import Path

from stages import common

EXERCISES = {
    "toy": ("2blop", "blop_circle", "4blop"),
    "mnist": ("cnn",),
    "breast": ("features", "knn"),
}


def load_results(exercise: str, folder: Path = Path("results")) -> dict[str, dict]:
    """Each of the exercise's result files, keyed by its name, in a fixed order."""
    results = {}
    for name in EXERCISES[exercise]:
        path = folder / exercise / f"{name}.json"
        try:
            results[name] = json.loads(path.read_text())
        except FileNotFoundError:
            raise common.StageError(f"{path}: not found; its stage has not run") from None
        except json.JSONDecodeError as err:
            raise common.StageError(f"{path}: not valid JSON ({err})") from None
    return results


def main(argv: list[str]) -> None:
    if len(argv) != 1 or argv[0] not in EXERCISES:
        raise common.StageError(f"usage: python -m stages.evaluate EXERCISE, one of {', '.join(EXERCISES)}")
    exercise = argv[0]
    metrics = load_results(exercise)
    common.write_json(f"metrics/{exercise}.json", metrics)
    print(f"evaluate {exercise}: wrote metrics/{exercise}.json ({', '.join(metrics)})")


if __name__ == "__main__":
    common.run_stage(main)

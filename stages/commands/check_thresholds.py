"""Hold the metrics in ``metrics/`` to the bounds in ``thresholds.yaml``.

    check-thresholds [--thresholds thresholds.yaml] [--only metrics/toy ...]
    python -m stages.commands.check_thresholds

Prints a table of each metric, its bound and its value, and exits 1 when any falls
short or is missing (2 when the thresholds file itself is wrong). Not a DVC stage:
it reads the committed metrics, so it runs in CI without retraining anything.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Annotated

import pydantic

from stages.shared.config import Section, StageError, describe_error, read_yaml
from stages.shared.runner import run_stage


class Bound(Section):
    """The bound on one metric: ``{min: x}``, ``{max: y}`` or both."""

    min: float | None = None
    max: float | None = None

    @pydantic.model_validator(mode="after")
    def one_or_both(self) -> Bound:
        if self.min is None and self.max is None:
            raise ValueError("must be {min: x}, {max: y} or both")
        return self

    def __str__(self) -> str:
        return " and ".join(
            f"{sign} {value:g}" for sign, value in ((">=", self.min), ("<=", self.max)) if value is not None
        )

    def holds(self, value: float) -> bool:
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)


# metrics file -> dotted key in that file -> bound
THRESHOLDS = pydantic.TypeAdapter(
    Annotated[dict[str, Annotated[dict[str, Bound], pydantic.Field(min_length=1)]], pydantic.Field(min_length=1)]
)


def read_thresholds(path: Path) -> dict[str, dict[str, Bound]]:
    """The bounds of a thresholds file; a wrong entry raises StageError naming it."""
    try:
        return THRESHOLDS.validate_python(read_yaml(path), strict=True)
    except pydantic.ValidationError as err:
        raise StageError(f"{path}: {describe_error(err.errors()[0], separator=': ')}") from None


def lookup(metrics: dict, dotted: str) -> object:
    """``metrics["a"]["b"]`` for ``"a.b"``; None when any part is missing."""
    node: object = metrics
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def read_metrics(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as err:
        raise StageError(f"{path}: not valid JSON ({err})") from None


def apply_bounds(thresholds: dict[str, dict[str, Bound]], root: Path) -> list[tuple[str, str, str, str]]:
    """A row per bound: the metric, the bound, the value found, and ok, FAIL or MISSING."""
    rows = []
    for file, bounds in thresholds.items():
        metrics = read_metrics(root / file)
        for key, bound in bounds.items():
            value = None if metrics is None else lookup(metrics, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
                shown, status = "-" if value is None else repr(value), "MISSING"
            else:
                shown, status = f"{value:g}", "ok" if bound.holds(value) else "FAIL"
            rows.append((f"{file}:{key}", str(bound), shown, status))
    return rows


def format_table(rows: list[tuple[str, ...]]) -> str:
    header = ("metric", "bound", "value", "status")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    line = "  ".join(f"{{:<{width}}}" for width in widths)
    return "\n".join(line.format(*row).rstrip() for row in [header, tuple("-" * w for w in widths), *rows])


def check(thresholds_path: Path, root: Path, only: list[str] | None = None) -> tuple[bool, str]:
    """Whether every bound holds, and the table that shows it; ``only`` keeps the bounds
    on those metrics files or on the files in those folders."""
    thresholds = read_thresholds(thresholds_path)
    if only:
        unknown = [path for path in only if not any(Path(file).is_relative_to(path) for file in thresholds)]
        if unknown:
            raise StageError(f"{thresholds_path}: no bounds for {', '.join(unknown)} (--only)")
        thresholds = {
            file: bounds for file, bounds in thresholds.items() if any(Path(file).is_relative_to(path) for path in only)
        }
    rows = apply_bounds(thresholds, root)
    failed = sum(status != "ok" for *_, status in rows)
    summary = f"{failed} of {len(rows)} thresholds not met" if failed else "all thresholds met"
    return not failed, f"{format_table(rows)}\n\n{summary}"


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="check-thresholds", description=__doc__.split("\n\n")[0])
    parser.add_argument("--thresholds", type=Path, default=Path("thresholds.yaml"), help="bounds file")
    parser.add_argument("--root", type=Path, default=Path("."), help="where the metrics paths start")
    parser.add_argument(
        "--only",
        action="append",
        metavar="PATH",
        help="check only the bounds on this metrics file or folder (repeatable), e.g. metrics/toy",
    )
    args = parser.parse_args(argv)
    passed, report = check(args.thresholds, args.root, args.only)
    print(report)
    sys.exit(0 if passed else 1)


def cli() -> None:
    run_stage(main)  # a StageError: one line and exit status 2


if __name__ == "__main__":
    cli()

"""Hold the metrics in ``metrics/`` to the bounds in ``thresholds.yaml``.

    check-thresholds [--thresholds thresholds.yaml] [--only metrics/toy ...]
    python -m stages.check_thresholds

Prints a table of each metric, its bound and its value, and exits 1 when any falls
short or is missing (2 when the thresholds file itself is wrong). Not a DVC stage:
it reads the committed metrics, so it runs in CI without retraining anything.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from stages.common import StageError, read_yaml

BOUNDS = ("min", "max")


@dataclass(frozen=True)
class Check:
    file: str
    key: str
    minimum: float | None
    maximum: float | None

    @property
    def bound_text(self) -> str:
        parts = []
        if self.minimum is not None:
            parts.append(f">= {self.minimum:g}")
        if self.maximum is not None:
            parts.append(f"<= {self.maximum:g}")
        return " and ".join(parts)


def parse_thresholds(raw: object, source: str) -> list[Check]:
    """Turn ``{file: {dotted.key: {min: x, max: y}}}`` into checks, naming any bad entry."""
    if not isinstance(raw, dict) or not raw:
        raise StageError(f"{source}: must map metrics files to their bounds")
    checks = []
    for file, keys in raw.items():
        if not isinstance(keys, dict) or not keys:
            raise StageError(f"{source}: {file}: must map metric keys to bounds")
        for key, bound in keys.items():
            where = f"{source}: {file}: {key}"
            if not isinstance(bound, dict) or not bound or set(bound) - set(BOUNDS):
                raise StageError(f"{where}: must be {{min: x}}, {{max: y}} or both, got {bound!r}")
            for name, value in bound.items():
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise StageError(f"{where}: {name} must be a number, got {value!r}")
            checks.append(Check(str(file), str(key), bound.get("min"), bound.get("max")))
    return checks


def lookup(metrics: dict, dotted: str) -> object:
    """``metrics["a"]["b"]`` for ``"a.b"``; None when any part is missing."""
    node: object = metrics
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def apply_bounds(checks: list[Check], metrics_by_file: dict[str, dict | None]) -> list[tuple[Check, str, str]]:
    """Each check with the value found (as text) and its status: ok, FAIL or MISSING."""
    rows = []
    for check in checks:
        metrics = metrics_by_file.get(check.file)
        value = None if metrics is None else lookup(metrics, check.key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            rows.append((check, "-" if value is None else repr(value), "MISSING"))
            continue
        ok = (check.minimum is None or value >= check.minimum) and (check.maximum is None or value <= check.maximum)
        rows.append((check, f"{value:g}", "ok" if ok else "FAIL"))
    return rows


def format_table(rows: list[tuple[Check, str, str]]) -> str:
    header = ("metric", "bound", "value", "status")
    lines = [(f"{c.file}:{c.key}", c.bound_text, value, status) for c, value, status in rows]
    widths = [max(len(r[i]) for r in [header, *lines]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    table = [header, tuple("-" * w for w in widths), *lines]
    return "\n".join(fmt.format(*row).rstrip() for row in table)


def load_metrics(files: set[str], root: Path) -> dict[str, dict | None]:
    loaded: dict[str, dict | None] = {}
    for file in sorted(files):
        try:
            loaded[file] = json.loads((root / file).read_text())
        except FileNotFoundError:
            loaded[file] = None
        except json.JSONDecodeError as err:
            raise StageError(f"{root / file}: not valid JSON ({err})") from None
    return loaded


def is_under(file: str, folder_or_file: str) -> bool:
    """Whether metrics file ``file`` is ``folder_or_file`` or lies in that folder."""
    wanted = Path(folder_or_file)
    return Path(file) == wanted or wanted in Path(file).parents


def check(thresholds_path: Path, root: Path, only: list[str] | None = None) -> tuple[bool, str]:
    """Whether every bound holds, and the table that shows it; ``only`` keeps the bounds
    on those metrics files or on the files in those folders."""
    checks = parse_thresholds(read_yaml(thresholds_path), str(thresholds_path))
    if only:
        unknown = [path for path in only if not any(is_under(c.file, path) for c in checks)]
        if unknown:
            raise StageError(f"{thresholds_path}: no bounds for {', '.join(unknown)} (--only)")
        checks = [c for c in checks if any(is_under(c.file, path) for path in only)]
    rows = apply_bounds(checks, load_metrics({c.file for c in checks}, root))
    passed = all(status == "ok" for _, _, status in rows)
    failed = sum(status != "ok" for _, _, status in rows)
    summary = "all thresholds met" if passed else f"{failed} of {len(rows)} thresholds not met"
    return passed, f"{format_table(rows)}\n\n{summary}"


def cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="check-thresholds", description=__doc__.split("\n\n")[0])
    parser.add_argument("--thresholds", type=Path, default=Path("thresholds.yaml"), help="bounds file")
    parser.add_argument("--root", type=Path, default=Path("."), help="where the metrics paths start")
    parser.add_argument("--only", action="append", metavar="PATH",
                        help="check only the bounds on this metrics file or folder (repeatable), e.g. metrics/toy")
    args = parser.parse_args(argv)
    try:
        passed, report = check(args.thresholds, args.root, args.only)
    except StageError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(report)
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    cli()

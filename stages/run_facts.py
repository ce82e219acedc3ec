"""How a run went (seconds, speed, device, library versions), beside the outputs, not among them."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from stages.outputs import write_json

# Not a DVC output and not stated in dvc.yaml: these facts change from run to run with
# the same params, so a hashed file holding them would change dvc.lock on every rerun.
RUN_FACTS_DIR = Path("runs")


def write_run_facts(stage: str, facts: dict[str, Any]) -> None:
    """Write ``facts`` with the Python and library versions to ``runs/<stage>.json``.

    The folder is git-ignored; the stage's log prints the same figures.
    """
    from importlib.metadata import version

    versions = {package: version(package) for package in ("tensorflow", "keras", "scikit-learn", "numpy", "dvc")}
    write_json(RUN_FACTS_DIR / f"{stage}.json", {**facts, "python": sys.version.split()[0], "versions": versions})

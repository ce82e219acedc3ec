"""Resuming a killed run: a folder of what the run needs to go on, kept only for the same
params, data, devices and code, so that nothing of another run is ever resumed."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

from stages.shared.config import StageError, one_line, read_yaml
from stages.shared.runner import write_json

# The folder of dvc.yaml and of the package, whatever folder the stage runs in.
PROJECT_ROOT = Path(__file__).resolve().parents[2]
CODE_DEP = re.compile(r"stages/\S+\.py")


def code_digests(stage: str) -> dict[str, str]:
    """The SHA-256 of each project module that dvc.yaml lists under ``stage``'s deps: the
    code the stage runs (tools/stage_deps.py keeps that list equal to its imports)."""
    dvc_yaml = PROJECT_ROOT / "dvc.yaml"
    definition = read_yaml(dvc_yaml).get("stages", {}).get(stage)
    if definition is None:
        raise StageError(f"{dvc_yaml}: no stage {stage}")
    digests = {}
    for dep in definition.get("deps", []):
        if CODE_DEP.fullmatch(dep):
            try:
                digests[dep] = hashlib.sha256((PROJECT_ROOT / dep).read_bytes()).hexdigest()
            except FileNotFoundError:
                raise StageError(f"{PROJECT_ROOT / dep}: not found, though {dvc_yaml} lists it for {stage}") from None
    return digests


def differing_parts(saved: Any, key: dict[str, Any]) -> list[str]:
    """The names of the parts of ``key`` that ``saved`` does not match; for a part that is
    a mapping itself, with its entries that differ: ``["code (stages/x.py)", "weights"]``."""
    saved = saved if isinstance(saved, dict) else {}
    parts = []
    for name in {**key, **saved}:
        old, new = saved.get(name), key.get(name)
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            entries = [entry for entry in {**new, **old} if old.get(entry) != new.get(entry)]
            name = f"{name} ({', '.join(entries)})"
        parts.append(name)
    return parts


class ResumeFolder:
    """A folder that holds what a killed run of a stage needs to resume (git-ignored, not a
    DVC output), valid only for the run that ``key`` describes: a mapping of named parts,
    such as the params, the data, the devices and the code (``code_digests``).

    ``key.json`` is written when the folder is opened; a folder that holds another key is
    emptied first, with one line that names the parts that differ, so nothing of another
    run is ever resumed. A folder that cannot be emptied stops the stage. Stages write its
    files atomically, so a file that is there is whole, and ``clear()`` it once their
    outputs are written.
    """

    def __init__(self, folder: Path, key: dict[str, Any]):
        self.folder = folder
        key = json.loads(json.dumps(key))  # as key.json will hold it: lists, not tuples
        key_path = folder / "key.json"
        try:
            saved_key = json.loads(key_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            saved_key = None
        if saved_key != key:
            if saved_key is not None:
                changed = ", ".join(differing_parts(saved_key, key))
                print(f"{folder} is from a run with other {changed}: starting afresh", flush=True)
            self.clear()
            write_json(key_path, key)

    def clear(self) -> None:
        """Delete the folder. One that cannot be deleted, even in part, stops the stage: what
        is left of it must not be resumed as part of another run."""
        try:
            shutil.rmtree(self.folder)
        except FileNotFoundError:
            pass
        except OSError as err:
            raise StageError(
                f"{self.folder}: cannot delete this folder of resume files ({one_line(err)}); delete it yourself"
            ) from None

"""A Keras training's outputs as files with the same bytes from run to run: the model
(``.keras``) and its per-epoch history (CSV)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

from stages.shared.files import write_fixed_zip
from stages.shared.runner import atomic_path


def _renumber_shared_objects(config: Any, numbers: dict[int, int]) -> Any:
    """``config`` with each ``shared_object_id`` (a Python ``id()``, different in every
    process) replaced by its order of first appearance; equal ids stay equal."""
    if isinstance(config, list):
        return [_renumber_shared_objects(item, numbers) for item in config]
    if not isinstance(config, dict):
        return config
    renumbered = {key: _renumber_shared_objects(value, numbers) for key, value in config.items()}
    if "shared_object_id" in renumbered:
        renumbered["shared_object_id"] = numbers.setdefault(renumbered["shared_object_id"], len(numbers))
    return renumbered


def save_keras_model(model: Any, path: Path | str) -> None:
    """``model.save`` to a ``.keras`` file whose bytes depend on the model alone.

    Keras writes the save time into ``metadata.json`` and into the weights entry of the
    zip, and object addresses into ``config.json``; the times go and the addresses are
    renumbered, so that identical models are identical files.
    """
    with atomic_path(path) as tmp:
        model.save(tmp)
        with zipfile.ZipFile(tmp) as saved:
            entries = [(entry, saved.read(entry)) for entry in saved.infolist()]
        fixed = []
        for entry, content in entries:
            if entry.filename == "metadata.json":
                metadata = json.loads(content)
                metadata.pop("date_saved", None)
                content = json.dumps(metadata).encode()
            elif entry.filename == "config.json":
                content = json.dumps(_renumber_shared_objects(json.loads(content), {})).encode()
            fixed.append((entry.filename, content, entry.compress_type))
        write_fixed_zip(tmp, fixed)


def write_history_csv(history: dict[str, list[float]], path: Path | str) -> None:
    """Write Keras's ``History.history`` as a CSV with a 1-based ``epoch`` column (DVC plots' x).

    Not Keras's ``CSVLogger``: that one writes the file in place while training (a
    killed run leaves a file that looks finished), numbers epochs from 0, and prints
    floats at full repr, so this writes once, atomically, at a fixed precision.
    """
    import pandas as pd

    frame = pd.DataFrame(history)
    frame.insert(0, "epoch", range(1, len(frame) + 1))
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6g")

"""The .npz and .keras outputs (zip files) written so that the same content gives the same
bytes, and a rerun leaves dvc.lock as it was."""

from __future__ import annotations

import io
import json
import re
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from stages.outputs import atomic_path

# Zip entries carry a modification time; outputs get this fixed one.
FIXED_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def save_npz(path: Path | str, **arrays: Any) -> None:
    """``np.savez_compressed`` with fixed entry times (NumPy stamps the wall-clock time)."""
    import numpy as np

    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            entry = zipfile.ZipInfo(f"{name}.npy", date_time=FIXED_ZIP_TIME)
            entry.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(entry, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)


def _write_fixed_zip(path: Path, entries: Iterable[tuple[str, bytes, int]]) -> None:
    """Write ``(name, content, compress_type)`` entries to a zip file, each with the fixed time."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, content, compress_type in entries:
            fixed = zipfile.ZipInfo(name, date_time=FIXED_ZIP_TIME)
            fixed.compress_type = compress_type
            archive.writestr(fixed, content)


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
        _write_fixed_zip(tmp, fixed)


def save_skops(model: Any, path: Path | str) -> None:
    """``skops.io.dump`` to a file whose bytes depend on the model alone.

    skops names each node (``__id__``) and each array's file after a Python ``id()``,
    different in every process, and stamps the zip entries with the time; the ids are
    renumbered in order of first appearance (equal ids stay equal) and the times fixed.
    """
    import skops.io

    numbers: dict[str, str] = {}

    def renumber(match: re.Match) -> str:
        return match[1] + numbers.setdefault(match[2], str(len(numbers)))

    with zipfile.ZipFile(io.BytesIO(skops.io.dumps(model))) as saved:
        schema = re.sub(r'("__id__": |"file": ")(\d+)', renumber, saved.read("schema.json").decode())
        entries = [
            ("schema.json", schema.encode(), entry.compress_type) if entry.filename == "schema.json"
            else (numbers[Path(entry.filename).stem] + Path(entry.filename).suffix, saved.read(entry),
                  entry.compress_type)
            for entry in saved.infolist()
        ]
    with atomic_path(path) as tmp:
        _write_fixed_zip(tmp, entries)

"""The .npz and .keras outputs (zip files) written so that the same content gives the same
bytes, and a rerun leaves dvc.lock as it was."""

from __future__ import annotations

import io
import json
import re
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from stages.errors import StageError
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


# Where skops writes an object id into schema.json (``json.dumps(..., indent=2)``): each
# node's ``__id__``, and the name of the file that holds an array. Keyed to that exact
# spacing, so the result is checked (``_process_dependent_leftover``).
SKOPS_OBJECT_ID = re.compile(r'("__id__": |"file": ")(\d+)')


def _skops_node_ids(node: Any) -> Iterator[tuple[str, Any]]:
    """Each ``("__id__", value)`` and ``("file", name)`` of the nodes (the dicts with a
    ``__loader__``) in a parsed skops schema."""
    if isinstance(node, list):
        for item in node:
            yield from _skops_node_ids(item)
    elif isinstance(node, dict):
        if "__loader__" in node:
            yield from ((key, node[key]) for key in ("__id__", "file") if key in node)
        for value in node.values():
            yield from _skops_node_ids(value)


def _process_dependent_leftover(schema: Any, member_names: list[str], renumbered: set[str]) -> str | None:
    """What in a rewritten skops file is not one of the ``renumbered`` ids: an ``__id__``,
    a file name, or a member that schema.json does not name; None when there is nothing."""
    for key, value in _skops_node_ids(schema):
        if (str(value) if key == "__id__" else Path(str(value)).stem) not in renumbered:
            return f'"{key}": {json.dumps(value)} left as written in schema.json'
    named = {"schema.json"} | {value for key, value in _skops_node_ids(schema) if key == "file"}
    unnamed = [name for name in member_names if name not in named]
    return f"member {unnamed[0]}, which schema.json does not name" if unnamed else None


def save_skops(model: Any, path: Path | str) -> None:
    """``skops.io.dump`` to a file whose bytes depend on the model alone.

    skops names each node (``__id__``) and each array's file after a Python ``id()``,
    different in every process, and stamps the zip entries with the time; the ids are
    renumbered in order of first appearance (equal ids stay equal) and the times fixed.
    A file in a layout this does not know, or with anything left that is not renumbered,
    stops the stage (StageError) rather than be written with bytes that change from run
    to run.
    """
    import skops
    import skops.io

    def unrecognised(what: str) -> StageError:
        return StageError(f"{path}: skops {skops.__version__} wrote a file that stages/zip_outputs.py cannot "
                          f"make the same from run to run: {what}")

    numbers: dict[str, str] = {}

    def renumber(match: re.Match) -> str:
        return match[1] + numbers.setdefault(match[2], str(len(numbers)))

    def renumbered_name(name: str) -> str:
        return numbers.get(Path(name).stem, Path(name).stem) + Path(name).suffix

    with zipfile.ZipFile(io.BytesIO(skops.io.dumps(model))) as saved:
        if "schema.json" not in saved.namelist():
            raise unrecognised("no schema.json")
        schema = SKOPS_OBJECT_ID.sub(renumber, saved.read("schema.json").decode())
        entries = [
            ("schema.json", schema.encode(), entry.compress_type) if entry.filename == "schema.json"
            else (renumbered_name(entry.filename), saved.read(entry), entry.compress_type)
            for entry in saved.infolist()
        ]
    try:
        parsed = json.loads(schema)
    except json.JSONDecodeError as err:
        raise unrecognised(f"schema.json is not JSON ({err})") from None
    leftover = _process_dependent_leftover(parsed, [name for name, _, _ in entries], set(numbers.values()))
    if leftover:
        raise unrecognised(leftover)
    with atomic_path(path) as tmp:
        _write_fixed_zip(tmp, entries)

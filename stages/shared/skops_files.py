"""A fitted scikit-learn model as a ``.skops`` file with the same bytes from run to run."""

from __future__ import annotations

import io
import json
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from stages.shared.config import StageError
from stages.shared.files import write_fixed_zip
from stages.shared.runner import atomic_path

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
        return StageError(
            f"{path}: skops {skops.__version__} wrote a file that stages/shared/skops_files.py cannot "
            f"make the same from run to run: {what}"
        )

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
            ("schema.json", schema.encode(), entry.compress_type)
            if entry.filename == "schema.json"
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
        write_fixed_zip(tmp, entries)

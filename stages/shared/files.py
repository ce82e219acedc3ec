"""Files in and out: reading a .npz, a download or its local copy under data/local/, atomic
writes, zip files with the same bytes from run to run (.npz, .keras, .skops), and the
history CSV of a training."""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import os
import re
import ssl
import urllib.error
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Annotated, Any

import pydantic

from stages.shared.config import StageError, one_line


# ------------------------------------------------------------------------------------ inputs
def read_npz(path: Path, keys: Iterable[str] = (), stage: str | None = None) -> dict[str, Any]:
    """Every named array of a .npz file, which must hold ``keys``. A file that is missing,
    unreadable or short of a key raises StageError naming it, and the stage to run when
    ``stage`` writes it."""
    import numpy as np

    rerun = f"; run `dvc repro {stage}` first" if stage else ""
    try:
        loaded = np.load(path)  # no pickles: allow_pickle is off by default
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError("a single .npy array, not named arrays")
        with loaded as archive:
            arrays = {key: archive[key] for key in archive.files}
    except FileNotFoundError:
        raise StageError(f"{path}: not found{rerun}") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise StageError(f"{path}: not a readable .npz file ({one_line(err)})") from None
    require_keys(path, arrays, keys, rerun)
    return arrays


def require_keys(path: Path, arrays: Mapping[str, Any], keys: Iterable[str], hint: str = "") -> None:
    missing = [key for key in keys if key not in arrays]
    if missing:
        has = ", ".join(sorted(arrays)) or "no arrays"
        raise StageError(f"{path}: missing key(s) {', '.join(missing)} (has {has}){hint}")


# ---------------------------------------------------------------- downloads and local copies
def local_copy(folder: Path, name: str) -> Path:
    """Where the local copy that a params value names lies: ``name``, inside ``folder``."""
    return folder / name


def local_or(folder: Path, copy: str, *keywords: str):
    """The type of a params value that names a download (one of ``keywords``) or a local
    ``copy`` (e.g. "file") inside ``folder`` by its name alone, which must be there: dvc.yaml
    builds the stage's dependency from that name, so a path would name no entry of the folder.
    A keyword always means its download, whatever file of that name the folder holds."""
    choices = f"{' or '.join(keywords)}, or the name of a {copy} inside {folder}/"

    def check(value: str) -> str:
        if value in keywords:
            return value
        if "/" in value or "\\" in value:
            name = PurePosixPath(value.replace("\\", "/")).name
            raise ValueError(
                f"must be {choices}, not a path: set it to {name}, the name of the {copy} inside "
                f"{folder}/ (copy or link it there, so that DVC tracks it), got {value!r}"
            )
        if value in (".", ".."):  # the folder itself or its parent, not an entry of it
            raise ValueError(f"must be {choices}, got {value!r}")
        path = local_copy(folder, value)
        if not path.exists():
            raise ValueError(
                f"{path} not found: put the {copy} there, or set it to {' or '.join(keywords)}; got {value!r}"
            )
        return value

    return Annotated[str, pydantic.Field(min_length=1), pydantic.AfterValidator(check)]


class DownloadError(StageError):
    """A download failed (no network, say); the message says where a local copy goes and
    which params key names it."""


# What a failed download raises, through Keras's get_file: Keras turns urllib's URLError
# and HTTPError into a bare Exception raised while it handles them; a connection cut or
# timed out in the middle of a file comes as it is; a file whose hash does not match, as
# a ValueError with this text.
NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, ssl.SSLError)
KERAS_HASH_MISMATCH = "file hash does not match"


def is_download_failure(err: BaseException) -> bool:
    """Whether ``err``, or an exception it was raised from or while handling, says that a
    download failed: a network error or a file whose hash does not match."""
    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, NETWORK_ERRORS) or (isinstance(cause, ValueError) and KERAS_HASH_MISMATCH in str(cause)):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


@contextlib.contextmanager
def download_or_stop(what: str, key: str, copy: str, folder: Path) -> Iterator[None]:
    """Turn a failed download in the block (``is_download_failure``) into a DownloadError
    that says to put ``copy`` (e.g. "a weights file") in ``folder`` and set the params
    ``key`` to its name. Any other exception (no memory or disk left, a library that
    changed) is no download's: it goes on as it is, with its own message and traceback."""
    try:
        yield
    except Exception as err:
        if not is_download_failure(err):
            raise
        raise DownloadError(
            f"could not download {what} ({one_line(err)}); put {copy} in {folder}/ and set {key} to its name"
        ) from None


# ---------------------------------------------------------------------------- atomic outputs
@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place only if the block succeeds.

    The temporary name keeps the suffix, since Keras and Matplotlib pick the format by it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}{path.suffix}")  # created by the writer, umask applied
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path | str, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def save_figure(fig: Any, path: Path | str) -> None:
    """Save a Matplotlib figure atomically."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight")


# ------------------------------------------------------------- zip files with the same bytes
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
        return StageError(
            f"{path}: skops {skops.__version__} wrote a file that stages/shared/files.py cannot "
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
        _write_fixed_zip(tmp, entries)


# -------------------------------------------------------------------------- training history
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

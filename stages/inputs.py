"""Reading a stage's .npz input, with errors that name the file and the stage that writes it."""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from stages.errors import StageError, one_line


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

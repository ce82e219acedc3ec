"""Data files in and out: reading a .npz, and writing a .npz, a zip file or a figure with
the same bytes from run to run (no time stamps), atomically."""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from stages.shared.config import StageError, one_line
from stages.shared.runner import atomic_path


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


def write_fixed_zip(path: Path, entries: Iterable[tuple[str, bytes, int]]) -> None:
    """Write ``(name, content, compress_type)`` entries to a zip file, each with the fixed time."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, content, compress_type in entries:
            fixed = zipfile.ZipInfo(name, date_time=FIXED_ZIP_TIME)
            fixed.compress_type = compress_type
            archive.writestr(fixed, content)

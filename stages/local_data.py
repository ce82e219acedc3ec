"""Data and weights that a stage downloads, or reads from a local copy under
``data/local/`` instead (for machines offline): the params type that names either,
and the message that says which key to set when a download fails."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import pydantic

from stages.errors import StageError, one_line


def local_or(folder: Path, *keywords: str):
    """The type of a params value that names a download (one of ``keywords``) or a local
    file or folder instead, which must lie under ``folder``: the stage declares that
    folder as a DVC dependency, so that replacing the file reruns the stage."""

    def check(value: str) -> str:
        path = Path(value)
        if value not in keywords and not path.is_relative_to(folder):
            raise ValueError(
                f"must be {' or '.join(keywords)}, or a path under {folder}/ "
                f"(copy or link it there, so that DVC tracks it), got {value!r}"
            )
        return value

    return Annotated[str, pydantic.Field(min_length=1), pydantic.AfterValidator(check)]


class DownloadError(StageError):
    """A download failed (no network, say); the message names the params key for a local copy."""


@contextlib.contextmanager
def download_or_stop(what: str, key: str, instead: str) -> Iterator[None]:
    """Turn a failed Keras download into a DownloadError that names the params ``key`` to
    set to ``instead`` (a local file). Keras raises a bare Exception when the network fails."""
    try:
        yield
    except Exception as err:
        raise DownloadError(f"could not download {what} ({one_line(err)}); set {key} to {instead}") from None

"""Data and weights that a stage downloads, or reads from a local copy in a folder of
``data/local/`` instead (for machines offline): the params type that names either, where
the local copy lies, and the message that says which key to set when a download fails.

dvc.yaml lists as the stage's dependency the one entry of the folder that its params value
names, ``data/local/<input>/${key}``: a local copy's file or folder, or for a download its
keyword's marker file (committed to git, so that the dependency exists). So a file dropped
in the folder reruns only the stage that reads it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Annotated

import pydantic

from stages.errors import StageError, one_line


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
            raise ValueError(f"{path} not found: put the {copy} there, or set it to {' or '.join(keywords)}; "
                             f"got {value!r}")
        return value

    return Annotated[str, pydantic.Field(min_length=1), pydantic.AfterValidator(check)]


class DownloadError(StageError):
    """A download failed (no network, say); the message says where a local copy goes and
    which params key names it."""


@contextlib.contextmanager
def download_or_stop(what: str, key: str, copy: str, folder: Path) -> Iterator[None]:
    """Turn a failed Keras download into a DownloadError that says to put ``copy`` (e.g. "a
    weights file") in ``folder`` and set the params ``key`` to its name. Keras raises a bare
    Exception when the network fails."""
    try:
        yield
    except Exception as err:
        raise DownloadError(
            f"could not download {what} ({one_line(err)}); put {copy} in {folder}/ and set {key} to its name"
        ) from None

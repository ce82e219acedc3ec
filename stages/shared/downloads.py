"""Downloads and their local copies: a params value that names a download by its keyword
or a local copy under data/local/, and a failed download told apart from any other error."""

from __future__ import annotations

import contextlib
import http.client
import ssl
import urllib.error
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Annotated

import pydantic

from stages.shared.config import StageError, one_line


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

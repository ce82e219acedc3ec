"""Stop when the DVC remote cannot be reached, before hours of work that could not be pushed.

    check-dvc-remote [--remote NAME] [--create]

``dvc repro --pull`` carries on when a pull fails, as it must for outputs the remote does
not hold yet; but it cannot tell those from a remote it never reached (a wrong URL, a
bucket that is not there, wrong or missing credentials, a share that is not mounted, no
network): DVC reports all of them as missing files. This asks the remote's file system:

- a folder remote (a path on this machine, often a mounted share): the remote's folder
  itself must exist, since a mount point exists whether the share is mounted or not.
  ``--create`` makes a new, empty remote's folder, in a parent folder that exists (a
  person's first ``dvc push`` makes it too);
- a bucket (s3, gs, azure): the bucket must exist and take the credentials; the path in
  it may hold nothing yet, since an object store has no folders to create;
- any other remote (ssh, http, ...): the folder that holds it must answer.

Exit status 0 when the remote answers, 2 when not.
"""

from __future__ import annotations

import argparse
import sys

from stages.shared.config import StageError, one_line
from stages.shared.runner import run_stage

BUCKET_PROTOCOLS = {"s3", "gs", "azure"}  # DVC's names for them (remote.fs.protocol)


def check_folder(fs, path: str, create: bool) -> None:
    """A folder remote's own folder exists, or ``create`` made it in an existing parent."""
    if fs.isdir(path):
        return
    parent = fs.parent(path)
    if create and fs.isdir(parent):
        fs.makedirs(path)
        return
    if create:
        raise StageError(f"{parent} does not exist, and --create makes only the remote's own folder")
    raise StageError(
        f"the folder {path} does not exist (a share not mounted, or a wrong URL; "
        "for a new remote, run check-dvc-remote --create once, or dvc push)"
    )


def check_bucket(fs, path: str) -> None:
    """The remote's bucket exists and takes the credentials."""
    try:
        fs.ls(path)
    except PermissionError as err:  # the listing is refused before the bucket is looked up
        raise StageError(f"the credentials were refused (wrong, or without rights to it): {one_line(err)}") from None
    except FileNotFoundError:  # no bucket, or a new remote's empty path in one
        bucket = path.split("/", 1)[0]
        if not fs.exists(bucket):
            raise StageError(f"the bucket {fs.unstrip_protocol(bucket)} does not exist") from None


def check_parent(fs, path: str) -> None:
    """The folder that holds the remote answers (the remote's own may be new and empty)."""
    holder = fs.parent(path) or path
    if not fs.exists(holder):
        raise StageError(
            f"{fs.unstrip_protocol(holder)} does not answer (a wrong URL, missing credentials or no network)"
        )


def open_remote(name: str | None):
    """The remote's file system and its path there."""
    from dvc.repo import Repo

    remote = Repo().cloud.get_remote(name)
    return remote.fs, remote.path


def check_remote(name: str | None, create: bool = False) -> str:
    """The remote's URL when it answers as its kind must (see the module's docstring); else StageError."""
    try:
        fs, path = open_remote(name)
    except Exception as err:  # no such remote, no default one, or its package is not installed
        raise StageError(f"cannot reach the DVC remote{f' {name!r}' if name else ''}: {one_line(err)}") from None
    url = fs.unstrip_protocol(path)
    try:
        if fs.protocol == "local":
            check_folder(fs, path, create)
        elif fs.protocol in BUCKET_PROTOCOLS:
            check_bucket(fs, path)
        else:
            check_parent(fs, path)
    except StageError as err:
        raise StageError(f"cannot reach the DVC remote at {url}: {err}") from None
    except Exception as err:  # DVC's and each file system's own errors: none is ours to sort
        raise StageError(f"cannot reach the DVC remote at {url}: {one_line(err)}") from None
    return url


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="check-dvc-remote", description=__doc__.split("\n\n")[0])
    parser.add_argument("--remote", help="a remote's name (default: the default remote)")
    parser.add_argument(
        "--create",
        action="store_true",
        help="make a folder remote's folder when it is missing (once, for a new remote)",
    )
    args = parser.parse_args(argv)
    print(f"DVC remote {check_remote(args.remote, args.create)}: reachable", file=sys.stderr)


def cli() -> None:
    run_stage(main)


if __name__ == "__main__":
    cli()

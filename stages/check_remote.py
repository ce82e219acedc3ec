"""Stop when the DVC remote cannot be reached, before hours of work that could not be pushed.

    check-dvc-remote [--remote NAME]

``dvc repro --pull`` carries on when a pull fails, as it must for outputs the remote does
not hold yet; but it cannot tell those from a remote it never reached (a wrong URL, a
bucket that is not there, missing credentials, no network): DVC reports all of them as
missing files. This asks the remote's file system whether the location that holds the
remote exists. The remote's own folder may be new and empty; the bucket, share or
parent folder it lives in must answer. Exit status 0 when it does, 2 when not.
"""

from __future__ import annotations

import argparse
import sys

from stages.cli import run_stage
from stages.errors import StageError, one_line


def check_remote(name: str | None) -> str:
    """The remote's URL when the place that holds it can be reached; else StageError."""
    from dvc.repo import Repo

    try:
        remote = Repo().cloud.get_remote(name)
        fs, path = remote.fs, remote.path
        holder = fs.parent(path) or path
        reachable = fs.exists(holder)
    except Exception as err:  # DVC's and each file system's own errors: none is ours to sort
        raise StageError(f"cannot reach the DVC remote{f' {name!r}' if name else ''}: {one_line(err)}") from None
    url = fs.unstrip_protocol(path)
    if not reachable:
        raise StageError(f"cannot reach the DVC remote at {url}: {fs.unstrip_protocol(holder)} does not answer "
                         "(a wrong URL, missing credentials or no network)")
    return url


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="check-dvc-remote", description=__doc__.split("\n\n")[0])
    parser.add_argument("--remote", help="a remote's name (default: the default remote)")
    print(f"DVC remote {check_remote(parser.parse_args(argv).remote)}: reachable", file=sys.stderr)


def cli() -> None:
    run_stage(main)


if __name__ == "__main__":
    cli()

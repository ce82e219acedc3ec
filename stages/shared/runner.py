"""What every stage and command runs on: its command line, the one line it stops with, and
its outputs written whole (atomically). Every stage imports this module, so it stays small."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from stages.shared.config import StageError, one_line


def stage_args(stage: str, argv: list[str], *paths: str, items: Iterable[str] | None = None) -> argparse.Namespace:
    """A stage's command line, as dvc.yaml writes it: ``--NAME PATH`` for each of ``paths``
    (the files it reads and writes, which dvc.yaml states), and first, for a stage
    that runs once per item of a params section (``foreach``), the item's name.

    A wrong command line stops the stage with argparse's usage line, exit status 2.
    """
    parser = argparse.ArgumentParser(prog=f"python -m stages.{stage}")
    if items is not None:
        parser.add_argument("name", choices=list(items), help="an item of params.yaml's section")
    for name in paths:  # operating_point is --operating-point
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=Path, required=True, metavar="PATH")
    return parser.parse_args(argv)


def run_stage(main: Callable[[list[str]], None], around: Callable = contextlib.nullcontext) -> None:
    """Call a stage's ``main(argv)`` inside ``around()`` (for a stage that runs TensorFlow,
    ``tensorflow_runtime.quiet_tensorflow_stderr``); turn a StageError into one line and
    exit status 2.

    Any other exception is no fault of the user's input (a bug, no memory or disk left, a
    library that changed): its traceback goes to stderr, for whoever fixes it, and then one
    line that names it, the last the stage prints (run-pipeline's summary quotes it); exit
    status 1.
    """
    try:
        with around():
            main(sys.argv[1:])
    except StageError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except Exception as err:
        traceback.print_exc()
        message = one_line(err)
        print(f"error: {type(err).__name__}{f': {message}' if message else ''} (traceback above)", file=sys.stderr)
        sys.exit(1)


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

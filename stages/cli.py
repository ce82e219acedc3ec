"""A stage as a command: its command line, its stderr, and one line and exit status 2
when it stops on a ``StageError``."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from stages import TF_LOG_LEVEL_FROM_USER
from stages.errors import StageError


def stage_args(stage: str, argv: list[str], *paths: str, items: Iterable[str] | None = None) -> argparse.Namespace:
    """A stage's command line, as dvc.yaml writes it: ``--NAME PATH`` for each of ``paths``
    (the files it reads and writes, which dvc.yaml states), and first, for a stage
    that runs once per item of a params section (``foreach``), the item's name.

    A wrong command line stops the stage with argparse's usage line, exit status 2.
    """
    parser = argparse.ArgumentParser(prog=f"python -m stages.{stage}")
    if items is not None:
        parser.add_argument("name", choices=list(items), help="an item of params.yaml's section")
    for name in paths:
        parser.add_argument(f"--{name}", type=Path, required=True, metavar="PATH")
    return parser.parse_args(argv)


# TensorFlow's C++ libraries print these at start-up, before they read
# TF_CPP_MIN_LOG_LEVEL, and on every tf.data map under Keras: notices about oneDNN and
# missing CUDA drivers, and a harmless mismatch between TF's graph builder and its
# runtime. They would bury the stages' own lines in a `dvc repro` log.
TENSORFLOW_NOISE = re.compile(
    r"^WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|^[IWE]\d{4} [\d:.]+\s+\d+ \S+\.cc:\d+\] (?:"
    r"oneDNN custom operations are on|Could not find cuda drivers|failed call to cuInit"
    r"|NodeDef mentions attribute use_unbounded_threadpool|Unable to register cu\w+ factory"
    r"|This TensorFlow binary is optimized|computation placer already registered)"
)


@contextlib.contextmanager
def quiet_tensorflow_stderr() -> Iterator[None]:
    """Drop TensorFlow's start-up chatter (``TENSORFLOW_NOISE``) from this process's stderr.

    The C++ libraries write to file descriptor 2 directly, so the descriptor is routed
    through a pipe, and a thread passes on every line but those. Left alone when the
    user set TF_CPP_MIN_LOG_LEVEL themselves: they asked for what TensorFlow prints.
    """
    if TF_LOG_LEVEL_FROM_USER:
        yield
        return
    sys.stderr.flush()
    saved, real_stderr = os.dup(2), os.dup(2)  # one to restore, one for the thread
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def pass_on() -> None:
        with open(read_end, "rb") as lines, open(real_stderr, "wb", buffering=0) as out:
            for line in lines:
                if not TENSORFLOW_NOISE.search(line.decode(errors="replace")):
                    out.write(line)

    thread = threading.Thread(target=pass_on, daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last write end, so the thread sees its end
        os.close(saved)
        thread.join(timeout=5)


def run_stage(main: Callable[[list[str]], None]) -> None:
    """Call a stage's ``main(argv)``; turn a StageError into one line and exit status 2."""
    try:
        with quiet_tensorflow_stderr():
            main(sys.argv[1:])
    except StageError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)

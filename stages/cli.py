"""A stage as a command: its command line, its stderr, and one line and exit status 2
when it stops on a ``StageError``."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
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


# The filter that quiet_tensorflow_stderr runs in a process of its own: it reads the
# stage's stderr from its standard input until every writer has closed it, and writes
# each line but TensorFlow's chatter to its own stderr, the real one.
STDERR_FILTER = """
import os, re, sys
noise = re.compile(sys.argv[1])
for line in sys.stdin.buffer:
    if not noise.search(line.decode(errors="replace")):
        sys.stderr.buffer.write(line)
        sys.stderr.buffer.flush()
os._exit(0)  # without the interpreter's clean-up, milliseconds the stage would wait for
"""


@contextlib.contextmanager
def quiet_tensorflow_stderr() -> Iterator[None]:
    """Drop TensorFlow's start-up chatter (``TENSORFLOW_NOISE``) from this process's stderr.

    The C++ libraries write to file descriptor 2 directly, so the descriptor is routed
    through a pipe to a small filter process that passes on every line but those. A
    process, not a thread: when the stage dies abruptly (abort, SIGKILL), the filter
    still reads what is left in the pipe, the lines that say why. Left alone when the
    user set TF_CPP_MIN_LOG_LEVEL themselves: they asked for what TensorFlow prints.
    """
    if TF_LOG_LEVEL_FROM_USER:
        yield
        return
    sys.stderr.flush()
    # os.pipe's ends are not inherited, so the filter holds no write end of its own: its
    # input ends when the stage's stderr closes, be it on exit or on the stage's death.
    read_end, write_end = os.pipe()
    # -I -S: the standard library alone, nothing from the environment or site-packages, to
    # start fast. A session of its own: Ctrl-C or a kill of the stage's process group does
    # not reach it, and it stays to pass on what the dying stage wrote (a traceback, say).
    stderr_filter = subprocess.Popen(
        [sys.executable, "-I", "-S", "-c", STDERR_FILTER, TENSORFLOW_NOISE.pattern],
        stdin=read_end, stdout=subprocess.DEVNULL, start_new_session=True,
    )
    os.close(read_end)
    saved = os.dup(2)
    os.dup2(write_end, 2)
    os.close(write_end)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last write end here, so the filter sees its end
        os.close(saved)
        # Its last lines out before the stage's next ones. A process the stage started and
        # left running may still hold the pipe: then the filter goes on passing its lines.
        with contextlib.suppress(subprocess.TimeoutExpired):
            stderr_filter.wait(timeout=5)


def run_stage(main: Callable[[list[str]], None]) -> None:
    """Call a stage's ``main(argv)``; turn a StageError into one line and exit status 2."""
    try:
        with quiet_tensorflow_stderr():
            main(sys.argv[1:])
    except StageError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)

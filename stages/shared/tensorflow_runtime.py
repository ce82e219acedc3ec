"""TensorFlow in a stage: its start-up chatter kept off stderr, seeds and op determinism,
the devices a model runs on, and the facts of each run under runs/."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from stages import TF_LOG_LEVEL_FROM_USER
from stages.shared.runner import write_json

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
        stdin=read_end,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
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


# ------------------------------------------------------------------------------------- seeds
def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and the Keras backend, and ask TensorFlow for deterministic ops.

    Same params on the same machine then give the same metrics. Determinism is a
    setting of the whole process, so ``deterministic=False`` turns it off again
    (TensorFlow has no public call for that; Keras reads the same private flag).
    """
    import keras
    import tensorflow as tf
    from tensorflow.python.framework import config as tf_config

    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    else:
        tf_config.disable_op_determinism()


# ----------------------------------------------------------------------------------- devices
def device_names() -> list[str]:
    """The devices a model runs on: the GPUs, else the CPU's logical devices (several
    only when the process split the CPU before TensorFlow started, with
    ``tf.config.set_logical_device_configuration``: how the tests run the
    several-device path without GPUs)."""
    import tensorflow as tf

    return [device.name for device in tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")]


def distribution_strategy() -> tuple[Any, list[str]]:
    """Where a model runs, as ``(strategy, device names)``: a MirroredStrategy over
    ``device_names()`` when there are several, else TensorFlow's default strategy, one device."""
    import tensorflow as tf

    devices = device_names()
    if len(devices) > 1:
        return tf.distribute.MirroredStrategy(devices), devices
    return tf.distribute.get_strategy(), devices[:1]


def describe_devices(devices: list[str]) -> str:
    """The devices a model runs on, for a person: ``CPU:0 (2 cores)``, ``GPU:0, GPU:1 (NVIDIA A100)``."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    kinds = sorted({tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus})
    return f"{', '.join(d.removeprefix('/device:') for d in devices)} ({', '.join(kinds) or f'{os.cpu_count()} cores'})"


# --------------------------------------------------------------------------------- run facts
# Not a DVC output and not stated in dvc.yaml: these facts change from run to run with
# the same params, so a hashed file holding them would change dvc.lock on every rerun.
RUN_FACTS_DIR = Path("runs")


def write_run_facts(stage: str, facts: dict[str, Any]) -> None:
    """Write ``facts`` with the Python and library versions to ``runs/<stage>.json``.

    The folder is git-ignored; the stage's log prints the same figures.
    """
    from importlib.metadata import version

    versions = {package: version(package) for package in ("tensorflow", "keras", "scikit-learn", "numpy", "dvc")}
    write_json(RUN_FACTS_DIR / f"{stage}.json", {**facts, "python": sys.version.split()[0], "versions": versions})

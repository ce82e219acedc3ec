"""Helpers shared by every stage: params models, command lines, seeding, atomic output files.

Each stage module keeps its work in functions that take and return data and a small
``main()`` that does the file I/O; this module holds what those ``main()`` functions
have in common, so that no stage copies another.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import sys
import threading
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar

import pydantic
import yaml

from stages import TF_LOG_LEVEL_FROM_USER

PARAMS_FILE = Path("params.yaml")


class StageError(Exception):
    """A problem with the user's input (params, data file, weights) that stops a stage.

    The message is one line that names the bad key or file; ``run_stage`` prints it
    and exits non-zero, without a traceback.
    """


class ParamsError(StageError):
    """A key in params.yaml is missing, unknown, of the wrong type or out of range."""


# --------------------------------------------------------------------------- params
class Section(pydantic.BaseModel):
    """Keys of params.yaml as a pydantic model: a stage's sections (one field a section),
    or the keys of one section.

    Every key is required, an unknown key is an error, and nothing is coerced (``"3"``
    is not an integer, ``true`` is not 1). A validator across keys raises ValueError
    with a message that starts with the key it blames, e.g. ``"jit_compile: ..."``.
    """

    model_config = pydantic.ConfigDict(extra="forbid", strict=True, frozen=True)


def _identifier(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError(
            "a name must start with a letter or _ and hold only letters, digits and _ "
            "(so that `dvc exp run -S` can set its keys)"
        )
    return name


# The names of a section's items (the toy datasets): identifiers, because DVC parses
# `dvc exp run -S section.name.key=value` with Hydra's grammar, where a key cannot start
# with a digit; a name is also a file name and a stage name.
Name = Annotated[str, pydantic.AfterValidator(_identifier)]

_P = TypeVar("_P", bound=Section)


def describe_error(error: Mapping[str, Any], separator: str = ".") -> str:
    """One pydantic error as ``key: problem, got value``, the key dotted as in params.yaml
    (or its parts joined by ``separator``, for keys that hold dots themselves)."""
    location = [part for part in error["loc"] if part != "[key]"]
    key = "".join(f"[{part}]" if isinstance(part, int) else f"{separator}{part}" for part in location)
    key = key.removeprefix(separator)
    kind, message = error["type"], error["msg"]
    if kind == "value_error":  # our own validators: the message may start with the key it blames
        message = message.removeprefix("Value error, ")
        blamed, _, problem = message.partition(": ")
        if problem and re.fullmatch(r"\w+", blamed):
            key, message = f"{key}{separator}{blamed}".removeprefix(separator), problem
    elif kind in ("missing", "extra_forbidden"):
        message = f"{'missing' if kind == 'missing' else 'unknown'} key"
    else:
        if kind == "too_short":
            message = f"must hold at least {error['ctx']['min_length']} item(s)"
        message = f"{message.replace('Input should be', 'must be')}, got {error['input']!r}"
    return f"{key}: {message}" if key else message


def read_params(model: type[_P], path: Path | str = PARAMS_FILE) -> _P:
    """The sections of params.yaml that ``model`` names, validated before any work.

    Only those sections are read, so a stage is not stopped by another stage's section.
    """
    path = Path(path)
    raw = read_yaml(path, ParamsError)
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: must hold a mapping of sections")
    try:
        return model.model_validate({name: raw[name] for name in model.model_fields if name in raw})
    except pydantic.ValidationError as err:
        raise ParamsError(f"{path}: {describe_error(err.errors()[0])}") from None


def stage_args(stage: str, argv: list[str], *paths: str, items: Iterable[str] | None = None) -> argparse.Namespace:
    """A stage's command line, as dvc.yaml writes it: ``--NAME PATH`` for each of ``paths``
    (the files it reads and writes, which dvc.yaml alone states), and first, for a stage
    that runs once per item of a params section (``foreach``), the item's name.

    A wrong command line stops the stage with argparse's usage line, exit status 2.
    """
    parser = argparse.ArgumentParser(prog=f"python -m stages.{stage}")
    if items is not None:
        parser.add_argument("name", choices=list(items), help="an item of params.yaml's section")
    for name in paths:
        parser.add_argument(f"--{name}", type=Path, required=True, metavar="PATH")
    return parser.parse_args(argv)


def stage_command(stage: str, item: str | None = None, path: Path = Path("dvc.yaml")) -> list[str]:
    """The command line that dvc.yaml gives ``stage`` (for ``item`` of a ``foreach``), after
    ``python -m stages.<stage>``: how code other than DVC (the classify command, the
    tests) finds the paths that dvc.yaml alone states."""
    import shlex

    definition = (read_yaml(path) or {}).get("stages", {}).get(stage)
    if definition is None:
        raise StageError(f"{path}: no stage {stage}")
    body = definition.get("do", definition)
    command = body["cmd"].replace("${key}", item or "").replace("${item}", item or "")
    return shlex.split(command)[3:]


def stage_paths(stage: str, item: str | None = None, path: Path = Path("dvc.yaml")) -> dict[str, Path]:
    """The ``--NAME PATH`` pairs of ``stage_command``, as a dict of paths."""
    words = stage_command(stage, item, path)
    pairs = words[len(words) % 2:]  # a foreach stage's command starts with the item's name
    return {pairs[i].removeprefix("--"): Path(pairs[i + 1]) for i in range(0, len(pairs), 2)}


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


def read_yaml(path: Path, error: type[StageError] = StageError) -> Any:
    """A YAML file's content; a missing or malformed file raises ``error`` naming it."""
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise error(f"{path}: file not found (run from the project root)") from None
    except yaml.YAMLError as err:
        raise error(f"{path}: not valid YAML: {' '.join(str(err).split())}") from None


def one_line(err: BaseException, limit: int = 200) -> str:
    """An exception's message on one line, cut short: Keras's can run to pages."""
    message = " ".join(str(err).split())
    return message if len(message) <= limit else message[: limit - 3] + "..."


@contextlib.contextmanager
def download_or_stop(what: str, key: str, instead: str) -> Iterator[None]:
    """Turn a failed Keras download into a StageError that names the params ``key`` to set
    to ``instead`` (a local file). Keras raises a bare Exception when the network fails."""
    try:
        yield
    except Exception as err:
        raise StageError(f"could not download {what} ({one_line(err)}); set {key} to {instead}") from None


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


# --------------------------------------------------------------------------- seeding
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


# --------------------------------------------------------------------------- resuming
class ResumeFolder:
    """A folder that holds what a killed run of a stage needs to resume (git-ignored, not a
    DVC output), valid only for the run that ``key`` (any JSON value) describes.

    ``key.json`` is written when the folder is opened; a folder that holds another key
    (other params, data or devices) is emptied first, so nothing of another run is ever
    resumed. Stages write its files atomically, so a file that is there is whole, and
    ``clear()`` it once their outputs are written.
    """

    def __init__(self, folder: Path, key: Any):
        self.folder = folder
        key_path = folder / "key.json"
        try:
            saved_key = json.loads(key_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            saved_key = None
        if saved_key != key:
            if saved_key is not None:
                print(f"{folder} is from other params or data: starting afresh", flush=True)
            self.clear()
            write_json(key_path, key)

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


# --------------------------------------------------------------------------- devices
def distribution_strategy() -> tuple[Any, list[str]]:
    """Where a model runs, as ``(strategy, device names)``.

    A MirroredStrategy over the GPUs when there are several, or over the CPU's logical
    devices when the process split the CPU before TensorFlow started
    (``tf.config.set_logical_device_configuration``: how the tests run the
    several-device path without GPUs); else TensorFlow's default strategy, one device.
    """
    import tensorflow as tf

    devices = [device.name for device in tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")]
    if len(devices) > 1:
        return tf.distribute.MirroredStrategy(devices), devices
    return tf.distribute.get_strategy(), devices[:1]


def describe_devices(devices: list[str]) -> str:
    """The devices a model runs on, for a person: ``CPU:0 (2 cores)``, ``GPU:0, GPU:1 (NVIDIA A100)``."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    kinds = sorted({tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus})
    return f"{', '.join(d.removeprefix('/device:') for d in devices)} ({', '.join(kinds) or f'{os.cpu_count()} cores'})"


# --------------------------------------------------------------------------- outputs
@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place only if the block succeeds.

    A stage killed halfway thus never leaves a file that looks finished. The
    temporary name keeps the suffix, since Keras and Matplotlib pick the format by it.
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


def save_figure(fig: Any, path: Path | str) -> None:
    """Save a Matplotlib figure atomically."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight")


# Zip entries carry a modification time; outputs get this fixed one, so that the same
# params give the same bytes and a rerun leaves dvc.lock as it was.
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


def _write_fixed_zip(path: Path, entries: Iterable[tuple[str, bytes, int]]) -> None:
    """Write ``(name, content, compress_type)`` entries to a zip file, each with the fixed time."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, content, compress_type in entries:
            fixed = zipfile.ZipInfo(name, date_time=FIXED_ZIP_TIME)
            fixed.compress_type = compress_type
            archive.writestr(fixed, content)


def _renumber_shared_objects(config: Any, numbers: dict[int, int]) -> Any:
    """``config`` with each ``shared_object_id`` (a Python ``id()``, different in every
    process) replaced by its order of first appearance; equal ids stay equal."""
    if isinstance(config, list):
        return [_renumber_shared_objects(item, numbers) for item in config]
    if not isinstance(config, dict):
        return config
    renumbered = {key: _renumber_shared_objects(value, numbers) for key, value in config.items()}
    if "shared_object_id" in renumbered:
        renumbered["shared_object_id"] = numbers.setdefault(renumbered["shared_object_id"], len(numbers))
    return renumbered


def save_keras_model(model: Any, path: Path | str) -> None:
    """``model.save`` to a ``.keras`` file whose bytes depend on the model alone.

    Keras writes the save time into ``metadata.json`` and into the weights entry of the
    zip, and object addresses into ``config.json``; the times go and the addresses are
    renumbered, so that identical models are identical files and dvc.lock stays put.
    """
    with atomic_path(path) as tmp:
        model.save(tmp)
        with zipfile.ZipFile(tmp) as saved:
            entries = [(entry, saved.read(entry)) for entry in saved.infolist()]
        fixed = []
        for entry, content in entries:
            if entry.filename == "metadata.json":
                metadata = json.loads(content)
                metadata.pop("date_saved", None)
                content = json.dumps(metadata).encode()
            elif entry.filename == "config.json":
                content = json.dumps(_renumber_shared_objects(json.loads(content), {})).encode()
            fixed.append((entry.filename, content, entry.compress_type))
        _write_fixed_zip(tmp, fixed)


def save_skops(model: Any, path: Path | str) -> None:
    """``skops.io.dump`` to a file whose bytes depend on the model alone.

    skops names each node (``__id__``) and each array's file after a Python ``id()``,
    different in every process, and stamps the zip entries with the time; the ids are
    renumbered in order of first appearance (equal ids stay equal) and the times fixed.
    """
    import io

    import skops.io

    numbers: dict[str, str] = {}

    def renumber(match: re.Match) -> str:
        return match[1] + numbers.setdefault(match[2], str(len(numbers)))

    with zipfile.ZipFile(io.BytesIO(skops.io.dumps(model))) as saved:
        schema = re.sub(r'("__id__": |"file": ")(\d+)', renumber, saved.read("schema.json").decode())
        entries = [
            ("schema.json", schema.encode(), entry.compress_type) if entry.filename == "schema.json"
            else (numbers[Path(entry.filename).stem] + Path(entry.filename).suffix, saved.read(entry),
                  entry.compress_type)
            for entry in saved.infolist()
        ]
    with atomic_path(path) as tmp:
        _write_fixed_zip(tmp, entries)


def write_run_facts(stage: str, facts: dict[str, Any], folder: Path = Path("runs")) -> None:
    """Write how a run went (seconds, speed, device) with the library versions to
    ``runs/<stage>.json``.

    These change from run to run with the same params, so they are neither metrics
    nor DVC outputs: a hashed file that holds a time would change dvc.lock on every
    rerun. The folder is git-ignored; the stage's log prints the same figures.
    """
    from importlib.metadata import version

    versions = {package: version(package) for package in ("tensorflow", "keras", "scikit-learn", "numpy", "dvc")}
    write_json(folder / f"{stage}.json", {**facts, "python": sys.version.split()[0], "versions": versions})


def write_history_csv(history: dict[str, list[float]], path: Path | str) -> None:
    """Write Keras's ``History.history`` as a CSV with a 1-based ``epoch`` column (DVC plots' x).

    Not Keras's ``CSVLogger``: that one writes the file in place while training (a
    killed run leaves a file that looks finished), numbers epochs from 0, and prints
    floats at full repr, so this writes once, atomically, at a fixed precision.
    """
    import pandas as pd

    frame = pd.DataFrame(history)
    frame.insert(0, "epoch", range(1, len(frame) + 1))
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6g")


def keras_progress(epochs: int, every: int = 1) -> Any:
    """A Keras callback that prints one flushed line per ``every`` epochs.

    DVC captures a stage's output through a pipe, where Keras's progress bar turns
    into a wall of carriage returns. Keras's ``verbose=2`` prints one line for every
    epoch, hundreds for the toy MLPs, so this prints every ``every``-th, with its time.
    """
    import time

    import keras

    class EpochLine(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self._started = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            done = epoch + 1
            if done % every and done != epochs:
                return
            shown = "  ".join(f"{k}={v:.4f}" for k, v in (logs or {}).items() if k != "learning_rate")
            took = time.perf_counter() - self._started
            print(f"epoch {done}/{epochs}  {shown}  ({took:.1f}s)", flush=True)

    return EpochLine()

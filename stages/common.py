"""Helpers shared by every stage: params validation, seeding, atomic output files.

Each stage module keeps its work in pure functions and a small ``main()``; this
module holds what those ``main()`` functions have in common, so that no stage
copies another.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import tempfile
import threading
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from stages import TF_LOG_LEVEL_FROM_USER

PARAMS_FILE = Path("params.yaml")
_UMASK = os.umask(0)
os.umask(_UMASK)


class StageError(Exception):
    """A problem with the user's input (params, data file, weights) that stops a stage.

    The message is one line that names the bad key or file; ``run_stage`` prints it
    and exits non-zero, without a traceback.
    """


class ParamsError(StageError):
    """A key in params.yaml is missing, unknown, of the wrong type or out of range."""


# --------------------------------------------------------------------------- params
# A validator takes the dotted key and the raw value, and returns the value to use
# (possibly normalised, e.g. an int widened to float) or raises ParamsError.
Validator = Callable[[str, Any], Any]


def _fail(key: str, expected: str, value: Any) -> None:
    raise ParamsError(f"{key}: must be {expected}, got {value!r}")


def _bounds_text(minimum: float | None, maximum: float | None, exclusive_min: bool) -> str:
    parts = []
    if minimum is not None:
        parts.append(f"{'>' if exclusive_min else '>='} {minimum}")
    if maximum is not None:
        parts.append(f"<= {maximum}")
    return " and ".join(parts)


def integer(minimum: int | None = None, maximum: int | None = None) -> Validator:
    """An int (not a bool) within the inclusive bounds."""
    expected = " ".join(filter(None, ["an integer", _bounds_text(minimum, maximum, False)]))

    def check(key: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(key, expected, value)
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            _fail(key, expected, value)
        return value

    return check


def number(
    minimum: float | None = None, maximum: float | None = None, exclusive_min: bool = False
) -> Validator:
    """A real number (an int is accepted and widened) within the bounds."""
    expected = " ".join(filter(None, ["a number", _bounds_text(minimum, maximum, exclusive_min)]))

    def check(key: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _fail(key, expected, value)
        too_low = minimum is not None and (value <= minimum if exclusive_min else value < minimum)
        if too_low or (maximum is not None and value > maximum):
            _fail(key, expected, value)
        return float(value)

    return check


def boolean() -> Validator:
    def check(key: str, value: Any) -> bool:
        if not isinstance(value, bool):
            _fail(key, "true or false", value)
        return value

    return check


def text() -> Validator:
    """A non-empty string."""

    def check(key: str, value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            _fail(key, "a non-empty string", value)
        return value

    return check


def choice(*options: Any) -> Validator:
    def check(key: str, value: Any) -> Any:
        if value not in options:
            _fail(key, "one of " + ", ".join(map(str, options)), value)
        return value

    return check


def list_of(item: Validator, min_length: int = 1) -> Validator:
    def check(key: str, value: Any) -> list:
        if not isinstance(value, list):
            _fail(key, "a list", value)
        if len(value) < min_length:
            _fail(key, f"a list of at least {min_length} item(s)", value)
        return [item(f"{key}[{i}]", v) for i, v in enumerate(value)]

    return check


def mapping(fields: dict[str, Validator]) -> Validator:
    """A dict with exactly these keys: a missing or an unknown key is an error."""

    def check(key: str, value: Any) -> dict:
        if not isinstance(value, dict):
            _fail(key, "a mapping of " + ", ".join(fields), value)
        unknown = sorted(set(value) - set(fields), key=str)
        if unknown:
            raise ParamsError(
                f"{key}.{unknown[0]}: unknown key (expected one of {', '.join(fields)})"
            )
        for name in fields:
            if name not in value:
                raise ParamsError(f"{key}.{name}: missing key")
        return {name: fields[name](f"{key}.{name}", value[name]) for name in fields}

    return check


NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def named(item: Validator) -> Validator:
    """A non-empty dict of named items (e.g. the toy datasets), each checked by ``item``.

    A name must be an identifier: DVC parses ``dvc exp run -S section.name.key=value``
    with Hydra's override grammar, where a key cannot start with a digit, and the name
    is also a file name and a stage name.
    """

    def check(key: str, value: Any) -> dict:
        if not isinstance(value, dict) or not value:
            _fail(key, "a non-empty mapping of names to settings", value)
        for name in value:
            if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
                raise ParamsError(
                    f"{key}.{name}: a name must start with a letter or _ and hold only letters, "
                    "digits and _ (so that `dvc exp run -S` can set its keys)"
                )
        return {name: item(f"{key}.{name}", v) for name, v in value.items()}

    return check


def item_from_argv(section: str, params: dict[str, Any], argv: list[str]) -> str:
    """The one command-line argument of a stage that runs once per item of a section
    (``dvc.yaml``'s ``foreach``), checked against the names in that section."""
    names = params[section]
    if len(argv) != 1 or argv[0] not in names:
        raise StageError(f"usage: python -m stages.{section} NAME, NAME one of {', '.join(names)} (params.yaml)")
    return argv[0]


def local_path(key: str, value: str, folder: Path, keywords: tuple[str, ...]) -> Path:
    """The local file or folder that params key ``key`` names instead of a download.

    It must lie under ``folder``, which the stage declares as a DVC dependency, so that
    replacing the file reruns the stage; ``keywords`` are the key's other values, named
    in the message.
    """
    path = Path(value)
    if path != folder and folder not in path.parents:
        raise ParamsError(
            f"params.yaml: {key}: must be {' or '.join(keywords)}, or a path under {folder}/ "
            f"(copy or link it there, so that DVC tracks it), got {value!r}"
        )
    return path


def read_yaml(path: Path, error: type[StageError] = StageError) -> Any:
    """A YAML file's content; a missing or malformed file raises ``error`` naming it."""
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise error(f"{path}: file not found (run from the project root)") from None
    except yaml.YAMLError as err:
        raise error(f"{path}: not valid YAML: {' '.join(str(err).split())}") from None


def read_params(schema: dict[str, Validator], path: Path | str = PARAMS_FILE) -> dict[str, Any]:
    """Load the top-level sections named in ``schema`` from params.yaml and validate them.

    Only the named sections are read, so a stage is not stopped by another stage's
    section; within a section every key is checked, before any work is done.
    """
    path = Path(path)
    raw = read_yaml(path, ParamsError)
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: must hold a mapping of sections")
    params = {}
    for section, validate in schema.items():
        if section not in raw:
            raise ParamsError(f"{path}: {section}: missing key")
        try:
            params[section] = validate(section, raw[section])
        except ParamsError as err:
            raise ParamsError(f"{path}: {err}") from None
    return params


def one_line(err: BaseException, limit: int = 200) -> str:
    """An exception's message on one line, cut short: Keras's can run to pages."""
    message = " ".join(str(err).split())
    return message if len(message) <= limit else message[: limit - 3] + "..."


def read_npz(path: Path) -> dict[str, Any]:
    """Every named array of a .npz file; one that cannot be read raises StageError naming it."""
    import numpy as np

    try:
        loaded = np.load(path)  # no pickles: allow_pickle is off by default
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError("a single .npy array, not named arrays")
        with loaded as archive:
            return {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise StageError(f"{path}: not a readable .npz file ({one_line(err)})") from None


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


# --------------------------------------------------------------------------- outputs
@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place only if the block succeeds.

    A stage killed halfway thus never leaves a file that looks finished. The
    temporary name keeps the suffix, since Keras and Matplotlib pick the format by it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path | str, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def save_figure(fig: Any, path: Path | str) -> None:
    """Save a Matplotlib figure atomically and release its memory."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight")
    plt.close(fig)


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
        with zipfile.ZipFile(tmp, "w") as archive:
            for entry, content in entries:
                if entry.filename == "metadata.json":
                    metadata = json.loads(content)
                    metadata.pop("date_saved", None)
                    content = json.dumps(metadata).encode()
                elif entry.filename == "config.json":
                    content = json.dumps(_renumber_shared_objects(json.loads(content), {})).encode()
                fixed = zipfile.ZipInfo(entry.filename, date_time=FIXED_ZIP_TIME)
                fixed.compress_type = entry.compress_type
                archive.writestr(fixed, content)


def write_run_facts(stage: str, facts: dict[str, Any], folder: Path = Path("runs")) -> None:
    """Write how a run went (seconds, speed, device) with the library versions to
    ``runs/<stage>.json``.

    These change from run to run with the same params, so they are neither metrics
    nor DVC outputs: a hashed file that holds a time would change dvc.lock on every
    rerun. The folder is git-ignored; the stage's log prints the same figures.
    """
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for package in ("tensorflow", "keras", "scikit-learn", "numpy", "dvc"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            continue
    write_json(folder / f"{stage}.json", {**facts, "python": sys.version.split()[0], "versions": versions})


def write_history_csv(history: dict[str, list[float]], path: Path | str) -> None:
    """Write Keras's ``History.history`` as a CSV with a 1-based ``epoch`` column (DVC plots' x)."""
    import pandas as pd

    frame = pd.DataFrame(history)
    frame.insert(0, "epoch", range(1, len(frame) + 1))
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6g")


def write_confusion_csv(actual: Any, predicted: Any, path: Path | str) -> None:
    """Write one row per example with ``actual`` and ``predicted`` columns, the layout
    DVC's ``confusion`` plot template reads."""
    import pandas as pd

    frame = pd.DataFrame({"actual": actual, "predicted": predicted})
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def count_params(model: Any) -> dict[str, int]:
    trainable = int(sum(w.numpy().size for w in model.trainable_weights))
    total = int(model.count_params())
    return {"params_total": total, "params_trainable": trainable}


def keras_progress(epochs: int, every: int = 1) -> Any:
    """A Keras callback that prints one flushed line per ``every`` epochs.

    DVC captures a stage's output through a pipe, where Keras's progress bar turns
    into a wall of carriage returns; one line per epoch is what a person can follow.
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

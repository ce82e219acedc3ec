"""Helpers shared by every stage: params validation, seeding, atomic output files.

Each stage module keeps its work in pure functions and a small ``main()``; this
module holds what those ``main()`` functions have in common, so that no stage
copies another.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

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


def named(names: tuple[str, ...], item: Validator) -> Validator:
    """A non-empty dict whose keys are drawn from ``names`` (e.g. dataset names)."""

    def check(key: str, value: Any) -> dict:
        if not isinstance(value, dict) or not value:
            _fail(key, "a non-empty mapping of " + ", ".join(names), value)
        for name in value:
            if name not in names:
                raise ParamsError(
                    f"{key}.{name}: unknown name (expected one of {', '.join(names)})"
                )
        return {name: item(f"{key}.{name}", v) for name, v in value.items()}

    return check


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


def run_stage(main: Callable[[list[str]], None]) -> None:
    """Call a stage's ``main(argv)``; turn a StageError into one line and exit status 2."""
    try:
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


def save_npz(path: Path | str, **arrays: Any) -> None:
    import numpy as np

    with atomic_path(path) as tmp:
        np.savez_compressed(tmp, **arrays)


def save_keras_model(model: Any, path: Path | str) -> None:
    with atomic_path(path) as tmp:
        model.save(tmp)


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

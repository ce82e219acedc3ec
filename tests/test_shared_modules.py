"""The modules the stages share: params validation (stages.shared.config, and local copies in
stages.shared.downloads), atomic writes and a stage as a command (stages.shared.runner),
same-bytes zips (stages.shared.files, keras_files, skops_files), downloads
(stages.shared.downloads), a resume folder (stages.shared.resume) and TensorFlow's stderr
(stages.shared.tensorflow_runtime)."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
from pathlib import Path
from typing import Annotated, Literal

import pydantic
import pytest
from pydantic import Field

from stages.shared.config import Name, ParamsError, Section, StageError, read_params
from stages.shared.downloads import DownloadError, download_or_stop, local_or
from stages.shared.files import save_npz
from stages.shared.keras_files import save_keras_model
from stages.shared.resume import ResumeFolder
from stages.shared.runner import atomic_path, write_json
from stages.shared.skops_files import save_skops
from tests.conftest import project_env


class Training(Section):
    epochs: int = Field(ge=1)
    rate: float = Field(gt=0)
    layers: list[Annotated[int, Field(ge=1)]] = Field(min_length=1)
    mode: Literal["a", "b"]
    fast: bool

    @pydantic.model_validator(mode="after")
    def fast_needs_mode_a(self):
        if self.fast and self.mode != "a":
            raise ValueError("fast: needs mode a")
        return self


class Params(Section):
    seed: int = Field(ge=0)
    train: Training
    data: local_or(Path("data/local/x"), "file", "download")  # type: ignore[valid-type]


GOOD = "seed: 1\ntrain: {epochs: 3, rate: 0.1, layers: [3, 5], mode: a, fast: false}\ndata: download\n"


def read(tmp_path, text):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return read_params(Params, path)


def test_valid_params_are_returned_typed(tmp_path, monkeypatch):
    params = read(tmp_path, GOOD.replace("rate: 0.1", "rate: 1"))
    assert params.seed == 1 and params.train.rate == 1.0 and isinstance(params.train.rate, float)
    assert params.train.layers == [3, 5] and params.train.fast is False and params.data == "download"
    monkeypatch.chdir(tmp_path)  # the local folder is relative to the project root
    (tmp_path / "data/local/x").mkdir(parents=True)
    (tmp_path / "data/local/x/y.npz").write_bytes(b"")
    assert read(tmp_path, GOOD.replace("data: download", "data: y.npz")).data == "y.npz"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("epochs: 3", "epochs: -3"), "train.epochs: must be greater than or equal to 1, got -3"),
        (("epochs: 3", "epochs: three"), "train.epochs: must be a valid integer, got 'three'"),
        (("epochs: 3", "epochs: true"), "train.epochs: must be a valid integer, got True"),
        (("epochs: 3", "epochs: '3'"), "train.epochs: must be a valid integer, got '3'"),
        (("rate: 0.1", "rate: 0"), "train.rate: must be greater than 0, got 0"),
        (("layers: [3, 5]", "layers: []"), "train.layers: must hold at least 1 item(s), got []"),
        (("layers: [3, 5]", "layers: [3, 0]"), "train.layers[1]: must be greater than or equal to 1, got 0"),
        (("mode: a", "mode: c"), "train.mode: must be 'a' or 'b', got 'c'"),
        (("fast: false", "fast: 1"), "train.fast: must be a valid boolean, got 1"),
        (("fast: false", "fast: false, epoch: 3"), "train.epoch: unknown key"),
        (("epochs: 3, ", ""), "train.epochs: missing key"),
        (("seed: 1\n", ""), "seed: missing key"),
        (("mode: a, fast: false", "mode: b, fast: true"), "train.fast: needs mode a"),
        (
            ("data: download", "data: /elsewhere/y.npz"),
            "data: must be download, or the name of a file inside data/local/x/, not a path: set it to y.npz, the "
            "name of the file inside data/local/x/ (copy or link it there, so that DVC tracks it), got '/elsewhere/y.npz'",
        ),
        (
            ("data: download", "data: data/local/x/y.npz"),
            "data: must be download, or the name of a file inside data/local/x/, not a path: set it to y.npz, the "
            "name of the file inside data/local/x/ (copy or link it there, so that DVC tracks it), "
            "got 'data/local/x/y.npz'",
        ),
        (
            ("data: download", "data: '..'"),
            "data: must be download, or the name of a file inside data/local/x/, got '..'",
        ),
        (
            ("data: download", "data: absent.npz"),
            "data: data/local/x/absent.npz not found: put the file there, or set it to download; got 'absent.npz'",
        ),
    ],
)
def test_bad_params_name_the_key(tmp_path, monkeypatch, change, message):
    monkeypatch.chdir(tmp_path)  # the local folder is relative to the project root
    with pytest.raises(ParamsError) as error:
        read(tmp_path, GOOD.replace(*change))
    assert str(error.value) == f"{tmp_path / 'params.yaml'}: {message}"


def test_other_sections_are_not_read(tmp_path):
    assert read(tmp_path, GOOD + "other_stage: {anything: [1, 2]}\n").seed == 1


def test_missing_or_broken_params_file(tmp_path):
    with pytest.raises(ParamsError, match="file not found"):
        read_params(Params, tmp_path / "absent.yaml")
    with pytest.raises(ParamsError, match="not valid YAML"):
        read(tmp_path, "seed: [1\n")


def test_named_items_need_identifier_names(tmp_path):
    class Named(Section):
        gen: dict[Name, int] = Field(min_length=1)

    path = tmp_path / "params.yaml"
    path.write_text("gen: {two_blops: 1, _b2: 2}\n")
    assert read_params(Named, path).gen == {"two_blops": 1, "_b2": 2}
    # DVC parses `-S gen.2blop.x=1` with Hydra's grammar, where a key cannot start with a digit.
    for bad in ("2blop", "blop-circle", "a.b"):
        path.write_text(f"gen: {{'{bad}': 1}}\n")
        with pytest.raises(ParamsError, match=rf": gen\.{re.escape(bad)}: a name must start with a letter or _"):
            read_params(Named, path)
    path.write_text("gen: {}\n")
    with pytest.raises(ParamsError, match=r": gen: must hold at least 1 item"):
        read_params(Named, path)


def test_atomic_path_leaves_nothing_when_the_write_fails(tmp_path):
    target = tmp_path / "out" / "model.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert list(target.parent.iterdir()) == []
    write_json(target, {"a": 1})
    assert target.read_text() == '{\n  "a": 1\n}\n'
    assert [p.name for p in target.parent.iterdir()] == ["model.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


def test_stage_error_is_one_line_and_exit_status_2(tmp_path):
    (tmp_path / "params.yaml").write_text(
        "seed: 1\ngenerate_toy: {two_blops: {layout: blob_pair, n_samples: -5, noise: 1}}\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "stages.generate_toy", "two_blops"],
        cwd=tmp_path,
        env=project_env(),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr == (
        "error: params.yaml: generate_toy.two_blops.n_samples: must be greater than or equal to 8, got -5\n"
    )
    assert not (tmp_path / "data").exists()


def test_npz_and_keras_files_hold_no_time_and_no_address(tmp_path, monkeypatch):
    import time

    import keras
    import numpy as np

    arrays = {"x": np.arange(6, dtype=np.float32).reshape(3, 2), "names": np.array(["a", "bc"])}
    save_npz(tmp_path / "a.npz", **arrays)
    times = iter([1_000_000_000.0, 1_900_000_000.0])
    monkeypatch.setattr(time, "time", lambda: next(times, 1_900_000_000.0))  # zip entries read the clock
    save_npz(tmp_path / "b.npz", **arrays)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    with np.load(tmp_path / "b.npz") as loaded:
        assert loaded["x"].tolist() == arrays["x"].tolist() and loaded["names"].tolist() == ["a", "bc"]

    def model():  # a new Python object each time: config.json would carry its address
        keras.utils.set_random_seed(0)
        inputs = keras.Input((2,), name="point")
        hidden = keras.layers.Dense(3, name="hidden")(inputs)
        return keras.Model(inputs, keras.layers.Dense(2, name="out")(hidden), name="tiny")

    save_keras_model(model(), tmp_path / "a.keras")
    save_keras_model(model(), tmp_path / "b.keras")
    assert (tmp_path / "a.keras").read_bytes() == (tmp_path / "b.keras").read_bytes()
    loaded = keras.models.load_model(tmp_path / "b.keras")
    assert all(np.array_equal(a, b) for a, b in zip(loaded.get_weights(), model().get_weights()))


def test_skops_files_hold_no_time_and_no_address(tmp_path, monkeypatch):
    import time

    import numpy as np

    from stages.commands.model_files import load_knn
    from stages.fit_knn import make_knn_pipeline

    x, y = np.random.default_rng(0).random((8, 32), dtype=np.float32), np.arange(8) % 2  # as wide as features
    # Both fitted models alive at once: skops would name their nodes after two sets of addresses.
    models = [make_knn_pipeline(3).fit(x, y) for _ in range(2)]
    for model, name, clock in zip(models, ("a", "b"), (1_000_000_000.0, 1_900_000_000.0)):
        monkeypatch.setattr(time, "time", lambda clock=clock: clock)  # zip entries read the clock
        save_skops(model, tmp_path / f"{name}.skops")
    assert (tmp_path / "a.skops").read_bytes() == (tmp_path / "b.skops").read_bytes()
    assert np.array_equal(load_knn(tmp_path / "b.skops").predict_proba(x), models[0].predict_proba(x))


def test_skops_files_are_the_same_from_another_process(tmp_path):
    # Another process, other addresses: what a rerun of the stage sees.
    save = (
        "import sys, numpy as np; from stages.fit_knn import make_knn_pipeline; "
        "from stages.shared.skops_files import save_skops; "
        "x, y = np.random.default_rng(0).random((8, 32), dtype=np.float32), np.arange(8) % 2; "
        "save_skops(make_knn_pipeline(3).fit(x, y), sys.argv[1])"
    )
    for name in ("a", "b"):
        subprocess.run(
            [sys.executable, "-c", save, tmp_path / f"{name}.skops"],
            check=True,
            env=project_env(),
        )
    assert (tmp_path / "a.skops").read_bytes() == (tmp_path / "b.skops").read_bytes()


def rename_schema(members):
    return {("state.json" if name == "schema.json" else name): content for name, content in members.items()}


# Files that skops might write one day, made from today's: what save_skops must refuse
# rather than write with bytes that change from run to run.
SKOPS_DOCTORINGS = {
    "spacing": (
        lambda members: {**members, "schema.json": members["schema.json"].replace(b'"__id__": ', b'"__id__":')},
        r'"__id__": \d+ left as written in schema\.json',
    ),
    "extra member": (
        lambda members: {**members, "notes.txt": b"x"},
        "member notes.txt, which schema.json does not name",
    ),
    "no schema": (rename_schema, "no schema.json"),
    "not JSON": (lambda members: {**members, "schema.json": b"schema: 1"}, r"schema\.json is not JSON \(.*\)"),
}


def skops_stop_message(path, what):
    import skops

    return (
        rf"{re.escape(str(path))}: skops {re.escape(skops.__version__)} wrote a file that "
        rf"stages/shared/skops_files\.py cannot make the same from run to run: {what}"
    )


@pytest.mark.parametrize("doctoring", SKOPS_DOCTORINGS)
def test_a_skops_file_it_does_not_recognise_stops_with_one_line(tmp_path, monkeypatch, doctoring):
    import io
    import zipfile

    import numpy as np
    import skops.io

    from stages.fit_knn import make_knn_pipeline

    doctor, what = SKOPS_DOCTORINGS[doctoring]
    dumps = skops.io.dumps

    def doctored_dumps(obj):
        with zipfile.ZipFile(io.BytesIO(dumps(obj))) as saved:
            members = doctor({name: saved.read(name) for name in saved.namelist()})
        doctored = io.BytesIO()
        with zipfile.ZipFile(doctored, "w") as archive:
            for name, content in members.items():
                archive.writestr(name, content)
        return doctored.getvalue()

    monkeypatch.setattr(skops.io, "dumps", doctored_dumps)
    x, y = np.random.default_rng(0).random((8, 32), dtype=np.float32), np.arange(8) % 2
    path = tmp_path / "knn.skops"
    with pytest.raises(StageError) as stop:
        save_skops(make_knn_pipeline(3).fit(x, y), path)
    assert re.fullmatch(skops_stop_message(path, what), str(stop.value))
    assert not path.exists()


def test_a_skops_file_with_random_names_stops_with_one_line(tmp_path):
    # skops names the file of a bytes object after a random UUID.
    path = tmp_path / "blob.skops"
    with pytest.raises(StageError) as stop:
        save_skops({"blob": b"\x00\x01"}, path)
    assert re.fullmatch(
        skops_stop_message(path, r'"file": "[^"]+\.bin" left as written in schema\.json'), str(stop.value)
    )
    assert not path.exists()


NOISY_STAGE = """
import os, sys
from stages.shared.runner import run_stage
from stages.shared.tensorflow_runtime import quiet_tensorflow_stderr
def main(argv):
    os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\\n")
    os.write(2, b"I0000 00:00:1795814380.884829    9022 port.cc:153] oneDNN custom operations are on. You may\\n")
    os.write(2, b"E0000 00:00:1795814390.981311    9022 cuda_platform.cc:52] failed call to cuInit: INTERNAL\\n")
    os.write(2, b"E0000 00:00:1795814390.981311    9022 other.cc:52] a real error\\n")
    print("a stage line", file=sys.stderr)
run_stage(main, quiet_tensorflow_stderr)
"""


@pytest.mark.parametrize("user_level", [None, "inherited", "0"])
def test_tensorflow_start_up_lines_are_dropped_unless_the_user_set_a_log_level(user_level):
    env = project_env()
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    env.pop("STAGES_DEFAULT_TF_CPP_MIN_LOG_LEVEL", None)
    if user_level == "inherited":  # from a parent process that imported `stages`, as dvc under pytest
        env["TF_CPP_MIN_LOG_LEVEL"] = env["STAGES_DEFAULT_TF_CPP_MIN_LOG_LEVEL"] = "2"
    elif user_level is not None:
        env["TF_CPP_MIN_LOG_LEVEL"] = user_level
    result = subprocess.run([sys.executable, "-c", NOISY_STAGE], env=env, capture_output=True, text=True)
    assert result.returncode == 0
    lines = result.stderr.splitlines()
    if user_level in (None, "inherited"):
        assert lines == ["E0000 00:00:1795814390.981311    9022 other.cc:52] a real error", "a stage line"]
    else:
        assert len(lines) == 5  # the user asked for TensorFlow's own output


# A stage that dies: without unwinding, on a C++ abort (CUDA error, failed check) or the
# OOM killer's SIGKILL, or on Ctrl-C, which reaches its whole process group. The lines it
# wrote to file descriptor 2 just before are the ones that say why, and must reach the
# log; TensorFlow's start-up lines are still dropped.
DYING_STAGE = """
import os, resource, signal
from stages.shared.runner import run_stage
from stages.shared.tensorflow_runtime import quiet_tensorflow_stderr
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file from the abort
def main(argv):
    os.write(2, b"I0000 00:00:1795814380.884829    9022 port.cc:153] oneDNN custom operations are on. You may\\n")
    os.write(2, b"F0000 00:00:1795814390.981311    9022 cuda_executor.cc:52] Check failed: the reason it dies\\n")
    {death}
run_stage(main, quiet_tensorflow_stderr)
"""


@pytest.mark.parametrize(
    "death, status, last_line",
    [
        ("os.abort()", -signal.SIGABRT, None),
        ("os.kill(os.getpid(), signal.SIGKILL)", -signal.SIGKILL, None),
        ("os.killpg(os.getpgrp(), signal.SIGINT)", -signal.SIGINT, "KeyboardInterrupt"),
    ],
)
def test_a_stage_that_dies_still_shows_its_last_stderr_lines(death, status, last_line):
    env = project_env()
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    env.pop("STAGES_DEFAULT_TF_CPP_MIN_LOG_LEVEL", None)
    result = subprocess.run(
        [sys.executable, "-c", DYING_STAGE.format(death=death)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        start_new_session=True,
    )
    assert result.returncode == status
    lines = result.stderr.splitlines()
    assert lines[0] == "F0000 00:00:1795814390.981311    9022 cuda_executor.cc:52] Check failed: the reason it dies"
    if last_line is None:
        assert len(lines) == 1
    else:  # the traceback after it
        assert lines[-1] == last_line


def test_a_resume_folder_that_cannot_be_cleared_stops_the_stage(tmp_path, monkeypatch):
    folder = tmp_path / "checkpoints"
    ResumeFolder(folder, {"params": 1})
    write_json(folder / "state.json", {"epochs_done": 2})
    real_unlink = os.unlink

    def unlink(path, *args, **kwargs):  # as files the user may not delete
        if Path(path).name in ("key.json", "state.json"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", unlink)
    with pytest.raises(StageError) as error:
        ResumeFolder(folder, {"params": 2})
    assert re.fullmatch(
        rf"{re.escape(str(folder))}: cannot delete this folder of resume files "
        r"\(\[Errno 13\] Permission denied: '(key|state)\.json'\); delete it yourself",
        str(error.value),
    )
    assert json.loads((folder / "key.json").read_text()) == {"params": 1}  # not taken for the new run's


def keras_download(cache: Path, origin: str, file_hash: str | None = None) -> None:
    """Keras's own download (``get_file``) into ``cache``, inside ``download_or_stop``."""
    import keras

    with download_or_stop("X", "section.key", "a file", Path("data/local")):
        # A folder that exists: Keras would take /tmp/.keras for one that does not.
        keras.utils.get_file("x.npz", origin, file_hash=file_hash, cache_dir=cache)


def fail_the_transfer(monkeypatch, error: BaseException) -> None:
    """Make urllib's transfer under Keras's get_file raise ``error``."""
    from keras.src.utils import file_utils

    def urlretrieve(*args, **kwargs):
        raise error

    monkeypatch.setattr(file_utils, "urlretrieve", urlretrieve)


@pytest.mark.parametrize(
    "failure", ["no network", "HTTP error", "connection cut", "hash mismatch"], ids=lambda failure: failure
)
def test_a_failed_download_is_reported_as_one(tmp_path, monkeypatch, failure):
    origin = (tmp_path / "absent.npz").as_uri()  # urllib's URLError, through Keras, with no network at all
    file_hash = None
    if failure == "HTTP error":
        fail_the_transfer(monkeypatch, urllib.error.HTTPError(origin, 503, "Service Unavailable", None, None))
    elif failure == "connection cut":
        fail_the_transfer(monkeypatch, ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"))
    elif failure == "hash mismatch":
        (tmp_path / "served.npz").write_bytes(b"not the file that was published")
        origin, file_hash = (tmp_path / "served.npz").as_uri(), "0" * 64
    with pytest.raises(DownloadError) as error:
        keras_download(tmp_path, origin, file_hash)
    assert re.fullmatch(
        r"could not download X \(.+\); put a file in data/local/ and set section\.key to its name", str(error.value)
    )


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device"),  # the disk filled while the file was written
        MemoryError("out of memory"),
        TypeError("get_file() got an unexpected keyword argument 'file_hash'"),  # a library that changed
    ],
    ids=lambda error: type(error).__name__,
)
def test_an_error_that_is_no_failed_download_goes_on_as_it_is(tmp_path, monkeypatch, error):
    fail_the_transfer(monkeypatch, error)
    with pytest.raises(type(error)) as raised:
        keras_download(tmp_path, "https://example/x.npz")
    assert raised.value is error and not isinstance(raised.value, DownloadError)


FAILING_STAGE = """
from pathlib import Path
from stages.shared.downloads import download_or_stop
from stages.shared.runner import run_stage
def main(argv):
    with download_or_stop("X", "section.key", "a file", Path("data/local")):
        raise OSError(28, "No space left on device")
run_stage(main)
"""


def test_an_error_that_is_not_the_users_shows_its_traceback_then_one_line():
    result = subprocess.run(
        [sys.executable, "-c", FAILING_STAGE],
        env=project_env(),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines[0] == "Traceback (most recent call last):"
    assert lines[-2:] == [
        "OSError: [Errno 28] No space left on device",
        "error: OSError: [Errno 28] No space left on device (traceback above)",
    ]

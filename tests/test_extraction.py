"""extract_vgg_features on many images: input prepared in parallel and in order, bad files
named before any output, chunks that a killed run resumes from, several devices.

Every test makes its own tiny images; the network is VGG16 with random weights at 32x32.
The stage runs in this process where it can, and in a child process where it must: to
be killed, or to split the CPU into two devices before TensorFlow starts.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from stages import extract_vgg_features as extract
from stages.shared import breast_data, resume
from stages.shared import images as shared_images
from stages.shared.config import ParamsError, StageError
from tests.conftest import PROJECT, project_env, stage_argv, two_cpu_devices_script

STAGE = "extract_vgg_features"
FEATURES = Path("data/breast/features.npz")  # as the project's dvc.yaml names them, relative to the stage's folder
CHECKPOINTS = Path("checkpoints/extract_vgg_features")


def write_lab_folder(root: Path, per_class: int = 9) -> Path:
    """Two class folders of PNG and JPEG files, grey and colour, of differing sizes."""
    rng = np.random.default_rng(0)
    for label, name in enumerate(("benign", "malignant")):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            grey = (rng.integers(0, 80, (24 + i, 30)) + 150 * label).astype(np.uint8)
            if i % 2:
                Image.fromarray(np.stack([grey, grey // 2, 255 - grey], axis=-1)).save(root / name / f"{i:03d}.jpg")
            else:
                Image.fromarray(grey).save(root / name / f"{i:03d}.png")
    return root


def write_many_npz(path: Path, n: int) -> Path:
    rng = np.random.default_rng(1)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        path,
        train_images=rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
        train_labels=(np.arange(n) % 2).astype(np.uint8),
    )
    return path


def write_params(folder: Path, data: str, **overrides) -> None:
    settings = {
        "data": data,
        "backbone": "vgg16",
        "weights": "none",
        "layer": "avg",
        "blocks": [5],
        "image_size": 32,
        "batch_size": 4,
        "workers": 2,
        **overrides,
    }
    (folder / "params.yaml").write_text(json.dumps({STAGE: settings}))  # JSON is YAML


def run_here(folder: Path, monkeypatch) -> bytes:
    """Run the stage in this process from ``folder``; return the bytes of its features file."""
    monkeypatch.chdir(folder)
    extract.main(stage_argv(STAGE))
    return (folder / FEATURES).read_bytes()


def stage_child(folder: Path, *python: str) -> subprocess.Popen:
    """The stage in a child process (``python`` replaces ``-m stages.extract_vgg_features``)."""
    command = [sys.executable, *(python or ("-m", f"stages.{STAGE}")), *stage_argv(STAGE)]
    return subprocess.Popen(
        command,
        cwd=folder,
        env=project_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def slow_image_set(n: int, batch_size: int, delay_s: float) -> tuple[breast_data.ImageSet, list[int]]:
    """``n`` distinct grey images, the even batches slow to read, so that a later batch
    finishes first; also the list of the indices read, in the order they were."""
    pixels = np.random.default_rng(2).integers(0, 256, (n, 20, 30), dtype=np.uint8)
    reads, lock = [], threading.Lock()

    def read(i: int) -> np.ndarray:
        with lock:
            reads.append(i)
        if (i // batch_size) % 2 == 0:
            time.sleep(delay_s)
        return pixels[i]

    images = breast_data.ImageSet(
        read=read,
        labels=np.zeros(n, np.int64),
        split=np.full(n, "train"),
        source=np.arange(n).astype(str),
        class_names=("a",),
        identity="slow",
    )
    return images, reads


def test_class_folders_called_train_or_test_leave_the_split_counts_alone():
    images = breast_data.ImageSet(
        read=lambda i: None,
        labels=np.array([0, 0, 0, 1]),
        split=np.full(4, "train"),
        source=np.arange(4).astype(str),
        class_names=("test", "train"),
        identity="",
    )
    assert extract.image_counts(images) == {
        "n_images": 4,
        "n_train": 4,
        "n_val": 0,
        "n_test": 0,
        "n_per_class": {"test": 3, "train": 1},
    }


# --------------------------------------------------------------------------- the input
def test_batches_come_in_order_whichever_finishes_first():
    images, _ = slow_image_set(30, batch_size=4, delay_s=0.01)
    sequential = np.stack([shared_images.prepare_image(images.read(i), 32) for i in range(30)])
    for workers in (1, 3):
        batches = list(extract.iterate_batches(images, 32, batch_size=4, workers=workers))
        assert [len(b) for b in batches] == [4] * 7 + [2]
        assert np.array_equal(np.concatenate(batches), sequential)  # same bytes as one image at a time
    middle = list(extract.iterate_batches(images, 32, batch_size=4, workers=2, start=8, stop=19))
    assert np.array_equal(np.concatenate(middle), sequential[8:19])


def test_input_runs_a_bounded_number_of_batches_ahead():
    images, reads = slow_image_set(400, batch_size=4, delay_s=0.0)
    batches = extract.iterate_batches(images, 32, batch_size=4, workers=2)
    next(batches)
    time.sleep(0.5)  # time enough to read all 400 images, were the input unbounded
    ahead = 1 + 2 + extract.PREFETCH_BATCHES  # the batch taken, one per worker, the prefetched
    assert len(reads) <= ahead * 4
    batches.close()


# --------------------------------------------------------------------------- the stage
def test_one_or_two_workers_and_any_chunk_size_give_the_same_bytes(tmp_path, monkeypatch):
    write_lab_folder(tmp_path / "data/local/breast/lab")
    write_params(tmp_path, "lab", workers=1)
    one_worker = run_here(tmp_path, monkeypatch)
    write_params(tmp_path, "lab", workers=2, chunk_size=5)  # chunks of 8, two batches
    assert run_here(tmp_path, monkeypatch) == one_worker
    with np.load(tmp_path / FEATURES) as saved:
        assert saved["features"].shape == (18, 512)
        assert saved["source"][:2].tolist() == ["benign/000.png", "benign/001.jpg"]
    facts = json.loads((tmp_path / "runs/extract_vgg_features.json").read_text())
    assert facts["workers"] == 2 and facts["devices"] == ["/device:CPU:0"] and facts["resumed_images"] == 0
    assert not (tmp_path / CHECKPOINTS).exists()  # removed after success


def kept_keys() -> list[str]:
    return [key for key in extract.Extraction.model_fields if key not in extract.SPEED_KEYS]


def test_every_key_but_the_speed_knobs_is_a_dep_of_the_stage():
    """dvc.yaml's params deps of the stage are its keys but ``SPEED_KEYS``, which the test
    above shows change no byte: turning them reruns nothing."""
    declared = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"][STAGE]["params"]
    assert declared == [f"{STAGE}.{key}" for key in kept_keys()]
    assert set(extract.SPEED_KEYS) <= set(extract.Extraction.model_fields)


@pytest.mark.slow
def test_each_key_kept_can_change_the_features(tmp_path, monkeypatch):
    """Each key of the stage's params deps changes the features of the same images: the
    values, or for ``batch_size`` the rounding of oneDNN's kernels, which tile by the
    batch's shape on some CPUs (with AVX2 or SSE4.1 kernels, which every x86-64 CI
    machine has), so that same params mean same bytes."""
    import keras

    kept = kept_keys()
    write_lab_folder(tmp_path / "data/local/breast/lab")
    write_many_npz(tmp_path / "data/local/breast/other.npz", 18)
    keras.utils.set_random_seed(3)
    (tmp_path / "data/local/weights").mkdir(parents=True)
    keras.applications.VGG16(weights=None, include_top=False, input_shape=(32, 32, 3)).save_weights(
        tmp_path / "data/local/weights/vgg16.weights.h5"
    )
    changes = {
        "data": "other.npz",
        "backbone": "vgg19",
        "weights": "vgg16.weights.h5",
        "layer": "max",
        "blocks": [5],
        "image_size": 48,
    }
    assert sorted([*changes, "batch_size"]) == sorted(kept)
    # Blocks 4 and 5: at 32x32, block 5 pools a single position, where avg and max agree.
    base_params = {"data": "lab", "batch_size": 4, "blocks": [4, 5]}

    def features(**overrides) -> np.ndarray:
        write_params(tmp_path, **{**base_params, **overrides})
        run_here(tmp_path, monkeypatch)
        with np.load(tmp_path / FEATURES) as saved:
            return saved["features"]

    base = features()
    for key, value in changes.items():
        changed = features(**{key: value})
        assert changed.shape != base.shape or not np.array_equal(changed, base), key

    def features_with_kernels(isa: str, data: str, batch_size: int) -> np.ndarray:
        write_params(tmp_path, **{**base_params, "data": data, "batch_size": batch_size})
        subprocess.run(
            [sys.executable, "-m", f"stages.{STAGE}", *stage_argv(STAGE)],
            cwd=tmp_path,
            check=True,
            env=project_env(ONEDNN_MAX_CPU_ISA=isa),
            capture_output=True,
        )
        with np.load(tmp_path / FEATURES) as saved:
            return saved["features"]

    # Which batch shapes round differently depends on the CPU, the kernels and the images
    # (seen on one machine: AVX2 kernels round batches of 4 and 5 differently on these 18
    # images, not on the lab folder's; AVX-512 kernels, in no case): some pair must differ,
    # and every pair agree but for rounding.
    differ = []
    for isa, sizes in itertools.product(("AVX2", "SSE41"), ((4, 5), (1, 4))):
        first, second = (features_with_kernels(isa, "other.npz", size) for size in sizes)
        np.testing.assert_allclose(first, second, rtol=1e-3, atol=1e-6)  # rounding, not other features
        differ.append(not np.array_equal(first, second))
        if differ[-1]:
            break
    assert any(differ), "batch_size changed no byte with AVX2 or SSE4.1 kernels: it may be a speed knob here"


def test_workers_must_be_at_least_one(tmp_path, monkeypatch):
    write_params(tmp_path, "medmnist", workers=0)  # a bad key stops the stage before the download
    with pytest.raises(ParamsError, match=r"^params.yaml: extract_vgg_features.workers: must be greater"):
        run_here(tmp_path, monkeypatch)


def spoil(path: Path, how: str) -> None:
    if how == "not an image":
        path.write_text("a note saved with an image's name")
    else:  # the header stays whole, the pixels are cut short: a few bytes into the compressed data
        data = path.read_bytes()
        pixels_begin = data.index(b"IDAT" if how == "truncated png" else b"\xff\xda")
        path.write_bytes(data[: pixels_begin + 40])


@pytest.mark.parametrize(
    ("how", "name"),
    [
        ("truncated png", "malignant/008.png"),
        ("truncated jpeg", "malignant/007.jpg"),
        ("not an image", "benign/004.png"),
    ],
)
def test_a_bad_image_stops_the_stage_naming_it_with_no_output(tmp_path, monkeypatch, how, name):
    lab = write_lab_folder(tmp_path / "data/local/breast/lab")
    spoil(lab / name, how)
    write_params(tmp_path, "lab", chunk_size=4)
    with pytest.raises(StageError) as error:
        run_here(tmp_path, monkeypatch)
    assert str(error.value).startswith(f"data/local/breast/lab/{name}: cannot read image")
    assert "\n" not in str(error.value)
    assert not (tmp_path / FEATURES).exists() and not (tmp_path / "models/breast/backbone.json").exists()
    # The header check stops a non-image before the network; a truncated body is found
    # in its batch, after the chunks before it were saved to resume from.
    chunks = sorted(p.name for p in (tmp_path / CHECKPOINTS).glob("chunk-*.npy"))
    assert chunks == ([] if how == "not an image" else [f"chunk-{i:09d}.npy" for i in range(0, 16, 4)])


@pytest.mark.slow  # second tier: child processes of TensorFlow
def test_a_killed_run_resumes_to_the_same_bytes(tmp_path, monkeypatch):
    write_many_npz(tmp_path / "data/local/breast/many.npz", 400)
    write_params(tmp_path, "many.npz", batch_size=8, chunk_size=16)
    child = stage_child(tmp_path)
    chunks = tmp_path / CHECKPOINTS
    while len(list(chunks.glob("chunk-*.npy"))) < 2 and child.poll() is None:
        time.sleep(0.01)
    assert child.poll() is None, child.communicate()[0]
    os.kill(child.pid, signal.SIGKILL)
    child.communicate()
    assert child.returncode == -signal.SIGKILL and not (tmp_path / FEATURES).exists()
    finished = len(list(chunks.glob("chunk-*.npy")))
    assert 2 <= finished < 400 // 16

    rerun = stage_child(tmp_path)
    log = rerun.communicate()[0]
    assert rerun.returncode == 0, log
    resumed = int(log.split("resuming after ")[1].split()[0])
    assert resumed == 16 * finished
    assert not chunks.exists()
    resumed_bytes = (tmp_path / FEATURES).read_bytes()
    (tmp_path / FEATURES).unlink()
    assert run_here(tmp_path, monkeypatch) == resumed_bytes  # uninterrupted, from nothing


class Interrupted(Exception):
    """Stands for a kill in this process: the stage stops between two batches."""


def forward_stopping_after(batches: int):
    """A ``make_forward_pass`` whose forward pass raises Interrupted after ``batches`` batches."""
    real_make_forward_pass = extract.make_forward_pass

    def make_forward_pass(*args):
        forward, calls = real_make_forward_pass(*args), []

        def stopping(batch: np.ndarray) -> np.ndarray:
            calls.append(len(batch))
            if len(calls) > batches:
                raise Interrupted
            return forward(batch)

        return stopping

    return make_forward_pass


def test_chunks_of_other_settings_or_images_are_not_reused(tmp_path, monkeypatch, capsys):
    lab = write_lab_folder(tmp_path / "data/local/breast/lab")

    def run(stop_after: int | None = None, **settings) -> bytes | None:
        """A run over the 18 images in chunks of 8 (two batches); interrupted, it leaves two chunks."""
        write_params(tmp_path, "lab", chunk_size=8, **settings)
        if stop_after is None:
            return run_here(tmp_path, monkeypatch)
        with monkeypatch.context() as patch, pytest.raises(Interrupted):
            patch.setattr(extract, "make_forward_pass", forward_stopping_after(stop_after))
            run_here(tmp_path, monkeypatch)
        assert len(list((tmp_path / CHECKPOINTS).glob("chunk-*.npy"))) == 2
        capsys.readouterr()
        return None

    max_pooled = run(layer="max")
    run(stop_after=4, layer="avg")  # chunks of the same shape as max pooling's, other numbers
    assert run(layer="max") == max_pooled
    assert f"{CHECKPOINTS} is from a run with other params (layer): starting afresh" in capsys.readouterr().out

    run(stop_after=4, layer="max", workers=1)  # workers change the speed alone: its chunks are resumed
    assert run(layer="max", workers=2) == max_pooled
    assert "resuming after 16 images" in capsys.readouterr().out

    run(stop_after=4, layer="max")
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(lab / "benign" / "new.png")  # other images now
    run(layer="max")
    assert f"{CHECKPOINTS} is from a run with other images: starting afresh" in capsys.readouterr().out


def save_vgg16_weights(path: Path, seed: int) -> None:
    """A weights file of no-top VGG16, random weights drawn from ``seed``."""
    import keras

    keras.utils.set_random_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    keras.applications.VGG16(weights=None, include_top=False, input_shape=(32, 32, 3)).save_weights(path)


def test_chunks_of_weights_replaced_under_the_same_name_are_not_reused(tmp_path, monkeypatch, capsys):
    write_lab_folder(tmp_path / "data/local/breast/lab")
    weights = tmp_path / "data/local/weights/vgg16.weights.h5"
    save_vgg16_weights(weights, seed=1)
    write_params(tmp_path, "lab", weights=weights.name, chunk_size=8)
    with monkeypatch.context() as patch, pytest.raises(Interrupted):
        patch.setattr(extract, "make_forward_pass", forward_stopping_after(4))
        run_here(tmp_path, monkeypatch)
    assert len(list((tmp_path / CHECKPOINTS).glob("chunk-*.npy"))) == 2
    save_vgg16_weights(weights, seed=2)  # other weights, the same file name
    capsys.readouterr()
    resumed = run_here(tmp_path, monkeypatch)
    log = capsys.readouterr().out
    assert f"{CHECKPOINTS} is from a run with other weights: starting afresh" in log and "resuming" not in log
    assert run_here(tmp_path, monkeypatch) == resumed  # every chunk from the new weights


def test_chunks_of_other_code_are_not_reused(tmp_path, monkeypatch, capsys):
    # The resume key reads the code of the project that dvc.yaml lies in: here a copy,
    # whose backbone code is edited between the interrupted run and the next.
    code = tmp_path / "code"
    shutil.copytree(PROJECT / "stages", code / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(PROJECT / "dvc.yaml", code)
    monkeypatch.setattr(resume, "PROJECT_ROOT", code)
    write_lab_folder(tmp_path / "data/local/breast/lab")
    write_params(tmp_path, "lab", chunk_size=8)

    def interrupted_run() -> None:
        with monkeypatch.context() as patch, pytest.raises(Interrupted):
            patch.setattr(extract, "make_forward_pass", forward_stopping_after(4))
            run_here(tmp_path, monkeypatch)

    interrupted_run()
    run_here(tmp_path, monkeypatch)
    assert "resuming after 16 images" in capsys.readouterr().out  # the same code resumes the chunks
    interrupted_run()
    preparation_code = code / "stages/shared/images.py"
    text = preparation_code.read_text()
    assert "Image.Resampling.BILINEAR" in text
    preparation_code.write_text(text.replace("Image.Resampling.BILINEAR", "Image.Resampling.BICUBIC"))
    run_here(tmp_path, monkeypatch)
    log = capsys.readouterr().out
    assert f"{CHECKPOINTS} is from a run with other code (stages/shared/images.py): starting afresh" in log
    assert "resuming" not in log


@pytest.mark.slow  # second tier: child processes of TensorFlow
def test_two_devices_give_the_features_of_one(tmp_path, monkeypatch):
    write_many_npz(tmp_path / "data/local/breast/few.npz", 23)
    write_params(tmp_path, "few.npz", batch_size=5, chunk_size=10)  # last batch: 3 images
    child = stage_child(tmp_path, "-c", two_cpu_devices_script(STAGE))
    log = child.communicate()[0]
    assert child.returncode == 0, log
    facts = json.loads((tmp_path / "runs/extract_vgg_features.json").read_text())
    assert facts["devices"] == ["/device:CPU:0", "/device:CPU:1"]
    with np.load(tmp_path / FEATURES) as saved:
        two_devices = saved["features"]
    run_here(tmp_path, monkeypatch)
    with np.load(tmp_path / FEATURES) as saved:
        one_device = saved["features"]
    # Each row is its own image's features, in order, whichever device computed it. Not
    # byte-equal on every CPU: oneDNN may round a share of a batch differently from the
    # whole (seen in CI: 1.6e-7 in a quarter of the rows; byte-equal on other machines).
    np.testing.assert_allclose(two_devices, one_device, rtol=1e-5, atol=1e-6)
    nearest = np.argmin(((two_devices[:, None] - one_device[None]) ** 2).sum(-1), axis=1)
    assert nearest.tolist() == list(range(len(one_device)))  # the images differ: rows are told apart

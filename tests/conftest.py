"""Fixtures shared by the tests: a copy of the project in a temporary git repository."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import urllib.error
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml

# Started in the background by a shell without job control, the tests would inherit
# SIGINT ignored, and so would every process they start: the Ctrl-C tests need it delivered.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

PROJECT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT.parent / "shared" / "data"
# What a fresh clone holds that the pipeline needs.
PROJECT_FILES = [
    "dvc.yaml",
    "params.yaml",
    "thresholds.yaml",
    ".dvc/config",
    ".dvc/.gitignore",
    ".dvcignore",
    ".gitignore",
    ".dvc/plots/offline.html",
    ".dvc/plots/roc.json",
    "data/local/README.md",
    "data/local/.gitignore",
    "data/local/mnist/.gitkeep",
    "data/local/breast/.gitkeep",
    "data/local/weights/.gitkeep",
    # The download keywords' marker files: the stages' dependencies when params name a download.
    "data/local/mnist/keras",
    "data/local/breast/medmnist",
    "data/local/breast/medmnist_224",
    "data/local/breast/none",
    "data/local/weights/imagenet",
    "data/local/weights/none",
]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--all-tiers", action="store_true", help="also run the second tier: the end-to-end dvc runs, marked slow"
    )


# The longest test (docs/ci.md#the-tests-two-tiers has its time and the tiers'):
# run first, so that pytest-xdist's other worker goes through the rest meanwhile, instead
# of one worker ending the run alone on it.
LONGEST_TEST = "test_pipeline_full.py::"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The first tier alone unless --all-tiers (or a -m expression of the caller's own);
    with both tiers, the longest test first."""
    if config.getoption("--all-tiers") or config.getoption("markexpr"):
        items.sort(key=lambda item: LONGEST_TEST not in item.nodeid)  # stable: the rest keep their order
        return
    second_tier = [item for item in items if item.get_closest_marker("slow")]
    if second_tier:
        config.hook.pytest_deselected(items=second_tier)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]


def fail_as_keras_offline(url: str = "https://example/x"):
    """Raise what Keras's ``get_file`` raises with no network: a bare Exception, raised
    while it handles urllib's URLError (keras/src/utils/file_utils.py)."""
    try:
        raise urllib.error.URLError(socket.gaierror(-2, "Name or service not known"))
    except urllib.error.URLError as err:
        raise Exception(f"URL fetch failure on {url}: {err.errno} -- {err.reason}")  # noqa: B904 (as Keras does)


def write_decompression_bomb(path: Path) -> Path:
    """A PNG of a few bytes whose header claims 20,000 x 20,000 pixels: more than twice
    Pillow's limit (``Image.MAX_IMAGE_PIXELS``), which Pillow refuses to open."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (1, 1)).save(path)
    png = bytearray(path.read_bytes())
    chunk = png.index(b"IHDR")  # the chunk's type, then 13 bytes of data (width and height first), then its CRC
    png[chunk + 4 : chunk + 12] = struct.pack(">II", 20_000, 20_000)
    png[chunk + 17 : chunk + 21] = struct.pack(">I", zlib.crc32(png[chunk : chunk + 17]))
    path.write_bytes(png)
    return path


def tool_env() -> dict[str, str]:
    """The environment for dvc and the stages: this interpreter's bin first on PATH, so
    that the stages' `python -m ...` runs with the same packages as the tests."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["DVC_NO_ANALYTICS"] = "1"
    return env


def project_env(**extra: str) -> dict[str, str]:
    """``tool_env()`` for a child ``python -c`` that imports the project from this checkout."""
    return {**tool_env(), "PYTHONPATH": str(PROJECT), **extra}


def run(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=tool_env(), capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def dvc(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "dvc", *args], repo, check)


def git(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return run(["git", "-c", "user.name=test", "-c", "user.email=test@example.com", *args], repo)


def chromium_or_skip() -> str:
    """Debian's headless Chromium (``.ci/run`` installs it), or skip the browser test that needs it."""
    chromium = "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else shutil.which("chromium")
    if chromium is None:
        pytest.skip(
            "chromium not installed (neither /usr/bin/chromium nor `chromium` on PATH); "
            "apt-get install -y chromium to run this test"
        )
    return chromium


def dom_offline(chromium: str, page: Path) -> subprocess.CompletedProcess:
    """The DOM of ``page`` (on stdout) once headless Chromium has loaded it with the network
    off, and Chromium's log, the page's console included (on stderr)."""
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        return subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                # No network: every request goes to a dead proxy and no host name resolves.
                "--proxy-server=127.0.0.1:9",
                "--host-resolver-rules=MAP * ~NOTFOUND",
                "--enable-logging=stderr",
                "--v=0",
                "--virtual-time-budget=10000",
                "--dump-dom",
                page.as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )


def stages_run(output: str) -> list[str]:
    """The stages that a `dvc repro` ran (not those it skipped or restored)."""
    return sorted(line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '"))


def edit_params(repo: Path, changes: dict[str, object]) -> None:
    """Set dotted keys in the repository's params.yaml, e.g. {"train_toy.two_blops.epochs": 3},
    as `dvc exp run -S` does: through DVC's own override parser, keeping the file's comments
    and layout."""
    from dvc.utils.hydra import apply_overrides

    def typed(value: object) -> str:
        return json.dumps(value) if isinstance(value, (bool, list)) else str(value)

    apply_overrides(repo / "params.yaml", [f"{key}={typed(value)}" for key, value in changes.items()])


def make_project_repo(repo: Path) -> Path:
    """A copy of the project's pipeline files in a new git repository at ``repo``, committed."""
    repo.mkdir()
    for name in PROJECT_FILES:
        if (PROJECT / name).exists():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(PROJECT / name, repo / name)
    shutil.copytree(PROJECT / "stages", repo / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "project")
    return repo


@pytest.fixture
def project_repo(tmp_path: Path) -> Path:
    """A copy of the project's pipeline files in a new git repository, committed."""
    return make_project_repo(tmp_path / "project")


def session_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of this test session that every pytest-xdist worker sees (each worker's own
    temporary folder sits in it), or the session's temporary folder without xdist."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def toy_run(tmp_path_factory) -> tuple[Path, str, str]:
    """The project with small toy params (``small_toy_params``) after one
    ``dvc repro evaluate@toy``, committed; what that repro printed, and what ``git status``
    said after it, before the commit. Run once a session, by the first xdist worker that
    needs it, while the others wait on a lock: tests take a copy (``toy_repo``), whose DVC
    cache also holds the run cache of these runs."""
    import fcntl

    root = session_folder(tmp_path_factory) / "toy_run"
    root.mkdir(exist_ok=True)
    repo, printed, status = root / "project", root / "repro-output.txt", root / "git-status.txt"
    with open(root / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not printed.exists():  # not built yet, or a worker failed building it
            shutil.rmtree(repo, ignore_errors=True)
            make_project_repo(repo)
            edit_params(repo, small_toy_params())
            first = dvc(repo, "repro", "evaluate@toy")
            status.write_text(git(repo, "status", "--porcelain", "--untracked-files=all").stdout)
            git(repo, "add", "-A")
            git(repo, "commit", "-q", "-m", "small toy run")
            printed.write_text(first.stdout + first.stderr)
    return repo, printed.read_text(), status.read_text()


@pytest.fixture
def toy_repo(toy_run, tmp_path: Path) -> Path:
    """A copy of ``toy_run``'s repository, to change as a test likes."""
    repo = tmp_path / "project"
    shutil.copytree(toy_run[0], repo, symlinks=True)
    return repo


def tiny_mnist(n_train: int = 160, n_test: int = 40, seed: int = 0) -> dict[str, np.ndarray]:
    """Digit-like blobs: each class lights a different 7x7 patch, so a CNN can learn it."""
    rng = np.random.default_rng(seed)

    def make(n):
        y = np.arange(n) % 10
        x = rng.integers(0, 40, size=(n, 28, 28)).astype(np.uint8)
        for i, label in enumerate(y):
            row, col = divmod(int(label), 4)
            x[i, 2 + 7 * row : 9 + 7 * row, 2 + 6 * col : 9 + 6 * col] = 230
        return x, y.astype(np.uint8)

    (x_train, y_train), (x_test, y_test) = make(n_train), make(n_test)
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def tiny_breast(n_train: int = 24, n_val: int = 6, n_test: int = 12, seed: int = 0) -> dict[str, np.ndarray]:
    """A MedMNIST-layout BreastMNIST stand-in: 28x28 grey images, labels (N, 1), two classes
    that differ in brightness."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        labels = np.arange(n) % 2
        images = rng.integers(0, 80, size=(n, 28, 28)) + 150 * labels[:, None, None]
        arrays[f"{split}_images"] = images.astype(np.uint8)
        arrays[f"{split}_labels"] = labels.reshape(-1, 1).astype(np.uint8)
    return arrays


def stage_argv(stage: str, item: str | None = None) -> list[str]:
    """A stage's command line as the project's dvc.yaml gives it: the paths are stated there alone."""
    from stages.commands.model_files import stage_command

    return stage_command(stage, item, PROJECT / "dvc.yaml")


def stage_paths(stage: str, item: str | None = None) -> dict[str, Path]:
    """The paths a stage reads and writes, from the project's dvc.yaml."""
    from stages.commands.model_files import stage_paths as paths

    return paths(stage, item, PROJECT / "dvc.yaml")


def two_cpu_devices_script(stage: str) -> str:
    """Python source (for ``python -c``) that splits the CPU into two logical devices
    before TensorFlow starts, then runs ``stages.<stage>`` with the rest of the command
    line: the several-device code paths, on a machine without GPUs."""
    return (
        "import tensorflow as tf\n"
        "cpu = tf.config.list_physical_devices('CPU')[0]\n"
        "tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)\n"
        f"from stages import {stage}\n"
        "from stages.shared.runner import run_stage\n"
        "from stages.shared.tensorflow_runtime import quiet_tensorflow_stderr\n"
        f"run_stage({stage}.main, quiet_tensorflow_stderr)\n"
    )


def project_params() -> dict:
    return yaml.safe_load((PROJECT / "params.yaml").read_text())


def toy_names() -> list[str]:
    """The toy datasets, as params.yaml names them."""
    return list(project_params()["generate_toy"])


def small_toy_params() -> dict[str, object]:
    """The toy sections at an eighth of their size and 3 epochs: the toy stages in seconds."""
    toy = toy_names()
    return {
        **{f"generate_toy.{name}.n_samples": 120 for name in toy},
        **{f"train_toy.{name}.epochs": 3 for name in toy},
    }


def small_pipeline_params() -> dict[str, object]:
    """Params that run the whole pipeline in a minute or two on 2 cores, on tiny local data
    that `write_tiny_inputs` puts in place; the toy stages as in ``toy_run``, so that its
    run cache serves them."""
    return {
        **small_toy_params(),
        "augment_train_mnist.data": "tiny.npz",
        "augment_train_mnist.validation_size": 40,
        "augment_train_mnist.epochs": 2,
        "augment_train_mnist.batch_size": 32,
        "augment_train_mnist.epoch_fraction": 1.0,
        "extract_vgg_features.data": "tiny.npz",
        "extract_vgg_features.backbone": "vgg16",
        "extract_vgg_features.weights": "none",
        "extract_vgg_features.layer": "avg",
        "extract_vgg_features.image_size": 32,
        "fit_knn.k": 3,
        "breast_cv_folds": 3,
        "train_head.hidden_units": 8,
        "train_head.max_epochs": 5,
        "train_head.patience": 2,
        "train_head.ensemble_members": 2,
    }


def write_tiny_inputs(repo: Path) -> None:
    np.savez(repo / "data/local/mnist/tiny.npz", **tiny_mnist())
    np.savez(repo / "data/local/breast/tiny.npz", **tiny_breast())

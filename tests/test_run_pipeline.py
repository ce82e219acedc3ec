"""run-pipeline: `dvc repro --keep-going` that ends by naming what could not run and why."""

from __future__ import annotations

import re
import signal
import subprocess
import sys

import pytest
import yaml

from stages.commands.run_pipeline import ReproLog
from tests.conftest import dvc, edit_params, git, run, stages_run, tool_env

FAIL = "import sys; print('error: could not download X (no network); set section.key to a local file', file=sys.stderr); sys.exit(2)"


def test_a_failed_stage_stops_only_what_needs_it_and_the_summary_names_its_reason(tmp_path):
    git(tmp_path, "init", "-q", "-b", "main")
    dvc(tmp_path, "init", "-q")
    (tmp_path / "dvc.yaml").write_text(
        yaml.safe_dump(
            {
                "stages": {
                    "download": {"cmd": f'python -c "{FAIL}"', "outs": ["data.txt"]},
                    "train": {"cmd": "cp data.txt model.txt", "deps": ["data.txt"], "outs": ["model.txt"]},
                    "toy": {"cmd": "echo toy > toy.txt", "outs": ["toy.txt"]},
                }
            }
        )
    )
    result = run([sys.executable, "-m", "stages.commands.run_pipeline"], tmp_path, check=False)
    assert result.returncode != 0
    assert (tmp_path / "toy.txt").read_text() == "toy\n"  # the stage that needs no download ran
    assert not (tmp_path / "model.txt").exists()
    assert result.stdout.splitlines()[-4:] == [
        "run-pipeline: 1 stage(s) could not run:",
        "  download: could not download X (no network); set section.key to a local file",
        "  skipped, as they need those: train",
        "Every other stage ran or was up to date; see docs/offline.md for local copies of the data.",
    ]


NO_DISK_LEFT = """
from pathlib import Path
from stages.shared.downloads import download_or_stop
from stages.shared.runner import run_stage
def main(argv):
    with download_or_stop("X", "section.key", "a file", Path("data/local")):
        raise OSError(28, "No space left on device")
run_stage(main)
"""


def test_the_summary_gives_the_real_cause_of_a_failure_that_is_no_download(tmp_path):
    git(tmp_path, "init", "-q", "-b", "main")
    dvc(tmp_path, "init", "-q")
    (tmp_path / "stage.py").write_text(NO_DISK_LEFT)
    (tmp_path / "dvc.yaml").write_text(
        yaml.safe_dump({"stages": {"download": {"cmd": "python stage.py", "outs": ["data.txt"]}}})
    )
    result = run([sys.executable, "-m", "stages.commands.run_pipeline"], tmp_path, check=False)
    assert result.returncode != 0
    assert "Traceback (most recent call last):" in result.stdout  # where the summary says to look
    assert result.stdout.splitlines()[-3:-1] == [
        "run-pipeline: 1 stage(s) could not run:",
        "  download: OSError: [Errno 28] No space left on device (traceback above)",
    ]


def test_ctrl_c_stops_dvc_and_its_stage_and_says_so_in_one_line(tmp_path):
    git(tmp_path, "init", "-q", "-b", "main")
    dvc(tmp_path, "init", "-q")
    slow = "import time; time.sleep(60); open('slow.txt', 'w').write('done')"
    (tmp_path / "dvc.yaml").write_text(
        yaml.safe_dump({"stages": {"slow": {"cmd": f'python -c "{slow}"', "outs": ["slow.txt"]}}})
    )
    running = subprocess.Popen(
        [sys.executable, "-m", "stages.commands.run_pipeline"],
        cwd=tmp_path,
        env=tool_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in running.stdout:  # until DVC runs the stage
        if line.startswith("> python -c"):
            break
    running.send_signal(signal.SIGINT)
    out, err = running.communicate(timeout=30)  # far less than the stage's 60 s
    assert running.returncode == 130, out + err
    assert err.strip() == "run-pipeline: interrupted; DVC and the stage it was running have stopped", err
    assert not (tmp_path / "slow.txt").exists()


def test_a_stage_that_missed_the_interrupt_is_interrupted_again(monkeypatch, capsys):
    # As when Ctrl-C reaches a stage before its Python handles SIGINT: the first is lost.
    from stages.commands import run_pipeline

    monkeypatch.setattr(run_pipeline, "STOP_WAIT_S", 1)
    missing_one = (
        "import signal, sys, time\n"
        "def missed(*_):\n"
        "    print('first SIGINT missed', flush=True)\n"
        "    signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "signal.signal(signal.SIGINT, missed)\n"
        "print('started', flush=True)\n"
        "while True: time.sleep(0.1)\n"
    )
    stage = subprocess.Popen(
        [sys.executable, "-c", missing_one], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    assert stage.stdout.readline() == "started\n"
    run_pipeline.stop(stage)
    # The first SIGINT reached the stage and was lost; the second ended it (Python's
    # KeyboardInterrupt ends a process by SIGINT), not a SIGTERM or SIGKILL after it.
    assert capsys.readouterr().out == "first SIGINT missed\n"
    assert stage.returncode == -signal.SIGINT


def test_a_failure_without_an_error_line_is_still_named():
    log = ReproLog()
    for line in [
        "Running stage 'a':",
        "Traceback (most recent call last):",
        "WARNING: failed to run: python -m stages.a, exited with 1",
        "WARNING: Stages 'c', 'e@x' and 'd' will be skipped due to this failure",
        "Running stage 'b':",
    ]:
        log.read(line)
    assert log.ran == ["a", "b"]  # check-reproduction counts the outputs of these
    assert log.failed == {"a": ["exited with 1 (its output is above)"]}
    assert log.skipped == ["c", "e@x", "d"]


@pytest.mark.slow
def test_offline_the_quick_start_finishes_the_toy_exercise_and_names_each_download(toy_repo):
    repo = toy_repo
    edit_params(repo, {"train_toy.two_blops.epochs": 2})  # so that train_toy and evaluate@toy run here
    # No network: every download fails at once (a proxy that refuses), as on a machine offline.
    env = {**tool_env(), "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}
    result = subprocess.run(["run-pipeline"], cwd=repo, env=env, capture_output=True, text=True)
    assert result.returncode == 255, result.stdout + result.stderr
    summary = result.stdout[result.stdout.index("run-pipeline: 3 stage(s) could not run:") :].splitlines()
    reasons = dict(line.strip().split(": ", 1) for line in summary[1:4])
    assert re.fullmatch(
        r"could not download MNIST .*; put a \.npz with Keras's keys in "
        r"data/local/mnist/ and set augment_train_mnist\.data to its name",
        reasons["augment_train_mnist"],
    )
    assert re.fullmatch(
        r"could not download BreastMNIST .*; put .* in data/local/breast/ "
        r"and set extract_vgg_features\.data to its name; and could not download the ImageNet weights "
        r"of vgg16 .*; put .* in data/local/weights/ and set extract_vgg_features\.weights to its "
        r"name",
        reasons["extract_vgg_features"],
    )
    # find_near_copies reads the same images, so it names the same download.
    assert re.fullmatch(
        r"could not download BreastMNIST .*; put .* in data/local/breast/ and set extract_vgg_features\.data to its name",
        reasons["find_near_copies"],
    )
    skipped = summary[4].removeprefix("  skipped, as they need those: ").split(", ")
    assert sorted(skipped) == ["evaluate@breast", "evaluate@mnist", "fit_knn", "train_head"]
    assert stages_run(result.stdout) == [
        "augment_train_mnist",
        "evaluate@toy",
        "extract_vgg_features",
        "find_near_copies",
        "train_toy@two_blops",
    ]
    assert "Data and pipelines are up to date." in dvc(repo, "status", "evaluate@toy").stdout
    # The toy metrics are this run's: two_blops's changed with its epochs, the others are as committed.
    assert git(repo, "status", "--porcelain", "metrics").stdout.split() == ["M", "metrics/toy/two_blops.json"]


def test_a_stage_that_needs_two_failed_ones_is_named_once():
    log = ReproLog()
    for line in [
        "Running stage 'a':",
        "WARNING: failed to run: python -m stages.a, exited with 1",
        "WARNING: Stages 'c' and 'd' will be skipped due to this failure",
        "Running stage 'b':",
        "WARNING: failed to run: python -m stages.b, exited with 1",
        "WARNING: Stages 'c', 'e' and 'd' will be skipped due to this failure",
    ]:
        log.read(line)
    assert log.skipped == ["c", "d", "e"]

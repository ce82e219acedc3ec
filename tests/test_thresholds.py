"""check-thresholds, on metrics files written by the tests."""

from __future__ import annotations

import subprocess
import sys

import pytest

from stages.shared.runner import write_json
from tests.conftest import tool_env

THRESHOLDS = """
metrics/mnist/cnn.json:
  heldout.accuracy: {min: 0.99}
  heldout.log_loss: {max: 0.05}
metrics/toy/two_blops.json:
  heldout.accuracy: {min: 0.95, max: 1.0}
"""


@pytest.fixture
def metrics_root(tmp_path):
    write_json(tmp_path / "metrics/mnist/cnn.json", {"heldout": {"accuracy": 0.9942, "log_loss": 0.02}})
    write_json(tmp_path / "metrics/toy/two_blops.json", {"heldout": {"accuracy": 0.988}})
    (tmp_path / "thresholds.yaml").write_text(THRESHOLDS)
    return tmp_path


def run_cli(root, *args):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "stages.commands.check_thresholds",
            "--root",
            str(root),
            "--thresholds",
            str(root / "thresholds.yaml"),
            *args,
        ],
        env=tool_env(),
        capture_output=True,
        text=True,
    )


def test_passes_when_every_bound_holds(metrics_root):
    result = run_cli(metrics_root)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["metric", "bound", "value", "status"]
    assert lines[2].split() == ["metrics/mnist/cnn.json:heldout.accuracy", ">=", "0.99", "0.9942", "ok"]
    assert lines[4].split() == [
        "metrics/toy/two_blops.json:heldout.accuracy",
        ">=",
        "0.95",
        "and",
        "<=",
        "1",
        "0.988",
        "ok",
    ]
    assert lines[-1] == "all thresholds met"


def test_fails_with_a_table_when_a_bound_is_raised(metrics_root):
    (metrics_root / "thresholds.yaml").write_text(THRESHOLDS.replace("min: 0.99}", "min: 0.999}"))
    result = run_cli(metrics_root)
    assert result.returncode == 1
    assert result.stdout.splitlines()[2].split() == [
        "metrics/mnist/cnn.json:heldout.accuracy",
        ">=",
        "0.999",
        "0.9942",
        "FAIL",
    ]
    assert result.stdout.splitlines()[-1] == "1 of 3 thresholds not met"


@pytest.mark.parametrize("missing", ["key", "file"])
def test_fails_on_a_missing_metric(metrics_root, missing):
    if missing == "file":
        (metrics_root / "metrics/toy/two_blops.json").unlink()
    else:
        write_json(metrics_root / "metrics/toy/two_blops.json", {"heldout": {"log_loss": 0.1}})
    result = run_cli(metrics_root)
    assert result.returncode == 1
    assert result.stdout.splitlines()[4].split()[-2:] == ["-", "MISSING"]


@pytest.mark.parametrize("only", ["metrics/toy", "metrics/toy/", "metrics/toy/two_blops.json"])
def test_only_keeps_the_bounds_on_one_folder_or_file(metrics_root, only):
    (metrics_root / "metrics/mnist/cnn.json").unlink()
    result = run_cli(metrics_root, "--only", only)
    assert result.returncode == 0, result.stdout
    assert len(result.stdout.splitlines()) == 2 + 1 + 2
    unknown = run_cli(metrics_root, "--only", "metrics/to")  # a prefix of a name is not a folder
    assert unknown.returncode == 2 and "no bounds for metrics/to (--only)" in unknown.stderr


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("metrics/a.json: {x: {min: high}}", "metrics/a.json: x: min: must be a valid number, got 'high'"),
        ("metrics/a.json: {x: {min: true}}", "metrics/a.json: x: min: must be a valid number, got True"),
        ("metrics/a.json: {x: {least: 1}}", "metrics/a.json: x: least: unknown key"),
        ("metrics/a.json: {x: {}}", "metrics/a.json: x: must be {min: x}, {max: y} or both"),
        ("metrics/a.json: []", "metrics/a.json: must be a valid dictionary, got []"),
        ("[]", "must be a valid dictionary, got []"),
    ],
)
def test_a_bad_thresholds_file_is_named(metrics_root, text, message):
    (metrics_root / "thresholds.yaml").write_text(text)
    result = run_cli(metrics_root)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith(f"error: {metrics_root / 'thresholds.yaml'}: {message}")

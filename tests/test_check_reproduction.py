"""check-reproduction, the CI check that holds on any machine, on a two-stage DVC repository
made here: it passes when a forced rerun writes the same bytes and the metrics are the
ones the workspace held, and fails on a time stamp in an output, on a metric that moved,
or when DVC's output does not name the stages it ran. Whatever happens, it leaves the
files git tracks (committed or not) as they were."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stages.commands import check_reproduction
from stages.commands.check_reproduction import metric_differences
from stages.commands.run_pipeline import ReproLog
from stages.shared.config import StageError
from tests.conftest import dvc, git, run, tool_env

# A stage that writes `text` (Python source of an expression) to out.txt, and a metrics
# stage that scores params.yaml's `accuracy` (after S seconds with SLOW_SCORE=S set).
SCORE = (
    "import json, os, time, yaml; time.sleep(float(os.environ.get('SLOW_SCORE', 0))); "
    "accuracy = yaml.safe_load(open('params.yaml'))['accuracy']; "
    "json.dump({'heldout': {'accuracy': accuracy, 'n': 30}}, open('metrics/m.json', 'w'))"
)
PIPELINE = {
    "stages": {
        "make": {"cmd": None, "outs": ["out.txt"]},
        "score": {
            "cmd": f'python -c "{SCORE}"',
            "deps": ["out.txt"],
            "params": ["accuracy"],
            "metrics": [{"metrics/m.json": {"cache": False}}],
        },
    }
}
# Files check-reproduction may rewrite: the tests compare their bytes before and after it.
WATCHED = ["dvc.lock", "params.yaml", "metrics/m.json", "metrics/new.json", ".gitignore"]


def make_repo(tmp_path: Path, output_expression: str) -> Path:
    repo = tmp_path / "repo"
    (repo / "metrics").mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    dvc(repo, "init", "-q")
    dvc(repo, "config", "core.autostage", "true")  # as in the project: dvc repro stages the dvc.lock it changes
    pipeline = json.loads(json.dumps(PIPELINE))
    pipeline["stages"]["make"]["cmd"] = f"python -c \"open('out.txt', 'w').write(str({output_expression}))\""
    (repo / "dvc.yaml").write_text(yaml.safe_dump(pipeline))
    (repo / "params.yaml").write_text("accuracy: 0.9\n")
    dvc(repo, "repro")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "a run")
    return repo


def check(repo: Path, *args: str):
    return run([sys.executable, "-m", "stages.commands.check_reproduction", *args], repo, check=False)


def uncommitted_experiment(repo: Path) -> None:
    """Another accuracy in params.yaml, reproduced and not committed: dvc.lock, params.yaml
    and metrics/m.json differ from the commit, and metrics/new.json is new."""
    (repo / "params.yaml").write_text("accuracy: 0.8\n")
    dvc(repo, "repro")
    (repo / "metrics/new.json").write_text('{"heldout": {"accuracy": 0.5}}')


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> Path:
    """A repository with an uncommitted experiment, made once for the tests of this module
    (each takes a copy: ``experiment_repo``)."""
    repo = make_repo(tmp_path_factory.mktemp("experiment"), "1")
    uncommitted_experiment(repo)
    return repo


@pytest.fixture
def experiment_repo(experiment, tmp_path) -> Path:
    repo = tmp_path / "repo"
    shutil.copytree(experiment, repo, symlinks=True)
    return repo


def contents(repo: Path) -> dict[str, bytes | None]:
    """The bytes of each of ``WATCHED``, None for a file that does not exist."""
    return {name: (repo / name).read_bytes() if (repo / name).is_file() else None for name in WATCHED}


def git_index(repo: Path) -> tuple[str, str]:
    """What git's index holds, and git status."""
    return git(repo, "ls-files", "--stage").stdout, git(repo, "status", "--porcelain").stdout


def test_same_bytes_and_committed_metrics_pass_and_git_status_stays_clean(tmp_path):
    repo = make_repo(tmp_path, "sum(range(10))")
    result = check(repo)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "compared with the workspace before the check: the commit's dvc.lock and metrics" in result.stdout
    assert "same machine: 2 of 2 outputs came out byte-identical" in result.stdout
    assert "dvc.lock before the check: 2 of 2 outputs byte-identical" in result.stdout
    assert "metrics: 1 files, every value within 0.01 of before the check" in result.stdout
    # A target: only the outputs of the stages it reproduces are counted.
    one_stage = check(repo, "make")
    assert one_stage.returncode == 0, one_stage.stdout + one_stage.stderr
    assert "same machine: 1 of 1 outputs came out byte-identical" in one_stage.stdout
    assert "dvc.lock before the check: 1 of 1 outputs byte-identical" in one_stage.stdout
    assert git(repo, "status", "--porcelain").stdout == ""


def test_outputs_from_elsewhere_are_not_taken_for_this_machines_first_run(tmp_path):
    # As after `dvc pull` of outputs another CPU wrote: the workspace and dvc.lock hold
    # other bytes than this machine's stage writes, and dvc status says up to date.
    repo = make_repo(tmp_path, "1")
    (repo / "out.txt").write_text("1.0000001")
    dvc(repo, "commit", "-f", "make")
    git(repo, "commit", "-q", "-am", "outputs of another machine")
    result = check(repo, "make")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "same machine: 1 of 1 outputs came out byte-identical" in result.stdout
    assert "dvc.lock before the check: 0 of 1 outputs byte-identical" in result.stdout


def test_a_time_stamp_in_an_output_fails(tmp_path):
    repo = make_repo(tmp_path, "__import__('time').time_ns()")
    result = check(repo)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "same machine: 1 of 2 outputs" in result.stdout and "DIFFERS out.txt" in result.stdout
    assert result.stdout.rstrip().endswith("check-reproduction: FAILED")
    assert git(repo, "status", "--porcelain").stdout == ""  # dvc.lock restored, in the index too


def test_a_metric_that_moved_fails(tmp_path):
    repo = make_repo(tmp_path, "1")
    committed = json.loads((repo / "metrics/m.json").read_text())
    committed["heldout"]["accuracy"] = 0.95  # what an earlier run scored
    (repo / "metrics/m.json").write_text(json.dumps(committed))
    git(repo, "commit", "-q", "-am", "metrics of another run")
    result = check(repo, "score")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "MOVED metrics/m.json: heldout.accuracy: 0.95 before, 0.9 now" in result.stdout
    assert git(repo, "status", "--porcelain").stdout == ""


def test_an_uncommitted_experiment_is_checked_against_its_own_metrics_and_left_as_it_was(experiment_repo):
    repo = experiment_repo
    before, index = contents(repo), git_index(repo)
    result = check(repo)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        "compared with the workspace before the check: uncommitted changes to dvc.lock, metrics/m.json, "
        "metrics/new.json, params.yaml, not the commit"
    ) in result.stdout
    assert "metrics: 2 files, every value within 0.01 of before the check (largest difference 0)" in result.stdout
    assert contents(repo) == before
    assert git_index(repo) == index


@pytest.mark.parametrize("failure", [KeyboardInterrupt(), OSError("No space left on device")])
def test_an_interrupted_check_leaves_an_uncommitted_experiment_as_it_was(experiment_repo, monkeypatch, failure):
    repo = experiment_repo
    before, index = contents(repo), git_index(repo)

    def interrupted_repro(args: list[str]) -> tuple[int, ReproLog]:
        """DVC halfway through a forced rerun: the lock file rewritten, an output removed
        before its stage runs again, a file that was not there; then the failure."""
        (repo / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
        git(repo, "add", "dvc.lock")  # as DVC does with core.autostage
        (repo / "metrics/m.json").unlink()
        (repo / "metrics/other.json").write_text("{}")
        (repo / "params.yaml").write_text("accuracy: 0.7\n")
        raise failure

    monkeypatch.chdir(repo)
    monkeypatch.setattr(check_reproduction, "repro", interrupted_repro)
    with pytest.raises(type(failure)):
        check_reproduction.main([])
    assert contents(repo) == before and git_index(repo) == index
    assert not (repo / "metrics/other.json").exists()


def test_ctrl_c_during_a_stage_stops_dvc_and_leaves_an_uncommitted_experiment_as_it_was(experiment_repo):
    repo = experiment_repo
    before = contents(repo)
    checking = subprocess.Popen(
        [sys.executable, "-m", "stages.commands.check_reproduction"],
        cwd=repo,
        env={**tool_env(), "SLOW_SCORE": "60"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen = []
    for line in checking.stdout:  # until the forced rerun starts its metrics stage
        seen.append(line)
        if "$ dvc repro --force\n" in seen and line.startswith("Running stage 'score'"):
            break
    assert not (repo / "metrics/m.json").exists(), "".join(seen)  # DVC removed it before running its stage
    checking.send_signal(signal.SIGINT)
    rest, _ = checking.communicate(timeout=30)  # far less than the stage's 60 s: DVC and its stage stopped
    assert checking.returncode != 0, "".join(seen) + rest
    assert contents(repo) == before


@pytest.mark.parametrize(
    ("dvc_output", "not_named"),
    [
        (
            ["Executing stage 'make':", "> python -c ...", "Executing stage 'score':", "Updating lock file 'dvc.lock'"],
            "named 0 of the 2 stages it had to run (make, score missing)",
        ),
        (
            ["Running stage 'make':", "> python -c ...", "Executing stage 'score':", "Updating lock file 'dvc.lock'"],
            "named 1 of the 2 stages it had to run (score missing)",
        ),
    ],
)
def test_dvc_output_that_does_not_name_every_stage_fails(experiment_repo, monkeypatch, capsys, dvc_output, not_named):
    repo = experiment_repo
    before = contents(repo)

    def reworded_repro(args: list[str]) -> tuple[int, ReproLog]:
        """DVC's run, as a DVC release that words its "Running stage" line otherwise prints it."""
        log = ReproLog()
        for line in dvc_output:
            log.read(line)
        (repo / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
        return 0, log

    monkeypatch.chdir(repo)
    monkeypatch.setattr(check_reproduction, "repro", reworded_repro)
    monkeypatch.setattr(sys, "argv", ["check-reproduction"])
    with pytest.raises(SystemExit) as exited:
        check_reproduction.cli()
    assert exited.value.code == 2
    error = capsys.readouterr().err.splitlines()
    assert len(error) == 1 and error[0].startswith("error: dvc repro --force: DVC's output ") and not_named in error[0]
    assert contents(repo) == before


def test_a_target_without_a_stage_to_run_fails_before_running_dvc(experiment_repo, monkeypatch):
    repo = experiment_repo
    dvc(repo, "freeze", "make")
    monkeypatch.chdir(repo)
    monkeypatch.setattr(check_reproduction, "repro", lambda args: pytest.fail(f"dvc repro {args} ran"))
    with pytest.raises(StageError, match=r"^make: no stage to run \(only frozen ones, or data\)$"):
        check_reproduction.main(["make"])


@pytest.mark.parametrize(
    ("old", "new", "expected", "largest"),
    [
        ({"a": 0.9}, {"a": 0.905}, [], 0.005),
        ({"a": 0.9}, {"a": 0.92}, ["a: 0.9 before, 0.92 now (more than 0.01 apart)"], 0.02),
        ({"a": {"n": 30}}, {"a": {"n": 31}}, ["a.n: 30 before, 31 now"], 0),
        (
            {"a": {"protocol": "test split"}},
            {"a": {"protocol": "cv"}},
            ["a.protocol: 'test split' before, 'cv' now"],
            0,
        ),
        ({"a": 1, "b": 0.5}, {"a": 1}, ["b: missing"], 0),
        ({"a": 1}, {"a": 1, "c": 2}, ["c: not there before"], 0),
    ],
)
def test_metric_differences(old, new, expected, largest):
    lines, difference = metric_differences(old, new, tolerance=0.01)
    assert lines == expected and difference == pytest.approx(largest)

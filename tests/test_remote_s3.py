"""The users' CI workflow (examples/ci/github-actions.yml) against the S3 remote it names:
a real S3 API on 127.0.0.1 (moto's server, which checks the credentials). Its steps that use
the remote run on two machines, on the toy exercise: the first, where the stages ran,
pushes its outputs and run cache; the second, a clone with only what git holds, restores
them instead of training. Then check-dvc-remote's one-line errors for a missing bucket and
for wrong credentials."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import (
    PROJECT,
    edit_params,
    git,
    make_project_repo,
    small_toy_params,
    stages_run,
    tool_env,
    toy_names,
)

pytestmark = pytest.mark.slow

WORKFLOW = PROJECT / "examples/ci/github-actions.yml"
# The workflow's steps that use the remote, in order.
REMOTE_STEPS = ["Check that the DVC remote answers", "Reproduce the pipeline", "Push outputs and run-cache entries"]
# The whole pipeline takes minutes (test_pipeline_full runs it, against a folder remote);
# here the toy part is enough to try the remote.
STEP_TARGETS = {"Reproduce the pipeline": " evaluate@toy"}
BUCKET = "team-dvc"
REMOTE_URL = f"s3://{BUCKET}/image-analysis"
TOY_STAGES = [f"{stage}@{name}" for stage in ("generate_toy", "train_toy") for name in toy_names()]
ALLOW_S3 = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}


@pytest.fixture(scope="module")
def s3_server():
    """moto's S3 server on a free port of 127.0.0.1, with the bucket ``BUCKET`` and a user's
    access key: (endpoint URL, the secrets the workflow names). It accepts only that key once
    set up (moto checks no credentials unless told to)."""
    import boto3
    import requests
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    setup = {
        "endpoint_url": endpoint,
        "region_name": "us-east-1",
        "aws_access_key_id": "setup",
        "aws_secret_access_key": "setup",
    }
    iam = boto3.client("iam", **setup)
    iam.create_user(UserName="ci")
    iam.put_user_policy(UserName="ci", PolicyName="s3", PolicyDocument=json.dumps(ALLOW_S3))
    key = iam.create_access_key(UserName="ci")["AccessKey"]
    boto3.client("s3", **setup).create_bucket(Bucket=BUCKET)
    # From now on every request must be signed with a known key (moto counts requests
    # without authentication up to this number, here none).
    requests.post(f"{endpoint}/moto-api/reset-auth", data=b"0").raise_for_status()
    yield endpoint, {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
    requests.post(f"{endpoint}/moto-api/reset-auth", data=b"inf")
    server.stop()


def no_aws_env(tmp_path: Path) -> dict[str, str]:
    """The tools' environment with no AWS credentials or configuration of this machine's:
    only what a step passes reaches DVC."""
    env = {name: value for name, value in tool_env().items() if not name.startswith("AWS_")}
    return {
        **env,
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def add_s3_remote(repo: Path, name: str, url: str, endpoint: str, default: bool = False) -> None:
    """As `dvc remote add [-d] NAME URL` and `dvc remote modify NAME endpointurl ENDPOINT`."""
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc_repo, dvc_repo.config.edit() as config:
        config["remote"][name] = {"url": url, "endpointurl": endpoint}
        if default:
            config["core"]["remote"] = name


def step_env(step: dict, secrets: dict[str, str], base: dict[str, str]) -> dict[str, str]:
    """The environment a step gets on GitHub: its `env:` with each ``${{ secrets.NAME }}`` filled in."""
    env = dict(base)
    for name, value in step.get("env", {}).items():
        secret = re.fullmatch(r"\$\{\{ secrets\.(\w+) \}\}", value)
        env[name] = secrets[secret.group(1)] if secret else value
    return env


def run_remote_steps(
    clone: Path, secrets: dict[str, str], base: dict[str, str]
) -> dict[str, subprocess.CompletedProcess]:
    """The workflow's steps that use the remote, in order, as GitHub Actions runs them
    (bash -e, pipefail), up to the first that fails."""
    steps = {
        step.get("name"): step for job in yaml.safe_load(WORKFLOW.read_text())["jobs"].values() for step in job["steps"]
    }
    results = {}
    for name in REMOTE_STEPS:
        script = steps[name]["run"] + STEP_TARGETS.get(name, "")
        results[name] = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
            cwd=clone,
            env=step_env(steps[name], secrets, base),
            capture_output=True,
            text=True,
        )
        if results[name].returncode != 0:
            break
    return results


def assert_all_passed(results: dict[str, subprocess.CompletedProcess]) -> None:
    assert list(results) == REMOTE_STEPS, f"stopped at {list(results)[-1]}"
    for name, result in results.items():
        assert result.returncode == 0, f"{name}\n{result.stdout}\n{result.stderr}"


def check_dvc_remote(repo: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["check-dvc-remote", *args], cwd=repo, env=env, capture_output=True, text=True)


def test_ci_workflow_on_an_s3_remote_and_its_check(s3_server, toy_run, tmp_path):
    endpoint, secrets = s3_server
    base = no_aws_env(tmp_path)
    # Git's origin: the project with the toy run's params and the S3 remote, no dvc.lock yet.
    origin = make_project_repo(tmp_path / "origin")
    edit_params(origin, small_toy_params())
    add_s3_remote(origin, "storage", REMOTE_URL, endpoint, default=True)
    git(origin, "add", "-A")
    git(origin, "commit", "-q", "-m", "toy params and an S3 remote")

    # Machine 1, where the toy stages ran (the session's toy run): its remote, a new and
    # empty path in the bucket, answers; nothing reruns; the outputs and run cache go up.
    first = tmp_path / "machine-1"
    shutil.copytree(toy_run[0], first, symlinks=True)
    shutil.copy2(origin / ".dvc/config", first / ".dvc/config")
    results = run_remote_steps(first, secrets, base)
    assert_all_passed(results)
    assert f"DVC remote {REMOTE_URL}: reachable" in results["Check that the DVC remote answers"].stderr
    assert stages_run(results["Reproduce the pipeline"].stdout) == []
    assert re.search(r"\b[1-9]\d* files? pushed", results["Push outputs and run-cache entries"].stdout)

    # Machine 2, a clone with only what git holds: the toy stages come from the run cache.
    second = tmp_path / "machine-2"
    git(tmp_path, "clone", "-q", str(origin), str(second))
    assert not (second / "dvc.lock").exists() and not (second / ".dvc/cache").exists()
    results = run_remote_steps(second, secrets, base)
    assert_all_passed(results)
    reproduced = results["Reproduce the pipeline"].stdout
    assert stages_run(reproduced) == ["evaluate@toy"]  # it scores predictions; DVC keeps no run cache for it
    assert all(f"Stage '{stage}' is cached - skipping run" in reproduced for stage in TOY_STAGES), reproduced
    assert (second / "dvc.lock").read_text() == (first / "dvc.lock").read_text()

    # check-dvc-remote's errors, each one line: a bucket that is not there, a wrong secret.
    add_s3_remote(second, "missing", "s3://no-such-bucket/image-analysis", endpoint)
    missing = check_dvc_remote(second, {**base, **secrets}, "--remote", "missing")
    assert missing.returncode == 2
    assert missing.stderr == (
        "error: cannot reach the DVC remote at s3://no-such-bucket/image-analysis: "
        "the bucket s3://no-such-bucket does not exist\n"
    )
    wrong = check_dvc_remote(second, {**base, **secrets, "AWS_SECRET_ACCESS_KEY": "not-the-secret"})
    assert wrong.returncode == 2
    assert re.fullmatch(
        rf"error: cannot reach the DVC remote at {REMOTE_URL}: the credentials were refused "
        r"\(wrong, or without rights to it\): The request signature we calculated does not match.*\n",
        wrong.stderr,
    ), wrong.stderr

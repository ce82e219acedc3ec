"""Every command the README and the pages under docs/ print in a ```bash block works as printed.

The commands are collected from README.md first, then from docs/ in DOC_PAGES order (any
other page after those, sorted by name), which is the order a reader meets them. Each
command is either run here, in that order, in one temporary copy of the project on small
toy data, or listed in NOT_RUN with the reason and the test that covers it. A command
added to the README or a docs page without either fails
`test_every_command_is_run_or_accounted_for`.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import (
    PROJECT,
    dvc,
    edit_params,
    git,
    make_project_repo,
    small_pipeline_params,
    small_toy_params,
    stages_run,
    tool_env,
    toy_names,
    write_tiny_inputs,
)

# The docs pages in the order their commands run: a page whose commands need an earlier
# page's (the worked example's edits, its metrics) comes after it.
DOC_PAGES = [
    "docs/pipeline.md",
    "docs/experiments.md",
    "docs/ci.md",
    "docs/offline.md",
    "docs/gpu-and-scale.md",
    "docs/results.md",
    "docs/breast.md",
    "docs/classify.md",
    "docs/benchmarks.md",
]

# docs/experiments.md's experiment on stages that dvc.lock does not record, for a fresh clone.
FRESH_CLONE_EXPERIMENT = "dvc exp run -S train_head.dropout=0.3 evaluate@breast"
NOT_RUN = {
    "python3 -m venv .venv && . .venv/bin/activate && pip install -c constraints.txt -e '.[dev]' && run-pipeline": "installs the project (.ci/run installs the same way); test_run_pipeline runs run-pipeline offline",
    ". .venv/bin/activate && python -m pytest": "the fast tier of the tests itself",
    ". .venv/bin/activate && python -m pytest --all-tiers -n 2": "both tiers of the tests: .ci/run runs it",
    ". .venv/bin/activate": "the tests already run in the project's environment",
    "dvc repro": "downloads the data; test_pipeline_full runs the whole pipeline on tiny local data",
    "dvc repro -s fit_knn": "needs the breast features; test_pipeline_full runs the breast stages",
    "dvc exp run -S extract_vgg_features.data=medmnist_224 -S extract_vgg_features.backbone=vgg19 "
    "-S extract_vgg_features.layer=fc1 -S 'extract_vgg_features.blocks=[5]' -S 'fit_knn.features=[fc1]' "
    "-S 'train_head.features=[fc1]'": "downloads BreastMNIST and VGG19's weights; test_breast runs its overrides on tiny data",
    "check-thresholds --only metrics/toy": ".ci/run runs it as printed in a fresh clone, where it must pass; here "
    "the toy metrics are removed to run the docs' commands from scratch",
    "dvc exp apply NAME": "NAME is a placeholder",
    "dvc remote add -d storage s3://my-bucket/image-analysis": "needs a bucket; test_pipeline_full uses a folder remote",
    'git add .dvc/config && git commit -m "Add DVC remote"': "follows the remote above",
    "dvc push": "test_pipeline_full pushes to a folder remote",
    "git clone ... && cd ... && pip install -c constraints.txt -e '.[dev]'": "placeholders; test_pipeline_full clones",
    "dvc pull": "test_pipeline_full pulls from a folder remote",
    "classify-images data/local/breast/lab -o breast_predictions.csv": "needs trained breast models; test_classify trains tiny ones and classifies with them",
    "classify-images --model breast-head scan_0412.png scan_0413.png": "as above",
    "classify-images --model mnist digits/ > digits.csv": "as above, with a tiny digit CNN",
    "classify-images --heatmaps heatmaps data/local/breast/lab -o breast_predictions.csv": "as above; test_classify writes heat maps with tiny models, test_heatmaps checks where they peak",
    "classify-images --report lab.html data/local/breast/lab -o breast_predictions.csv": "as above; test_classify writes the page with tiny models and draws it in headless Chromium",
    "pip install -c constraints.txt -e '.[dev,bench]'": "installs packages; the benchmarks are not tests",
    "python bench/bench_mnist_pipeline.py --npz data/local/mnist/mnist.npz --keras-layers": "a benchmark of minutes on the full MNIST; its figures are measurements, not checks",
    "python bench/bench_vgg_features.py --images 48": "a benchmark of minutes with a full-size VGG19",
    "python bench/bench_extraction_input.py": "a benchmark of minutes over 2,000 generated images",
    "dvc repro extract_vgg_features": "needs BreastMNIST and the ImageNet weights; test_pipeline_full extracts tiny data",
    "python bench/select_breast_features.py --features data/breast/features.npz --classifier knn": "a measurement of minutes on the real breast features (test_bench_scripts checks what it imports)",
    "python bench/select_breast_features.py --features data/breast/features.npz --classifier head --seeds 42": "as above, training heads for a quarter of an hour",
    "python bench/select_breast_head.py --features data/breast/features.npz --members 1 5 --seeds 42 43 44 45 46": "a measurement of minutes on the real breast features",
    "dvc repro evaluate@breast": "needs the breast features; test_pipeline_full runs the breast stages",
    "dvc exp run -S augment_train_mnist.epochs=60 -S augment_train_mnist.label_smoothing=0.1 "
    "-S augment_train_mnist.weight_averaging=0.999 evaluate@mnist": "a quarter of an hour on the full MNIST, "
    "downloaded; test_mnist runs both levers on tiny data",
    "python bench/measure_novelty_flag.py --breast data/local/breast/breastmnist_28.npz --mnist PATH/mnist.npz "
    "--per-kind 50": "a measurement on the real BreastMNIST and MNIST; PATH is a placeholder",
    "python bench/near_copy_threshold.py --data data/local/breast/breastmnist_28.npz --features "
    "data/breast/features.npz --picture docs/images/near_copy_threshold.png": "a measurement on the real "
    "BreastMNIST and its features; test_near_copies holds the audit it summarises to docs/breast.md",
    "python bench/measure_operating_point.py --features data/breast/features.npz --seeds 42": "minutes of "
    "training heads on the real breast features (test_bench_scripts checks what it imports)",
    "python -m stages.evaluate breast --predictions predictions/breast --metrics /tmp/m --plots /tmp/p": "needs "
    "a breast run's predictions; test_evaluate runs evaluate on predictions of its own",
    FRESH_CLONE_EXPERIMENT: "needs the breast data; "
    "test_the_first_experiment_in_a_fresh_clone_is_saved runs it, with the step before it, on tiny data",
}
# Commands that exit non-zero on purpose, with the status they must give.
EXIT_STATUS: dict[str, int] = {}
# The stages some commands must run (not restore or skip), as the comments beside them say.
STAGES_RUN = {
    "dvc exp run -S train_toy.two_blops.learning_rate=0.01 evaluate@toy": ["evaluate@toy", "train_toy@two_blops"],
}
# What some commands must print (a regular expression), as the README says they do.
PRINTS = {
    "dvc exp run --queue -S train_toy.two_blops.learning_rate=0.003,0.01 -S generate_toy.two_blops.noise=0.5,1.2 "
    "evaluate@toy": r"(?s)(Queued experiment .*?){4}",
    "dvc params diff": r"train_toy\.two_blops\.hidden_layers +\[3, 5\] +\[8, 8\]",
    "dvc metrics diff": r"metrics/toy/two_blops\.json +heldout\.accuracy",
    'check-thresholds --only metrics/toy; echo "exit status $?"': r"two_blops\.json:heldout\.accuracy +>= 0\.999 (.|\n)*exit status 1",
}


def documented_pages() -> list[Path]:
    """README.md, then the docs pages in DOC_PAGES order, then any other docs page, sorted."""
    listed = [PROJECT / page for page in DOC_PAGES]
    others = sorted(set((PROJECT / "docs").glob("*.md")) - set(listed))
    return [PROJECT / "README.md", *listed, *others]


def page_blocks(page: Path) -> list[list[str]]:
    """The commands of each ```bash block of a page, without comments, in order."""
    blocks = []
    for block in re.findall(r"```bash\n(.*?)```", page.read_text(), re.S):
        commands = [re.sub(r"\s+#\s.*$", "", line).strip() for line in block.splitlines()]
        blocks.append([command for command in commands if command and not command.startswith("#")])
    return blocks


def page_commands() -> list[tuple[str, str]]:
    """(page, command) for every command of the pages' ```bash blocks, without comments, in order."""
    return [
        (str(page.relative_to(PROJECT)), command)
        for page in documented_pages()
        for block in page_blocks(page)
        for command in block
    ]


def readme_commands() -> list[str]:
    """The commands of the README's and the docs pages' ```bash blocks, in order."""
    return [command for _, command in page_commands()]


def block_of(page: str, command: str) -> list[str]:
    """The commands of the ```bash block of ``page`` that holds ``command``, in order."""
    blocks = [block for block in page_blocks(PROJECT / page) if command in block]
    assert blocks, f"{page} prints no {command}"
    return blocks[0]


def test_every_command_is_run_or_accounted_for():
    assert all((PROJECT / page).is_file() for page in DOC_PAGES), "DOC_PAGES names a page that is not there"
    commands = readme_commands()
    assert len(commands) > 20
    assert not set(NOT_RUN) - set(commands), "NOT_RUN lists commands the README and docs/ no longer print"
    assert set(EXIT_STATUS) <= set(commands)
    assert set(PRINTS) <= set(commands)

    # The order the slow test relies on: the worked example's edits come after its first
    # run and before the commands that read them.
    def first(start: str) -> int:
        return next(i for i, command in enumerate(commands) if command.startswith(start))

    assert first("dvc repro evaluate@toy") < first("sed -i 's/hidden_layers") < first("dvc params diff")
    assert (
        first("dvc params diff") < first("sed -i '0,/heldout.accuracy") < first("check-thresholds --only metrics/toy;")
    )


def small_toy(params_text: str) -> str:
    """The toy sections as ``small_toy_params`` sets them (as the session's toy run has them,
    so that its run cache serves), edited as text, so that the README's own `sed` on
    params.yaml still finds what it looks for."""
    small = small_toy_params()
    name = toy_names()[0]
    assert params_text.count("n_samples: 1000") == len(toy_names()) == params_text.count("epochs: 100")
    return params_text.replace("n_samples: 1000", f"n_samples: {small[f'generate_toy.{name}.n_samples']}").replace(
        "epochs: 100", f"epochs: {small[f'train_toy.{name}.epochs']}"
    )


@pytest.mark.slow
def test_readme_commands_work_as_printed(toy_repo):
    # As a fresh clone with small toy params: no dvc.lock or metrics yet, and a DVC cache
    # whose run cache (from the session's toy run) spares rerunning what the commands rerun.
    repo = toy_repo
    (repo / "params.yaml").write_text(small_toy((PROJECT / "params.yaml").read_text()))
    git(repo, "rm", "-q", "-r", "dvc.lock", "metrics")
    git(repo, "commit", "-q", "-am", "as a fresh clone")
    ran = []
    for page, command in page_commands():
        if command in NOT_RUN:
            continue
        before = (repo / "params.yaml").read_text(), (repo / "thresholds.yaml").read_text()
        result = subprocess.run(["bash", "-c", command], cwd=repo, env=tool_env(), capture_output=True, text=True)
        assert result.returncode == EXIT_STATUS.get(command, 0), f"{page}: {command}\n{result.stdout}\n{result.stderr}"
        assert re.search(PRINTS.get(command, ""), result.stdout), f"{page}: {command}\n{result.stdout}"
        if command in STAGES_RUN:
            assert stages_run(result.stdout) == STAGES_RUN[command], f"{page}: {command}\n{result.stdout}"
        if command.startswith("sed -i"):  # an edit must find what it edits
            assert ((repo / "params.yaml").read_text(), (repo / "thresholds.yaml").read_text()) != before, (
                f"{page}: {command}"
            )
        ran.append(command)
    assert set(PRINTS) | set(EXIT_STATUS) | set(STAGES_RUN) <= set(ran)
    # The queued 2 x 2 sweep ran to its metrics, beside the single experiment before it.
    shown = json.loads(
        subprocess.run(
            [sys.executable, "-m", "dvc", "exp", "show", "--json"],
            cwd=repo,
            env=tool_env(),
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    finished = {}
    for exp in [exp for baseline in shown for exp in baseline.get("experiments") or []]:
        data = exp["revs"][0]["data"]
        toy = data["params"]["params.yaml"]["data"]
        key = (toy["train_toy"]["two_blops"]["learning_rate"], toy["generate_toy"]["two_blops"]["noise"])
        finished[key] = data["metrics"]["metrics/toy/two_blops.json"]["data"]["heldout"]
    assert set(finished) == {(0.01, 0.8), (0.003, 0.5), (0.003, 1.2), (0.01, 0.5), (0.01, 1.2)}
    # Each experiment scored its own held-out share: 30 of its 120 points.
    assert all(heldout["n"] == 30 and "accuracy" in heldout for heldout in finished.values())
    assert "dvc exp run -S train_toy.two_blops.learning_rate=0.01 evaluate@toy" in ran and len(ran) >= 15


@pytest.mark.slow
def test_the_first_experiment_in_a_fresh_clone_is_saved(toy_run, tmp_path):
    """docs/experiments.md's commands for a first `dvc exp run` in a fresh clone: with the
    committed dvc.lock, whose outputs a fresh clone's DVC cache does not hold."""
    commands = block_of("docs/experiments.md", FRESH_CLONE_EXPERIMENT)
    repo = make_project_repo(tmp_path / "project")
    shutil.copy2(PROJECT / "dvc.lock", repo / "dvc.lock")
    shutil.copytree(PROJECT / "metrics", repo / "metrics")
    edit_params(repo, small_pipeline_params())
    write_tiny_inputs(repo)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "as a fresh clone, on tiny data")
    git(repo, "config", "user.name", "test")  # `dvc exp run` commits the experiment
    git(repo, "config", "user.email", "test@example.com")
    # The session's toy run's cache: its run cache restores the small toy stages instead of
    # training them again. It holds none of the committed dvc.lock's outputs, as a fresh clone's.
    shutil.copytree(toy_run[0] / ".dvc/cache", repo / ".dvc/cache")
    recorded = [
        out["md5"]
        for stage in yaml.safe_load((repo / "dvc.lock").read_text())["stages"].values()
        for out in stage.get("outs", [])
    ]
    assert recorded and not any((repo / ".dvc/cache/files/md5" / md5[:2] / md5[2:]).exists() for md5 in recorded)

    for command in commands:
        result = subprocess.run(["bash", "-c", command], cwd=repo, env=tool_env(), capture_output=True, text=True)
        assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
    shown = json.loads(dvc(repo, "exp", "show", "--json").stdout)
    experiments = [exp for baseline in shown for exp in baseline.get("experiments") or []]
    assert len(experiments) == 1, shown
    data = experiments[0]["revs"][0]["data"]
    assert data["params"]["params.yaml"]["data"]["train_head"]["dropout"] == 0.3
    assert data["metrics"]["metrics/breast/head.json"]["data"]["heldout"]["n"] == 12  # tiny_breast's test split

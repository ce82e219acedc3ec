"""Each stage in dvc.yaml lists under ``deps`` exactly the project modules it runs, so that
editing a module reruns the stages that import it, and no others; ``tools/stage_deps.py``
writes those lines from the imports (read with ``ast``: nothing is imported).
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys

import pytest
import yaml

from tests.conftest import PROJECT
from tools.stage_deps import (
    common_code,
    differences,
    files_run_by,
    line_count,
    listed_code_deps,
    rewritten,
    stage_bodies,
    stage_modules,
    stages_listing,
)

DVC_YAML = PROJECT / "dvc.yaml"


@pytest.mark.parametrize("stage", sorted(stage_modules(DVC_YAML)))
def test_deps_list_exactly_the_modules_the_stage_runs(stage):
    run = set(files_run_by(stage_modules(DVC_YAML)[stage]))
    listed = set(listed_code_deps(DVC_YAML)[stage])
    assert listed == run, (
        f"{stage}: dvc.yaml's deps miss {sorted(run - listed) or 'nothing'} and list "
        f"{sorted(listed - run) or 'nothing'} that it does not run: python tools/stage_deps.py"
    )


def test_the_code_every_stage_runs_is_small():
    # An edit to it reruns the whole pipeline, so it holds only what every stage needs:
    # params and errors, the runner and atomic writes, and the package's log setting.
    common = common_code(DVC_YAML)
    assert common == ["stages/__init__.py", "stages/shared/config.py", "stages/shared/runner.py"]
    assert sum(line_count(file) for file in common) <= 200
    reruns = subprocess.run(
        [sys.executable, str(PROJECT / "tools/stage_deps.py"), "--reruns"], capture_output=True, text=True, check=True
    )
    assert reruns.stdout.splitlines()[-1] == f"every stage: {', '.join(common)} ({sum(map(line_count, common))} lines)"


def defining_file(name: str) -> str:
    """The one project file whose top level defines ``name``."""
    files = [
        path.relative_to(PROJECT).as_posix()
        for path in (PROJECT / "stages").rglob("*.py")
        if any(
            isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == name
            for node in ast.parse(path.read_text()).body
        )
    ]
    assert len(files) == 1, (name, files)
    return files[0]


@pytest.mark.parametrize(
    ("name", "stages"),
    [
        ("build_extractor", ["extract_vgg_features"]),  # the VGG backbone: not the MNIST training's
        ("RandomAffine", ["augment_train_mnist"]),
        ("save_skops", ["fit_knn"]),
        ("download_or_stop", ["augment_train_mnist", "extract_vgg_features", "find_near_copies"]),
        ("ResumeFolder", ["augment_train_mnist", "extract_vgg_features"]),
    ],
)
def test_an_edit_reruns_only_the_stages_that_run_the_code(name, stages):
    assert stages_listing(DVC_YAML)[defining_file(name)] == stages


def docs_table(heading: str) -> list[list[str]]:
    """The cells of the rows of docs/pipeline.md's table whose header row starts with ``heading``."""
    lines = (PROJECT / "docs/pipeline.md").read_text().splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(f"| {heading} |")), None)
    assert start is not None, f"docs/pipeline.md: no table headed {heading!r}"
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def about_minutes(seconds: float) -> str:
    return "under 1 min" if seconds < 30 else f"{round(seconds / 60)} min"


def test_the_docs_table_of_reruns_is_dvc_yaml_s():
    seconds = {}
    for stage, wall_time in docs_table("stage"):
        minutes, _, rest = wall_time.rpartition(" min ")
        seconds[re.match(r"`(\w+)`", stage).group(1)] = int(minutes or 0) * 60 + int(rest.removesuffix(" s"))
    assert set(seconds) == set(stage_bodies(DVC_YAML))
    listing = stages_listing(DVC_YAML)
    every_stage = list(stage_bodies(DVC_YAML))
    shared = {file for file in listing if file.startswith("stages/shared/") or file == "stages/__init__.py"}
    documented = set()
    for modules, _, reruns, about in docs_table("shared module"):
        names = re.findall(r"`([\w/]+\.py)`", modules)
        files = [name if name.startswith("stages/") else f"stages/{name}" for name in names]
        stages = every_stage if reruns == "every stage" else re.findall(r"`(\w+)`", reruns)
        for file in files:
            assert listing[file] == stages, f"docs/pipeline.md: an edit to {file} reruns {listing[file]}"
        assert about == about_minutes(sum(seconds[stage] for stage in stages)), modules
        documented.update(files)
    assert documented == shared, f"docs/pipeline.md's table misses {sorted(shared - documented)}"


def test_every_stage_runs_a_module_of_the_package():
    modules = stage_modules(DVC_YAML)
    assert set(modules) == set(stage_bodies(DVC_YAML)) and all(modules.values()), modules


def test_a_stage_whose_code_cannot_be_read_or_no_stage_at_all_is_a_difference(tmp_path):
    path = tmp_path / "dvc.yaml"
    path.write_text(yaml.safe_dump({"stages": {"shell": {"cmd": "echo hi", "deps": ["stages/shared/config.py"]}}}))
    assert differences(path) == ["shell: its cmd is not `python -m stages.<module>`: its code deps cannot be read"]
    path.write_text(yaml.safe_dump({"stages": {}}))
    assert differences(path) == [f"{path}: no stages"]
    with pytest.raises(SystemExit, match="no stages"):
        common_code(path)


def edit_stage(text: str, stage: str, old: str, new: str) -> str:
    """dvc.yaml's ``text`` with ``old`` replaced by ``new`` in ``stage``'s block alone."""
    start = text.index(f"\n  {stage}:\n")
    end = re.search(r"\n  \w+:\n|\n\S", text[start + 1 :]).start() + start + 1
    assert old in text[start:end], (stage, old)
    return text[:start] + text[start:end].replace(old, new, 1) + text[end:]


def test_the_writer_puts_back_what_a_hand_edit_changed(tmp_path):
    text = DVC_YAML.read_text()
    # A maintainer's edits: a module left out of train_toy's deps, one too many in
    # fit_knn's, and every code dep of evaluate's gone.
    doctored = edit_stage(text, "train_toy", "        - stages/shared/files.py\n", "")
    doctored = edit_stage(
        doctored,
        "fit_knn",
        "      - stages/fit_knn.py\n",
        "      - stages/fit_knn.py\n      - stages/shared/backbone.py\n",
    )
    evaluate_lines = "".join(f"        - {dep}\n" for dep in listed_code_deps(DVC_YAML)["evaluate"])
    doctored = edit_stage(doctored, "evaluate", evaluate_lines, "")
    path = tmp_path / "dvc.yaml"
    path.write_text(doctored)
    assert [line.split(":")[0] for line in differences(path)] == ["train_toy", "fit_knn", "evaluate"]
    tool = [sys.executable, str(PROJECT / "tools/stage_deps.py"), "--dvc-yaml", str(path)]
    check = subprocess.run([*tool, "--check"], capture_output=True, text=True)
    assert check.returncode == 1
    assert "fit_knn: dvc.yaml's deps miss nothing and list ['stages/shared/backbone.py']" in check.stdout
    assert path.read_text() == doctored  # --check changes nothing
    write = subprocess.run(tool, capture_output=True, text=True)
    assert write.returncode == 0, write.stdout + write.stderr
    # Back as before, but that evaluate's code deps now follow its data dep.
    assert path.read_text() == edit_stage(
        edit_stage(text, "evaluate", evaluate_lines, ""),
        "evaluate",
        "        - predictions/${item}\n",
        "        - predictions/${item}\n" + evaluate_lines,
    )
    assert differences(path) == []
    wanted = {stage: files_run_by(module) for stage, module in stage_modules(DVC_YAML).items() if module}
    assert rewritten(text, wanted) == text  # the committed dvc.yaml is the writer's own output


def test_a_stage_depends_on_the_one_entry_of_data_local_its_params_name():
    # A params value names a download by its keyword, or a local copy by its name inside a
    # folder of data/local/ (stages.shared.downloads.local_or); the stage's dep is that one entry,
    # the keyword's marker file for a download, so that a file dropped in the folder reruns
    # only the stage that reads it (tests/test_local_copies.py runs DVC on it).
    from stages import augment_train_mnist as mnist
    from stages import find_near_copies
    from stages.shared import backbone, breast_data

    breast_images = ("extract_vgg_features.data", breast_data.LOCAL_DATA_DIR, breast_data.MEDMNIST_RELEASES)
    stages = stage_bodies(DVC_YAML)
    for stage, reads in (
        ("augment_train_mnist", [("augment_train_mnist.data", mnist.LOCAL_DATA_DIR, ["keras"])]),
        (
            "extract_vgg_features",
            [breast_images, ("extract_vgg_features.weights", backbone.LOCAL_WEIGHTS_DIR, backbone.WEIGHTS_KEYWORDS)],
        ),
        (
            "find_near_copies",
            [
                breast_images,
                ("find_near_copies.lab_groups", breast_data.LOCAL_DATA_DIR, [find_near_copies.NO_LAB_GROUPS]),
            ],
        ),
    ):
        local_deps = {dep for dep in stages[stage]["deps"] if dep.startswith("data/local/")}
        assert local_deps == {f"{folder.as_posix()}/${{{key}}}" for key, folder, _ in reads}, stage
        for key, folder, keywords in reads:
            for keyword in keywords:
                assert (PROJECT / folder / keyword).is_file(), f"{key}: no marker file for {keyword}"


def test_stages_commands_and_shared_code_import_only_downwards():
    # The layout's one rule: a stage imports shared code only, a command shared code or
    # another command, shared code only shared code; so an edit to a command reruns no
    # stage, and a stage never runs another stage's code.
    from tools.stage_deps import imported_modules, module_file

    allowed = {
        "stages": ("stages.shared",),
        "stages.commands": ("stages.shared", "stages.commands"),
        "stages.shared": ("stages.shared",),
    }
    package = PROJECT / "stages"
    modules = [
        f"stages.{path.relative_to(package).with_suffix('').as_posix().replace('/', '.')}"
        for path in package.rglob("*.py")
        if path.name != "__init__.py"
    ]
    assert len(modules) >= 15 and any(name.startswith("stages.commands.") for name in modules)
    for module in modules:
        layer = module.rsplit(".", 1)[0]
        for imported in imported_modules(module_file(module)):
            if module_file(imported).name == "__init__.py":
                continue  # a package itself: its __init__ holds no code to depend on, or stages' own
            assert imported.startswith(allowed[layer]), f"{module} imports {imported}"

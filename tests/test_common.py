"""params validation and atomic writes in stages/common.py."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from stages import common
from tests.conftest import tool_env

SCHEMA = {
    "seed": common.integer(minimum=0),
    "train": common.mapping(
        {
            "epochs": common.integer(minimum=1),
            "rate": common.number(minimum=0, exclusive_min=True),
            "layers": common.list_of(common.integer(minimum=1)),
            "mode": common.choice("a", "b"),
            "fast": common.boolean(),
        }
    ),
}
GOOD = "seed: 1\ntrain: {epochs: 3, rate: 0.1, layers: [3, 5], mode: a, fast: false}\n"


def read(tmp_path, text):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return common.read_params(SCHEMA, path)


def test_valid_params_are_returned_normalised(tmp_path):
    params = read(tmp_path, GOOD.replace("rate: 0.1", "rate: 1"))
    assert params == {"seed": 1, "train": {"epochs": 3, "rate": 1.0, "layers": [3, 5], "mode": "a", "fast": False}}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("epochs: 3", "epochs: -3"), "train.epochs: must be an integer >= 1, got -3"),
        (("epochs: 3", "epochs: three"), "train.epochs: must be an integer >= 1, got 'three'"),
        (("epochs: 3", "epochs: true"), "train.epochs: must be an integer >= 1, got True"),
        (("rate: 0.1", "rate: 0"), "train.rate: must be a number > 0, got 0"),
        (("layers: [3, 5]", "layers: []"), "train.layers: must be a list of at least 1 item(s), got []"),
        (("layers: [3, 5]", "layers: [3, 0]"), "train.layers[1]: must be an integer >= 1, got 0"),
        (("mode: a", "mode: c"), "train.mode: must be one of a, b, got 'c'"),
        (("fast: false", "fast: 1"), "train.fast: must be true or false, got 1"),
        (("fast: false", "fast: false, epoch: 3"), "train.epoch: unknown key"),
        (("epochs: 3, ", ""), "train.epochs: missing key"),
        (("seed: 1\n", ""), "seed: missing key"),
    ],
)
def test_bad_params_name_the_key(tmp_path, change, message):
    with pytest.raises(common.ParamsError) as error:
        read(tmp_path, GOOD.replace(*change))
    assert str(error.value).startswith(f"{tmp_path / 'params.yaml'}: {message}")


def test_missing_or_broken_params_file(tmp_path):
    with pytest.raises(common.ParamsError, match="file not found"):
        common.read_params(SCHEMA, tmp_path / "absent.yaml")
    with pytest.raises(common.ParamsError, match="not valid YAML"):
        read(tmp_path, "seed: [1\n")


def test_named_rejects_unknown_names():
    check = common.named(("2blop", "4blop"), common.integer())
    with pytest.raises(common.ParamsError, match=r"^gen\.5blop: unknown name \(expected one of 2blop, 4blop\)"):
        check("gen", {"5blop": 1})


def test_atomic_path_leaves_nothing_when_the_write_fails(tmp_path):
    target = tmp_path / "out" / "model.json"
    with pytest.raises(RuntimeError):
        with common.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert list(target.parent.iterdir()) == []
    common.write_json(target, {"a": 1})
    assert target.read_text() == '{\n  "a": 1\n}\n'
    assert [p.name for p in target.parent.iterdir()] == ["model.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


def test_stage_error_is_one_line_and_exit_status_2(tmp_path):
    (tmp_path / "params.yaml").write_text("seed: 1\ngenerate_toy: {2blop: {n_samples: -5, noise: 1}}\n")
    result = subprocess.run(
        [sys.executable, "-m", "stages.generate_toy", "2blop"],
        cwd=tmp_path, env={**tool_env(), "PYTHONPATH": str(common.Path(common.__file__).parents[1])},
        capture_output=True, text=True,
    )
    assert result.returncode == 2
    assert result.stderr == (
        "error: params.yaml: generate_toy.2blop.n_samples: must be an integer >= 8, got -5\n"
    )
    assert not (tmp_path / "data").exists()

"""Every key of params.yaml can be set from the command line with `dvc exp run -S key=value`.

DVC parses `-S` with Hydra's override grammar (dvc/utils/hydra.py), where a key segment
cannot start with a digit; the test calls the function DVC calls, on a copy of the
project's params.yaml, for every leaf key, without running anything.
"""

from __future__ import annotations

import shutil

import pytest
import yaml

from tests.conftest import PROJECT, project_params


def leaves(node: dict, prefix: str = "") -> list[tuple[str, object]]:
    """(dotted key, value) of every leaf; a list is a leaf, as `-S key=[1,2]` sets it whole."""
    found = []
    for key, value in node.items():
        dotted = f"{prefix}{key}"
        found += leaves(value, f"{dotted}.") if isinstance(value, dict) else [(dotted, value)]
    return found


def other_value(value: object) -> tuple[str, object]:
    """A different value of the same type, as a user would type it after `=`, and as YAML reads it."""
    if isinstance(value, bool):
        return str(not value).lower(), not value
    if isinstance(value, int):
        return str(value + 1), value + 1
    if isinstance(value, float):
        other = value / 2 if value else 0.5  # half of 0.0 would be no change
        return repr(other), other
    if isinstance(value, list):
        return "[7,9]", [7, 9]
    return f"{value}_x", f"{value}_x"


def lookup(params: dict, dotted: str) -> object:
    for key in dotted.split("."):
        params = params[key]
    return params


PARAMS = project_params()
LEAVES = leaves(PARAMS)


def test_the_walk_finds_every_section():
    assert {key.split(".")[0] for key, _ in LEAVES} == set(PARAMS)
    assert len(LEAVES) > 40


@pytest.mark.parametrize(("key", "value"), LEAVES, ids=[key for key, _ in LEAVES])
def test_dvc_accepts_set_param_for_every_key(tmp_path, key, value):
    from dvc.utils.hydra import apply_overrides

    params_file = tmp_path / "params.yaml"
    shutil.copy(PROJECT / "params.yaml", params_file)
    typed, expected = other_value(value)
    apply_overrides(params_file, [f"{key}={typed}"])  # raises on a key the grammar rejects
    changed = yaml.safe_load(params_file.read_text())
    assert lookup(changed, key) == expected
    assert [k for k, v in leaves(changed) if v != lookup(PARAMS, k)] == [key]


def test_a_key_starting_with_a_digit_is_what_dvc_rejects(tmp_path):
    """Why the toy datasets are not called 2blop and 4blop any more."""
    from dvc.exceptions import InvalidArgumentError
    from dvc.utils.hydra import apply_overrides

    params_file = tmp_path / "params.yaml"
    params_file.write_text("train_toy:\n  2blop: {epochs: 100}\n")
    with pytest.raises(InvalidArgumentError):
        apply_overrides(params_file, ["train_toy.2blop.epochs=200"])

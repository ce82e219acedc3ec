"""The benchmark scripts under bench/ are not run by the tests (each takes minutes on real
data), so what they take from the project's stages is checked here: a module or name that
moved would otherwise fail only when someone runs the command that docs/ prints."""

from __future__ import annotations

import ast
import importlib
import importlib.util

import pytest

from tests.conftest import PROJECT

SCRIPTS = sorted((PROJECT / "bench").glob("*.py"))


def stages_imports(script) -> list[tuple[str, str]]:
    """(module, name) of every ``from stages... import name`` in a script."""
    found = []
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "stages":
            found += [(node.module, alias.name) for alias in node.names]
    return found


@pytest.mark.parametrize("script", SCRIPTS, ids=[script.name for script in SCRIPTS])
def test_what_a_benchmark_takes_from_the_stages_is_there(script):
    for module, name in stages_imports(script):
        imported = importlib.import_module(module)
        assert hasattr(imported, name) or importlib.util.find_spec(f"{module}.{name}"), f"{module}.{name}"


def test_every_benchmark_takes_something_from_the_stages():
    assert SCRIPTS and all(stages_imports(script) for script in SCRIPTS)

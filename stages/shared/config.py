"""Params and errors: params.yaml's sections as typed models, read and checked before any
work, and the one-line errors a stage or command stops with."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar

import pydantic
import yaml


class StageError(Exception):
    """A problem with the user's input (params, data file, weights) that stops a stage.

    The message is one line that names the bad key or file; ``stages.shared.runner.run_stage``
    prints it and exits non-zero, without a traceback.
    """


class ParamsError(StageError):
    """A key in params.yaml is missing, unknown, of the wrong type or out of range."""


def one_line(err: BaseException, limit: int = 200) -> str:
    """An exception's message on one line, cut short: Keras's can run to pages."""
    message = " ".join(str(err).split())
    return message if len(message) <= limit else message[: limit - 3] + "..."


PARAMS_FILE = Path("params.yaml")


class Section(pydantic.BaseModel):
    """Keys of params.yaml as a pydantic model: a stage's sections (one field a section),
    or the keys of one section.

    Every key is required, an unknown key is an error, and nothing is coerced (``"3"``
    is not an integer, ``true`` is not 1). A validator across keys raises ValueError
    with a message that starts with the key it blames, e.g. ``"jit_compile: ..."``.
    """

    model_config = pydantic.ConfigDict(extra="forbid", strict=True, frozen=True)


def _identifier(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError(
            "a name must start with a letter or _ and hold only letters, digits and _ "
            "(so that `dvc exp run -S` can set its keys)"
        )
    return name


# The names of a section's items (the toy datasets): identifiers, since DVC parses `dvc exp
# run -S section.name.key=value` with Hydra's grammar; a name is also a file and a stage name.
Name = Annotated[str, pydantic.AfterValidator(_identifier)]

_P = TypeVar("_P", bound=Section)


def describe_error(error: Mapping[str, Any], separator: str = ".") -> str:
    """One pydantic error as ``key: problem, got value``, the key dotted as in params.yaml
    (or its parts joined by ``separator``, for keys that hold dots themselves)."""
    location = [part for part in error["loc"] if part != "[key]"]
    key = "".join(f"[{part}]" if isinstance(part, int) else f"{separator}{part}" for part in location)
    key = key.removeprefix(separator)
    kind, message = error["type"], error["msg"]
    if kind == "value_error":  # our own validators: the message may start with the key it blames
        message = message.removeprefix("Value error, ")
        blamed, _, problem = message.partition(": ")
        if problem and re.fullmatch(r"\w+", blamed):
            key, message = f"{key}{separator}{blamed}".removeprefix(separator), problem
    elif kind in ("missing", "extra_forbidden"):
        message = f"{'missing' if kind == 'missing' else 'unknown'} key"
    else:
        if kind == "too_short":
            message = f"must hold at least {error['ctx']['min_length']} item(s)"
        message = f"{message.replace('Input should be', 'must be')}, got {error['input']!r}"
    return f"{key}: {message}" if key else message


def read_params(model: type[_P], path: Path | str = PARAMS_FILE) -> _P:
    """The sections of params.yaml that ``model`` names, validated before any work.

    Only those sections are read, so a stage is not stopped by another stage's section.
    """
    path = Path(path)
    raw = read_yaml(path, ParamsError)
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: must hold a mapping of sections")
    try:
        return model.model_validate({name: raw[name] for name in model.model_fields if name in raw})
    except pydantic.ValidationError as err:
        raise ParamsError(f"{path}: {describe_error(err.errors()[0])}") from None


def read_yaml(path: Path, error: type[StageError] = StageError) -> Any:
    """A YAML file's content; a missing or malformed file raises ``error`` naming it."""
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise error(f"{path}: file not found (run from the project root)") from None
    except yaml.YAMLError as err:
        raise error(f"{path}: not valid YAML: {' '.join(str(err).split())}") from None

"""The errors that stop a stage with one line that names the bad key or file."""

from __future__ import annotations


class StageError(Exception):
    """A problem with the user's input (params, data file, weights) that stops a stage.

    The message is one line that names the bad key or file; ``stages.cli.run_stage``
    prints it and exits non-zero, without a traceback.
    """


class ParamsError(StageError):
    """A key in params.yaml is missing, unknown, of the wrong type or out of range."""


def one_line(err: BaseException, limit: int = 200) -> str:
    """An exception's message on one line, cut short: Keras's can run to pages."""
    message = " ".join(str(err).split())
    return message if len(message) <= limit else message[: limit - 3] + "..."

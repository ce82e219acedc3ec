"""Where a killed run of a long stage resumes from."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from stages.outputs import write_json


class ResumeFolder:
    """A folder that holds what a killed run of a stage needs to resume (git-ignored, not a
    DVC output), valid only for the run that ``key`` (any JSON value) describes.

    ``key.json`` is written when the folder is opened; a folder that holds another key
    (other params, data or devices) is emptied first, so nothing of another run is ever
    resumed. Stages write its files atomically, so a file that is there is whole, and
    ``clear()`` it once their outputs are written.
    """

    def __init__(self, folder: Path, key: Any):
        self.folder = folder
        key_path = folder / "key.json"
        try:
            saved_key = json.loads(key_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            saved_key = None
        if saved_key != key:
            if saved_key is not None:
                print(f"{folder} is from other params or data: starting afresh", flush=True)
            self.clear()
            write_json(key_path, key)

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

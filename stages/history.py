"""The per-epoch history of a Keras training, as the CSV that DVC plots."""

from __future__ import annotations

from pathlib import Path

from stages.outputs import atomic_path


def write_history_csv(history: dict[str, list[float]], path: Path | str) -> None:
    """Write Keras's ``History.history`` as a CSV with a 1-based ``epoch`` column (DVC plots' x).

    Not Keras's ``CSVLogger``: that one writes the file in place while training (a
    killed run leaves a file that looks finished), numbers epochs from 0, and prints
    floats at full repr, so this writes once, atomically, at a fixed precision.
    """
    import pandas as pd

    frame = pd.DataFrame(history)
    frame.insert(0, "epoch", range(1, len(frame) + 1))
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6g")

"""The predictions file that every model stage writes and ``evaluate`` scores.

One CSV per classifier, ``predictions/<exercise>/<classifier>.csv``, one row per
image (or point) and evaluation, with the columns

* ``id``: which image: an index into the data, or a file path;
* ``evaluation``: ``heldout`` for the figure the classifier is reported and bounded
  by (the toy hold-out share, the MNIST test set, the breast test split or, when the
  data has none, cross-validation); ``validation`` for the images that chose the
  epoch or the settings; ``cv`` for out-of-fold predictions; ``resubstitution`` for
  predictions on the images the classifier was fitted on;
* ``protocol``: the evaluation in words, e.g. ``test split`` or
  ``5-fold stratified cross-validation``;
* ``fold``: the cross-validation fold (1-based), else empty;
* ``actual`` and ``predicted``: class names;
* ``p_<class>``: the probability of each class, in the classifier's class order;
* ``called`` (breast classifiers with an operating point only): the class called at the
  operating point, which a cut of the positive class's probability sets, where
  ``predicted`` is the most probable one.

Kept apart from ``stages.evaluate`` so that a change in how metrics are computed
reruns only the evaluation, not the training stages that write these files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from stages.shared.config import ParamsError, StageError, one_line
from stages.shared.runner import atomic_path

PROBABILITY_PREFIX = "p_"
# The class that is the positive one wherever the data names it (BreastMNIST's label 0).
NAMED_POSITIVE_CLASS = "malignant"


def positive_class(chosen: str | None, class_names: tuple[str, ...], key: str, source: Path | str) -> str | None:
    """The positive class of an exercise: ``chosen`` (the params ``key``), which must be one of
    two classes (those of ``source``, a file that names them); or, when it is None,
    ``NAMED_POSITIVE_CLASS`` if the data has a class of that name, else none."""
    if chosen is None:
        return NAMED_POSITIVE_CLASS if len(class_names) == 2 and NAMED_POSITIVE_CLASS in class_names else None
    if chosen not in class_names:
        raise ParamsError(
            f"params.yaml: {key}: {chosen!r} is not a class of {source} "
            f"(its classes: {', '.join(class_names)}); name one of them, or null"
        )
    if len(class_names) != 2:
        raise ParamsError(f"params.yaml: {key}: a positive class needs two classes; {source} has {len(class_names)}")
    return chosen


def prediction_frame(
    ids: Any,
    actual: np.ndarray,
    probabilities: np.ndarray,
    class_names: tuple[str, ...] | list[str],
    evaluation: str,
    protocol: str,
    fold: np.ndarray | None = None,
    called: np.ndarray | None = None,
):
    """Rows of the predictions file for one evaluation: ``actual`` holds class indices,
    ``probabilities`` is (N, classes), and the predicted class is the most probable;
    ``called``, class indices at an operating point, adds the column of that name."""
    import pandas as pd

    names = np.asarray(class_names, dtype=object)
    frame = pd.DataFrame(
        {
            "id": ids,
            "evaluation": evaluation,
            "protocol": protocol,
            "fold": pd.array(fold if fold is not None else [None] * len(actual), dtype="Int64"),
            "actual": names[actual],
            "predicted": names[probabilities.argmax(axis=1)],
        }
    )
    if called is not None:
        frame["called"] = names[called]
    for index, name in enumerate(class_names):
        frame[f"{PROBABILITY_PREFIX}{name}"] = probabilities[:, index].astype(np.float32)
    return frame


def write_predictions(path: Path | str, frames: list) -> None:
    """Write the frames of ``prediction_frame`` as one CSV, atomically."""
    import pandas as pd

    with atomic_path(path) as tmp:
        # float32 probabilities need 7 significant digits (%.7g) to be written exactly enough
        pd.concat(frames, ignore_index=True).to_csv(tmp, index=False, float_format="%.7g")


def read_predictions(path: Path):
    """A predictions file and its class names (from the ``p_`` columns, in order)."""
    import pandas as pd

    try:
        frame = pd.read_csv(
            path, dtype={"id": str, "fold": str, "actual": str, "predicted": str, "called": str}, keep_default_na=False
        )
    except FileNotFoundError:
        raise StageError(f"{path}: not found; its stage has not run") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise StageError(f"{path}: not a readable CSV ({one_line(err)})") from None
    required = ("id", "evaluation", "protocol", "fold", "actual", "predicted")
    missing = [column for column in required if column not in frame.columns]
    class_names = tuple(c[len(PROBABILITY_PREFIX) :] for c in frame.columns if c.startswith(PROBABILITY_PREFIX))
    if missing or len(class_names) < 2:
        what = f"columns {', '.join(missing)}" if missing else "two or more p_<class> columns"
        raise StageError(f"{path}: not a predictions file (missing {what})")
    return frame, class_names

"""Classify new images with a pipeline the stages trained: one CSV row per image.

    classify-images [--model breast|breast-knn|breast-head|mnist] [-o FILE] [--heatmaps DIR] [--report FILE.html]
                    PATH [PATH ...]
    python -m stages.commands.classify ...

Run from the project root, after `dvc repro` (or `dvc pull`) has put the models there;
where they are is read from dvc.yaml, which states every path.
PATH is an image file or a folder, searched recursively; hidden files, ``Thumbs.db``,
``desktop.ini`` and ``__MACOSX/`` are skipped, as in ``extract_vgg_features``.

* ``breast-knn``, ``breast-head``: the frozen backbone that ``extract_vgg_features``
  used (its ``--backbone`` recipe), then ``fit_knn``'s or ``train_head``'s model, the
  one whose figures the metrics report (for the head, its whole ensemble).
  Images are read, resized and preprocessed by the extraction stage's own functions.
* ``breast`` (the default): whichever of the two has the higher cross-validation ROC
  AUC in ``evaluate@breast``'s metrics (over the non-test images when the data has a
  test split: the choice never looks at the test split).
* ``mnist``: ``augment_train_mnist``'s digit CNN. Each image is turned grey and resized
  to 28x28 pixels; digits must be light on a dark background, as in MNIST.

Loading a model runs no code: the KNN is a skops file that may hold only the types
``fit_knn`` writes, and Keras models load in Keras's safe mode.

Breast images also get ``nearest_distance``, the distance of their L2-normalised
features to the nearest training image's, and ``unlike_training``, true when it is
beyond ``fit_knn``'s novelty threshold: such an image is not like any the classifier
learnt from (a digit, noise, another kind of picture), so its probabilities mean little.
Standard error says how many were flagged. An image of the same kind as the training
images but of a class they do not hold is not flagged.

Writes ``file,predicted,p_<class>...`` (and for breast images the two columns above) to
standard output, or to ``-o FILE``. With ``--heatmaps DIR``, each breast image's Grad-CAM
heat map, laid over the scan, goes to a PNG in DIR (``stages.commands.heatmaps``). With
``--report FILE.html``, one page shows each breast image beside its heat map, with its calls,
probability and flags, the most suspicious first (``stages.commands.report``). A file
that cannot be read as an image is named on standard error and skipped: the rest of a
large batch is still classified, and the exit status is 1 so that a script notices.
Progress goes to standard error.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from stages.commands import heatmaps, report
from stages.commands.classifiers import BREAST_MODELS, Classifier, breast_classifier, mnist_classifier
from stages.shared.config import StageError
from stages.shared.images import IMAGE_SUFFIXES, files_under, prepare_image, read_image_file
from stages.shared.near_copies import thumbnail
from stages.shared.runner import atomic_path, run_stage
from stages.shared.tensorflow_runtime import quiet_tensorflow_stderr

PROGRESS_EVERY = 10  # batches between progress lines


def find_images(paths: list[Path]) -> list[Path]:
    """The image files named or found under ``paths``, in a stable order.

    A file named on the command line is always tried; in a folder, only files with an
    image suffix are, and others are left alone (a folder of scans holds notes too).
    """
    found = []
    for path in paths:
        if path.is_dir():
            found += [file for file in files_under(path) if file.suffix.lower() in IMAGE_SUFFIXES]
        elif path.is_file():
            found.append(path)
        else:
            raise StageError(f"{path}: no such file or folder")
    return found


def readable_batches(
    files: list[Path], prepare: Callable[[np.ndarray], np.ndarray], batch_size: int, skipped: list[str]
) -> Iterator[tuple[list[Path], np.ndarray, np.ndarray]]:
    """Batches of ``(files, prepared images, thumbnails)``: the thumbnails, of the images as
    read, are what the near-copy rule compares (``stages.shared.near_copies``). A file that
    does not decode is recorded in ``skipped`` with the reason, named on stderr, and left out."""
    names, images, thumbnails = [], [], []
    for file in files:
        try:
            image = read_image_file(file)
            images.append(prepare(image))
            thumbnails.append(thumbnail(image))
            names.append(file)
        except StageError as err:
            skipped.append(str(err))
            print(f"skipped {err}", file=sys.stderr, flush=True)
        if len(images) == batch_size:
            yield names, np.stack(images), np.stack(thumbnails)
            names, images, thumbnails = [], [], []
    if images:
        yield names, np.stack(images), np.stack(thumbnails)


def classify(
    files: list[Path],
    classifier: Classifier,
    batch_size: int,
    after_batch: Sequence[Callable[[list[Path], np.ndarray, dict], None]] = (),
):
    """A DataFrame ``file, predicted, p_<class>...`` of every readable file, then the
    classifier's ``other_columns``; and the skipped files. Each batch's rows, a dict of
    columns, go to each of ``after_batch`` with the batch's files and prepared images."""
    import pandas as pd

    class_names = classifier.class_names
    header = ["file", "predicted", *(f"p_{name}" for name in class_names), *classifier.other_columns]
    prepare = lambda image: prepare_image(image, classifier.image_size, classifier.mode)  # noqa: E731
    batches, skipped, done, started = [], [], 0, time.perf_counter()
    for number, (names, batch, thumbnails) in enumerate(readable_batches(files, prepare, batch_size, skipped), 1):
        p, other = classifier.columns(batch, thumbnails)
        rows = {
            "file": [str(n) for n in names],
            "predicted": np.asarray(class_names)[p.argmax(1)],
            **{f"p_{name}": p[:, i] for i, name in enumerate(class_names)},
            **other,
        }
        for then in after_batch:
            then(names, batch, rows)
        batches.append(pd.DataFrame(rows))
        done += len(names)
        if number % PROGRESS_EVERY == 0:
            rate = done / (time.perf_counter() - started)
            print(f"classified {done} of {len(files)} images, {rate:.1f} images/s", file=sys.stderr, flush=True)
    return (pd.concat(batches, ignore_index=True) if batches else pd.DataFrame(columns=header)), skipped


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="classify-images", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="image files or folders")
    parser.add_argument(
        "--model",
        choices=["breast", *BREAST_MODELS, "mnist"],
        default="breast",
        help="the trained pipeline (default breast: the better breast classifier by cross-validation)",
    )
    parser.add_argument("-o", "--output", type=Path, help="CSV file to write (default: standard output)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    parser.add_argument(
        "--heatmaps",
        type=Path,
        metavar="DIR",
        help="write each breast image's Grad-CAM heat map over the scan to a PNG in DIR",
    )
    parser.add_argument(
        "--report",
        type=Path,
        metavar="FILE.html",
        help="write one page: each breast image beside its heat map, its calls and flags, the most suspicious first",
    )
    args = parser.parse_args(argv)
    if args.heatmaps and args.model == "mnist":
        raise StageError("--heatmaps: heat maps are made for breast images (the breast head's Grad-CAM), not mnist")
    if args.report and args.model == "mnist":
        raise StageError("--report: the page is made for breast images (beside the breast head's heat maps), not mnist")
    files = find_images(args.paths)
    if args.model == "mnist":
        classifier = mnist_classifier()
    else:
        classifier = breast_classifier(args.model, with_heatmaps=bool(args.heatmaps or args.report))
    writer = heatmaps.HeatmapWriter(args.heatmaps, files) if args.heatmaps else None
    page = report.ReportPage(classifier) if args.report else None
    uses = [use for use in (writer, page) if use]
    hooks = [heatmaps.Overlays(classifier.gradcam, uses)] if uses else []  # the maps made once for both
    print(f"classifying {len(files)} images with {classifier.name}", file=sys.stderr, flush=True)
    table, skipped = classify(files, classifier, args.batch_size, hooks)
    # 7 significant digits: a float32 probability to within 1e-7, as in the predictions files
    if args.output:
        with atomic_path(args.output) as tmp:
            table.to_csv(tmp, index=False, float_format="%.7g")
    else:
        table.to_csv(sys.stdout, index=False, float_format="%.7g")
    print(
        f"classified {len(table)} images" + (f"; skipped {len(skipped)} that could not be read" if skipped else ""),
        file=sys.stderr,
    )
    if writer:
        print(f"wrote {writer.written} heat maps to {args.heatmaps}", file=sys.stderr)
    if page:
        page.write(args.report, skipped)
        print(f"wrote the page of {len(page.rows)} images to {args.report}", file=sys.stderr)
    threshold = classifier.novelty_threshold
    if threshold is not None:
        flagged = int(table["unlike_training"].sum()) if len(table) else 0
        print(
            f"flagged {flagged} of {len(table)} images as unlike the training images (distance to the nearest "
            f"one above {threshold:.4f}: unlike_training); their probabilities mean little",
            file=sys.stderr,
        )
    sys.exit(1 if skipped else 0)


def cli() -> None:
    run_stage(main, quiet_tensorflow_stderr)  # a StageError: one line and exit status 2


if __name__ == "__main__":
    cli()

"""The page that ``classify-images --report FILE.html`` writes: one HTML file that needs
nothing else (its style inline, its images embedded as ``data:`` URIs, no script, no link
out), with a row per breast image: the scan, its Grad-CAM heat map over the scan, the
call by the argmax and at the classifier's operating point, the probability of the
positive class, and the flags. The most suspicious first: by that probability, highest
first, ties by file name. The same images and models give the same bytes.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path

import numpy as np

from stages.commands.classifiers import OPERATING_POINT_COLUMN, Classifier
from stages.commands.heatmaps import COLOUR_MAP, png_bytes
from stages.shared.config import StageError
from stages.shared.runner import atomic_path

# The longest side of an embedded picture, in pixels: above the network's 224 px input, so
# the map keeps its detail, and small enough that a page of a thousand scans stays readable
# (a lab's 1000 px scan is shrunk for the page; its file keeps every pixel).
LARGEST_SIDE = 320
STYLE = """
body { font-family: sans-serif; margin: 1.5rem; color: #222; line-height: 1.4; }
table { border-collapse: collapse; }
th, td { border-bottom: 1px solid #ccc; padding: 0.4rem 0.6rem; text-align: left; vertical-align: top; }
th { background: #eee; position: sticky; top: 0; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
img { display: block; width: 12rem; height: auto; }
.positive { color: #b00000; font-weight: bold; }
.flag { color: #8a4b00; }
.caution { border-left: 4px solid #b00000; padding-left: 0.6rem; }
"""


@dataclass(frozen=True)
class Row:
    """One image's line on the page; its pictures are already PNG, as ``data:`` URIs."""

    file: str
    probability: float  # of the positive class
    predicted: str
    called: str | None  # at the operating point; None without one
    unlike_training: bool
    nearest_distance: float
    near_copy_of: str
    near_copy_label: str
    scan: str
    heat_map: str


def data_uri(image: np.ndarray) -> str:
    """A uint8 image as a PNG ``data:`` URI, shrunk to ``LARGEST_SIDE`` if larger."""
    from PIL import Image

    picture = Image.fromarray(image)
    if max(picture.size) > LARGEST_SIDE:
        picture.thumbnail((LARGEST_SIDE, LARGEST_SIDE), Image.Resampling.LANCZOS)
    return "data:image/png;base64," + base64.b64encode(png_bytes(np.asarray(picture))).decode("ascii")


class ReportPage:
    """The page of a breast ``classifier`` built with its heat maps: a use of
    ``heatmaps.Overlays`` that keeps each image's row with its two pictures encoded as
    they come (no batch's arrays are kept), then ``write``."""

    def __init__(self, classifier: Classifier):
        self.classifier, gradcam, point = classifier, classifier.gradcam, classifier.operating_point
        self.positive = classifier.class_names[gradcam.positive]
        if point and point["positive_class"] != self.positive:
            raise StageError(
                f"--report: {classifier.name}'s operating point is for {point['positive_class']} but the heat "
                f"maps' positive class (positive_class.breast) is {self.positive}: rerun `dvc repro`"
            )
        self.rows: list[Row] = []

    def __call__(self, _name: Path, scan: np.ndarray, overlaid: np.ndarray, row: dict) -> None:
        self.rows.append(
            Row(
                file=str(row["file"]),
                probability=float(row[f"p_{self.positive}"]),
                predicted=str(row["predicted"]),
                called=str(row[OPERATING_POINT_COLUMN]) if OPERATING_POINT_COLUMN in row else None,
                unlike_training=bool(row["unlike_training"]),
                nearest_distance=float(row["nearest_distance"]),
                near_copy_of=str(row["near_copy_of"]),
                near_copy_label=str(row["near_copy_label"]),
                scan=data_uri(scan),
                heat_map=data_uri(overlaid),
            )
        )

    def write(self, path: Path, skipped: Sequence[str]) -> None:
        """The page, to ``path``; ``skipped``: each file that could not be read, with why."""
        with atomic_path(path) as tmp:
            tmp.write_text(self.page(skipped), encoding="utf-8")

    def page(self, skipped: Sequence[str]) -> str:
        rows = sorted(self.rows, key=lambda row: (-row.probability, row.file))
        called_column = self.classifier.operating_point is not None
        headings = ["#", "file", "scan", "heat map", f"p({self.positive})", "most probable"]
        headings += ["called at the operating point"] * called_column + ["flags"]
        title = f"classify-images: {len(rows)} breast scans, {self.classifier.name}"
        return "\n".join(
            [
                "<!DOCTYPE html>",
                '<html lang="en">',
                '<head><meta charset="utf-8">',
                f"<title>{escape(title)}</title>",
                f"<style>{STYLE}</style>",
                "</head>",
                "<body>",
                f"<h1>{escape(title)}</h1>",
                *self.header(skipped),
                "<table>",
                "<thead><tr>" + "".join(f"<th>{escape(heading)}</th>" for heading in headings) + "</tr></thead>",
                "<tbody>",
                *(self.table_row(number, row, called_column) for number, row in enumerate(rows, 1)),
                "</tbody>",
                "</table>",
                "</body>",
                "</html>",
                "",
            ]
        )

    def header(self, skipped: Sequence[str]) -> list[str]:
        classifier, gradcam, positive = self.classifier, self.classifier.gradcam, escape(self.positive)
        point = classifier.operating_point
        if point:
            operating = (
                f"a scan is called {positive} when its probability of {positive} is at least "
                f"{point['min_positive_probability']:.4f}, the cut that caught {point['target_sensitivity']:.0%} of "
                f"the {positive} images in out-of-fold predictions ({escape(point['chosen_on'])} over "
                f"{point['images']} images; sensitivity {point['out_of_fold_sensitivity']}, specificity "
                f"{point['out_of_fold_specificity']} on them)"
            )
        else:
            operating = "none (target_sensitivity null): the call is the most probable class alone"
        unlike = sum(row.unlike_training for row in self.rows)
        copies = sum(bool(row.near_copy_of) for row in self.rows)
        whose = "" if classifier.name == "breast-head" else f" (not {escape(classifier.name)}'s: it has no gradient)"
        lines = [
            '<p class="caution"><strong>A research tool, not a diagnosis.</strong> Each call is a trained '
            "model's output on features of the image; it has not been validated for clinical use.</p>",
            "<ul>",
            f"<li>Classifier: {escape(classifier.name)}. Positive class: {positive}. Rows are sorted by the "
            f"probability of {positive}, highest first (ties by file name).</li>",
            f"<li>Operating point: {operating}.</li>",
            f"<li>Flags: unlike the training images, {unlike} of {len(self.rows)} (their features farther from "
            f"the nearest training image's than {classifier.novelty_threshold:.4f}: their probabilities mean "
            f"little); a near-copy of a training image, {copies} of {len(self.rows)}.</li>",
            f"<li>Heat map: the Grad-CAM of breast-head's log-odds of {positive}{whose} over "
            f"{escape(', '.join(gradcam.blocks))}, laid over the scan in {COLOUR_MAP}'s colours, blue (nothing) to "
            "red (the peak). Each map is scaled to its own peak: it shows where the features that raised the score "
            "lie, not how much, and not the lesion's outline. Read it beside the probability.</li>",
            f"<li>Files that could not be read, not on the page: {len(skipped)}",
        ]
        if skipped:
            lines += ["<ul>", *(f"<li>{escape(reason)}</li>" for reason in skipped), "</ul>"]
        return [*lines, "</li>", "</ul>"]

    def table_row(self, number: int, row: Row, called_column: bool) -> str:
        def call(name: str) -> str:
            return f'<span class="positive">{escape(name)}</span>' if name == self.positive else escape(name)

        flags = []
        if row.unlike_training:
            flags.append(f"unlike the training images (distance {row.nearest_distance:.4f})")
        if row.near_copy_of:
            flags.append(f"near-copy of training image {row.near_copy_of} (trained as {row.near_copy_label})")
        file = escape(row.file)
        cells = [
            f'<td class="number">{number}</td>',
            f"<td>{file}</td>",
            f'<td><img src="{row.scan}" alt="scan {file}"></td>',
            f'<td><img src="{row.heat_map}" alt="heat map {file}"></td>',
            f'<td class="number">{row.probability:.4f}</td>',
            f"<td>{call(row.predicted)}</td>",
            *([f"<td>{call(row.called)}</td>"] if called_column else []),
            "<td>" + "<br>".join(f'<span class="flag">{escape(flag)}</span>' for flag in flags) + "</td>",
        ]
        return "<tr>" + "".join(cells) + "</tr>"

"""Near-copies of one scan: the one rule that ``find_near_copies`` groups the breast images by
and that ``classify-images`` uses to say when a new image is a near-copy of a training image.

The rule reads pixels. Each image becomes a grey ``THUMBNAIL_SIZE`` x ``THUMBNAIL_SIZE``
thumbnail (``prepare_image``, the extraction's own resizing); its mean is subtracted and it
is scaled to unit length, so that the dot product of two of them is their pixels'
correlation. Two images are near-copies when that correlation is at least
``find_near_copies.min_correlation``: a re-export, the same scan with calipers or text
drawn on it, a neighbouring frame. The groups are the connected components of that
relation, joined with a lab's own groups (a patient or a lesion).

Why pixels at 28 x 28: BreastMNIST is released at that size, so its copies are compared as
released; a thumbnail that small ignores what a re-export or a caliper mark changes, and
keeps the layout of the scan, which the pooled VGG features drop. docs/breast.md shows the
pairs on either side of the default threshold, and why the features' cosine would chain
different scans into one group.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from stages.shared.files import read_npz
from stages.shared.images import prepare_image

THUMBNAIL_SIZE = 28
BLOCK_ROWS = 1024  # rows of the correlation matrix at a time: memory stays at BLOCK_ROWS x N


def thumbnail(image: np.ndarray) -> np.ndarray:
    """An image (uint8 grey or RGB) as its float32 grey thumbnail, flattened."""
    return prepare_image(image, THUMBNAIL_SIZE, mode="L").ravel()


def unit_rows(thumbnails: np.ndarray) -> np.ndarray:
    """Thumbnails (N, P) with each row's mean subtracted and scaled to unit length, in float64
    so that a correlation at the threshold does not flip with the CPU's rounding. A flat
    image (all one grey) stays all zeros: it correlates with nothing."""
    centred = thumbnails.astype(np.float64) - thumbnails.mean(axis=1, keepdims=True, dtype=np.float64)
    norms = np.linalg.norm(centred, axis=1, keepdims=True)
    return np.divide(centred, norms, out=np.zeros_like(centred), where=norms > 0)


def correlation_blocks(queries: np.ndarray, reference: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """``(first row, correlations)`` of ``queries`` against ``reference`` (both ``unit_rows``),
    ``BLOCK_ROWS`` query rows at a time."""
    for first in range(0, len(queries), BLOCK_ROWS):
        yield first, queries[first : first + BLOCK_ROWS] @ reference.T


def nearest(queries: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each of ``queries``, the index of its most correlated row of ``reference`` and that
    correlation (all ``unit_rows``; ``reference`` must not be empty)."""
    index, correlation = np.empty(len(queries), np.int64), np.empty(len(queries))
    for first, block in correlation_blocks(queries, reference):
        index[first : first + len(block)] = block.argmax(axis=1)
        correlation[first : first + len(block)] = block.max(axis=1)
    return index, correlation


def near_copy_pairs(unit: np.ndarray, min_correlation: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The near-copy pairs among ``unit`` (``unit_rows``) and each image's nearest other one.

    Returns ``(first, second, nearest_index, nearest_correlation)``: the pairs ``first <
    second`` whose correlation is at least ``min_correlation``, and for every image the
    index of the most correlated other image and that correlation (-1 and nan for a set of
    one image).
    """
    firsts, seconds = [], []
    nearest_index = np.full(len(unit), -1, np.int64)
    nearest_correlation = np.full(len(unit), np.nan)
    for first, block in correlation_blocks(unit, unit):
        rows = np.arange(first, first + len(block))
        block[rows - first, rows] = -np.inf  # an image is not its own near-copy
        if len(unit) > 1:
            nearest_index[rows] = block.argmax(axis=1)
            nearest_correlation[rows] = block.max(axis=1)
        row, column = np.nonzero(block >= min_correlation)
        keep = column > row + first
        firsts.append(row[keep] + first)
        seconds.append(column[keep])
    return np.concatenate(firsts), np.concatenate(seconds), nearest_index, nearest_correlation


def group_ids(n: int, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Group numbers 0, 1, ... for ``n`` images linked by the pairs ``(first, second)``: the
    connected components, numbered in the order of their first image."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    links = coo_matrix((np.ones(len(first)), (first, second)), shape=(n, n))
    _, component = connected_components(links, directed=False)
    # Renumber by first appearance, so that the numbers do not depend on scipy's order.
    _, first_seen = np.unique(component, return_index=True)
    order = np.argsort(np.argsort(first_seen))
    return order[component]


class CopyReference:
    """The images a classifier was fitted on, as ``find_near_copies`` saved their thumbnails
    (``--thumbnails``): tells which of them a new image is a near-copy of, by the same rule."""

    def __init__(self, path: Path):
        saved = read_npz(path, ("thumbnails", "source", "labels", "class_names", "min_correlation"), "find_near_copies")
        self.unit = unit_rows(saved["thumbnails"])
        self.source = saved["source"]
        self.label = np.asarray(saved["class_names"])[saved["labels"]]
        self.min_correlation = float(saved["min_correlation"])

    def copies_of(self, thumbnails: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each image, by its ``thumbnail``, the source and label of the training image it is
        a near-copy of (its most correlated one), or empty strings when it is a near-copy of none."""
        if not len(self.unit):
            return np.full(len(thumbnails), ""), np.full(len(thumbnails), "")
        index, correlation = nearest(unit_rows(thumbnails), self.unit)
        copy = correlation >= self.min_correlation
        return np.where(copy, self.source[index], ""), np.where(copy, self.label[index], "")

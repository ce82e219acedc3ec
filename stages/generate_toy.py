"""Stage ``generate_toy``: make one of the two-class 2-D toy datasets.

    python -m stages.generate_toy NAME --data DATA.npz --scatter SCATTER.png

Reads ``seed`` and ``generate_toy.<name>`` from params.yaml, where every dataset is
named (dvc.yaml runs this stage once per name) and has a ``layout``: the original's three
are ``blob_pair`` ("2blop"), ``blob_in_ring`` ("blop_circle") and ``xor_blobs``
("4blop"). Writes the points (``--data``: arrays ``x`` (N, 2) float32 and ``y`` (N,)
int64) and a scatter plot of them (``--scatter``).
"""

from __future__ import annotations

import functools
from typing import Literal

import numpy as np
from pydantic import Field

from stages.shared.config import Name, Section, read_params
from stages.shared.files import save_figure, save_npz
from stages.shared.runner import run_stage, stage_args


def _split_counts(n_samples: int, n_parts: int) -> list[int]:
    """Share ``n_samples`` as evenly as possible between ``n_parts`` clusters."""
    base, extra = divmod(n_samples, n_parts)
    return [base + (i < extra) for i in range(n_parts)]


def gaussian_blobs(centres: list, classes: list, n_samples: int, noise: float, rng: np.random.Generator):
    """Gaussian blobs of standard deviation ``noise`` around ``centres``, blob ``i`` of class ``classes[i]``."""
    counts = _split_counts(n_samples, len(centres))
    x = np.concatenate([rng.normal(c, noise, size=(n, 2)) for c, n in zip(np.asarray(centres, float), counts)])
    return x, np.repeat(classes, counts)


# Two blobs side by side; four in an XOR layout, where diagonal corners share a class.
blob_pair = functools.partial(gaussian_blobs, [[-2, 0], [2, 0]], [0, 1])
xor_blobs = functools.partial(gaussian_blobs, [[-2, -2], [2, 2], [-2, 2], [2, -2]], [0, 0, 1, 1])


def blob_in_ring(n_samples: int, noise: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Class 0: a blob at the origin; class 1: a ring of radius 3 around it.

    ``noise`` is the blob's standard deviation and the ring's radial spread.
    """
    n_blob, n_ring = _split_counts(n_samples, 2)
    blob = rng.normal(0.0, noise, size=(n_blob, 2))
    angle = rng.uniform(0.0, 2 * np.pi, size=n_ring)
    radius = 3.0 + rng.normal(0.0, noise, size=n_ring)
    ring = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
    return np.concatenate([blob, ring]), np.repeat([0, 1], [n_blob, n_ring])


LAYOUTS = {"blob_pair": blob_pair, "blob_in_ring": blob_in_ring, "xor_blobs": xor_blobs}


class ToyData(Section):
    layout: Literal[tuple(LAYOUTS)]  # type: ignore[valid-type]
    n_samples: int = Field(ge=8)
    noise: float = Field(gt=0)


class Params(Section):
    seed: int = Field(ge=0)
    generate_toy: dict[Name, ToyData] = Field(min_length=1)


def generate(layout: str, n_samples: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Return shuffled ``(x, y)`` in ``layout``: x float32 (N, 2), y int64 (N,) in {0, 1}."""
    rng = np.random.default_rng(seed)
    x, y = LAYOUTS[layout](n_samples, noise, rng)
    order = rng.permutation(len(y))
    return x[order].astype(np.float32), y[order].astype(np.int64)


def scatter_figure(x: np.ndarray, y: np.ndarray, title: str):
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no figure to close

    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    for label, colour in ((0, "tab:red"), (1, "tab:blue")):
        ax.scatter(*x[y == label].T, s=8, c=colour, label=f"class {label}", alpha=0.7)
    ax.set(title=title, xlabel="x1", ylabel="x2", aspect="equal")
    ax.legend(loc="upper right")
    return fig


def main(argv: list[str]) -> None:
    params = read_params(Params)
    args = stage_args("generate_toy", argv, "data", "scatter", items=params.generate_toy)
    name = args.name
    settings = params.generate_toy[name]
    x, y = generate(settings.layout, settings.n_samples, settings.noise, params.seed)
    save_npz(args.data, x=x, y=y)
    save_figure(scatter_figure(x, y, f"{name}, {settings.layout} ({len(y)} points)"), args.scatter)
    print(f"generate_toy {name}: {len(y)} points, class counts {np.bincount(y).tolist()}")


if __name__ == "__main__":
    run_stage(main)

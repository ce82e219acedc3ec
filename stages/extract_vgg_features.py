"""Stage ``extract_vgg_features``: VGG feature vectors of the breast images, one per block.

    python -m stages.extract_vgg_features --features FEATURES.npz --backbone BACKBONE.json
        --checkpoints FOLDER

Reads ``extract_vgg_features`` from params.yaml and the images named by
``extract_vgg_features.data``: ``medmnist`` (MedMNIST's BreastMNIST at 28x28, upscaled
to ``image_size``) or ``medmnist_224`` (the same images released at 224x224), each
downloaded once and MD5-checked into Keras's cache; or the name of a local copy in
``data/local/breast/``: a ``.npz`` in MedMNIST's layout or a folder with one subfolder of
images per class. Writes the features (``--features``: ``features`` float32 (N, D), the
blocks side by side, named by ``feature_blocks`` with their widths in ``block_widths``;
``labels`` int64 (N,), ``split`` and ``source`` strings (N,), ``class_names`` strings)
and what rebuilds the frozen backbone for new images (``--backbone``, read by
``stages.commands.classify``, with a hash of the weights it was built from); the counts, seconds
and speed go to the log and to ``runs/extract_vgg_features.json``.

Every block that ``blocks`` names is written once: ``fit_knn`` and ``train_head`` each
take the blocks they use from their own params (``features``), so a change of either
classifier's blocks never reruns this stage. The original's VGG19 ``fc1`` (4096-d, on
224x224 images) is ``layer: fc1`` with ``blocks: [5]``, written as the block ``fc1``.
Images are resized to ``image_size``, grey repeated to three channels, and put through
VGG's ``preprocess_input``. Unlike the original, images are decoded and resized by
``workers`` threads a few batches ahead of the network, and run through it a batch at a
time (split over the GPUs when there are several). Features are computed in chunks of
``chunk_size`` images, each saved to the ``--checkpoints`` folder when done, so a killed
run resumes from its last finished chunk; the folder is removed after a run succeeds.

Memory does not grow with the number of images N except for: the (N, D) float32
features; the labels, splits and names of the images (and, for a folder, its N paths);
and, for a ``.npz``, its uint8 images, which NumPy reads whole. Decoded and prepared
images are bounded by ``workers + PREFETCH_BATCHES + 1`` batches.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import pydantic
from pydantic import Field

from stages.shared.backbone import (
    LOCAL_WEIGHTS_DIR,
    POOLED_LAYERS,
    TOP_IMAGE_SIZE,
    TOP_LAYERS,
    WEIGHTS_KEYWORDS,
    block_widths,
    feature_block_names,
    load_backbone,
    preprocess_function,
    weights_digest,
    weights_source,
)
from stages.shared.breast_data import SPLITS, BreastData, ImageSet, open_data
from stages.shared.config import Section, read_params
from stages.shared.downloads import DownloadError, local_or
from stages.shared.files import save_npz
from stages.shared.images import prepare_image
from stages.shared.resume import ResumeFolder, code_digests
from stages.shared.runner import atomic_path, run_stage, stage_args, write_json
from stages.shared.tensorflow_runtime import (
    describe_devices,
    distribution_strategy,
    quiet_tensorflow_stderr,
    write_run_facts,
)

# How to rebuild the frozen backbone for new images (``stages.commands.classify``): the settings
# that shape the features, written with the class names (a local weights file by its path).
RECIPE_KEYS = ("backbone", "weights", "layer", "blocks", "image_size")

PROGRESS_EVERY = 5  # batches between progress lines
CHUNK_SIZE = 1024  # images per checkpointed chunk: a killed run loses at most this many
PREFETCH_BATCHES = 2  # prepared batches waiting for the network, beyond one per worker

# Keys that change how fast the features come, not one byte of them: dvc.yaml leaves them
# out of the stage's params deps, so turning them reruns nothing.
SPEED_KEYS = ("workers", "chunk_size")


class Extraction(Section):
    data: BreastData
    backbone: Literal["vgg19", "vgg16"]
    weights: local_or(LOCAL_WEIGHTS_DIR, "file", *WEIGHTS_KEYWORDS)  # type: ignore[valid-type]
    layer: Literal[TOP_LAYERS + POOLED_LAYERS]  # type: ignore[valid-type]
    blocks: list[Annotated[int, Field(ge=1, le=5)]] = Field(min_length=1)  # every block a classifier may use
    image_size: int = Field(ge=32)
    batch_size: int = Field(ge=1)
    workers: int = Field(default=2, ge=1)  # threads that decode and resize; the features do not depend on it
    # Rounded up to whole batches, so that the batches are those of an unchunked run.
    chunk_size: int = Field(default=CHUNK_SIZE, ge=1)

    @pydantic.model_validator(mode="after")
    def layer_fits_size_and_blocks(self) -> Extraction:
        # fc1 and fc2 sit after a Flatten sized for 224x224 inputs and read block 5 alone;
        # pooled layers take any size and can pool several blocks.
        if self.layer in TOP_LAYERS and self.image_size != TOP_IMAGE_SIZE:
            raise ValueError(f"image_size: must be {TOP_IMAGE_SIZE} for layer {self.layer}, got {self.image_size}")
        if len(set(self.blocks)) != len(self.blocks):
            raise ValueError(f"blocks: a block twice in {self.blocks}")
        if self.layer in TOP_LAYERS and self.blocks != [5]:
            raise ValueError(
                f"blocks: must be [5] for layer {self.layer} (only avg and max pool several blocks), got {self.blocks}"
            )
        return self


class Params(Section):
    extract_vgg_features: Extraction


def iterate_batches(
    images: ImageSet, image_size: int, batch_size: int, workers: int = 1, start: int = 0, stop: int | None = None
) -> Iterator[np.ndarray]:
    """Yield float32 (B, size, size, 3) batches of images ``start`` to ``stop`` in order.

    ``workers`` threads read and prepare (``prepare_image``) a batch each, ahead of the
    caller: at most ``workers + PREFETCH_BATCHES`` batches are being prepared or wait,
    so memory is bounded whatever the number of images. A file that does not decode
    raises StageError naming it when its batch is reached.
    """
    # Threads rather than tf.data: PIL releases the GIL while it decodes and resizes, so
    # threads run in parallel, and prepare_image stays the one preparation (classify
    # uses it too); a tf.data map would resize with TensorFlow's kernels (other
    # numbers) or call back into Python through py_function, under the GIL.
    stop = len(images) if stop is None else stop

    def prepare_batch(first: int) -> np.ndarray:
        last = min(first + batch_size, stop)
        return np.stack([prepare_image(images.read(i), image_size) for i in range(first, last)])

    firsts = iter(range(start, stop, batch_size))
    pool = ThreadPoolExecutor(workers, thread_name_prefix="prepare_batch")
    try:
        pending = deque(pool.submit(prepare_batch, first) for first in islice(firsts, workers + PREFETCH_BATCHES))
        while pending:
            batch = pending.popleft().result()  # in submission order, whichever finished first
            following = next(firsts, None)
            if following is not None:
                pending.append(pool.submit(prepare_batch, following))
            yield batch
    finally:  # also when the caller stops early or a file fails: drop the batches not begun
        pool.shutdown(wait=True, cancel_futures=True)


# --------------------------------------------------------------------------- the network
def make_forward_pass(model, preprocess: Callable[[np.ndarray], np.ndarray], strategy=None):
    """A function from a float32 batch of prepared images to its float32 features.

    On one device, ``model.predict_on_batch``. Under a ``strategy`` of several replicas
    (``model`` built in its scope), each batch is split evenly among them and the rows
    gathered back in order; Keras's ``predict_on_batch`` would give every replica the
    whole batch. A batch is padded with copies of its last image to a multiple of the
    replicas, because TensorFlow's CPU convolutions fail on an empty share.
    """
    if strategy is None or strategy.num_replicas_in_sync == 1:
        return lambda batch: np.asarray(model.predict_on_batch(preprocess(batch)))
    import tensorflow as tf

    replicas = strategy.num_replicas_in_sync

    @tf.function(reduce_retracing=True)  # one graph for full batches, few for the last ones
    def run_replicas(shares):
        return strategy.gather(strategy.run(model, args=(shares,), kwargs={"training": False}), axis=0)

    def forward(batch: np.ndarray) -> np.ndarray:
        padded = np.concatenate([batch, np.repeat(batch[-1:], -len(batch) % replicas, axis=0)])
        shares = np.split(preprocess(padded), replicas)
        per_replica = strategy.experimental_distribute_values_from_function(
            lambda context: shares[context.replica_id_in_sync_group]
        )
        return run_replicas(per_replica).numpy()[: len(batch)]

    return forward


# --------------------------------------------------------------------------- resumable extraction
class ChunkCheckpoint(ResumeFolder):
    """Finished chunks of features, for the run that ``key`` describes (see ``main``). Each
    chunk is an .npy written atomically: one that is there is whole."""

    def chunk_path(self, start: int) -> Path:
        return self.folder / f"chunk-{start:09d}.npy"

    def load(self, start: int) -> np.ndarray | None:
        """The features of the chunk that begins at image ``start``, or None if not finished."""
        path = self.chunk_path(start)
        return np.load(path) if path.is_file() else None

    def save(self, start: int, features: np.ndarray) -> None:
        with atomic_path(self.chunk_path(start)) as tmp:
            np.save(tmp, features)


def extract_features(
    forward: Callable[[np.ndarray], np.ndarray],
    n_features: int,
    images: ImageSet,
    image_size: int,
    batch_size: int,
    workers: int = 1,
    chunk_size: int = CHUNK_SIZE,
    checkpoint: ChunkCheckpoint | None = None,
    progress_every: int | None = PROGRESS_EVERY,
) -> tuple[np.ndarray, int]:
    """float32 (len(images), n_features) features: ``forward`` over the prepared images,
    and how many of them came from ``checkpoint`` rather than the network.

    Images go in chunks of ``chunk_size`` rounded up to whole batches. Finished chunks
    that ``checkpoint`` holds are read from it, and the rest computed in one stream of
    batches (``iterate_batches`` with ``workers``), each chunk saved to ``checkpoint``
    as soon as its last batch is through. Prints a flushed progress line every
    ``progress_every`` batches computed and after the last, or none if it is None.
    """
    features = np.empty((len(images), n_features), dtype=np.float32)
    chunk_size = -(-chunk_size // batch_size) * batch_size
    resumed = 0
    while checkpoint and resumed < len(images) and (chunk := checkpoint.load(resumed)) is not None:
        features[resumed : resumed + len(chunk)] = chunk
        resumed += len(chunk)
    if resumed:
        print(f"extract_vgg_features: resuming after {resumed} images from {checkpoint.folder}", flush=True)
    done, started = resumed, time.perf_counter()
    batches = iterate_batches(images, image_size, batch_size, workers, start=resumed)
    for number, batch in enumerate(batches, start=1):
        features[done : done + len(batch)] = forward(batch)
        done += len(batch)
        if checkpoint and (done % chunk_size == 0 or done == len(images)):
            chunk_start = (done - 1) // chunk_size * chunk_size
            checkpoint.save(chunk_start, features[chunk_start:done])
        if progress_every and (number % progress_every == 0 or done == len(images)):
            elapsed = time.perf_counter() - started
            rate = (done - resumed) / elapsed
            print(
                f"extract_vgg_features: {done}/{len(images)} images, {rate:.1f} images/s, "
                f"{elapsed:.0f}s elapsed, about {(len(images) - done) / rate:.0f}s left",
                flush=True,
            )
    return features, resumed


def image_counts(images: ImageSet) -> dict:
    """How many images, of each split and of each class; the classes under a key of their
    own, since a lab's class folder may be called ``train`` or ``test``."""
    return {
        "n_images": len(images),
        **{f"n_{split}": int((images.split == split).sum()) for split in SPLITS},
        "n_per_class": {name: int((images.labels == i).sum()) for i, name in enumerate(images.class_names)},
    }


def main(argv: list[str]) -> None:
    settings = read_params(Params).extract_vgg_features
    args = stage_args("extract_vgg_features", argv, "features", "backbone", "checkpoints")
    recipe = {**settings.model_dump(include=set(RECIPE_KEYS)), "weights": weights_source(settings.weights)}
    try:
        images = open_data(settings.data)
    except DownloadError as data_error:
        # Offline, name every download this stage needs at once, not one per attempt.
        if settings.weights == "imagenet":
            try:
                load_backbone(recipe)
            except DownloadError as weights_error:
                raise DownloadError(f"{data_error}; and {weights_error}") from None
        raise
    strategy, devices = distribution_strategy()
    print(
        f"extract_vgg_features: {len(images)} images, classes {', '.join(images.class_names)}; "
        f"{settings.backbone} {settings.layer} of blocks {settings.blocks}, weights {settings.weights}; "
        f"on {describe_devices(devices)}, {settings.workers} input worker(s)",
        flush=True,
    )
    with strategy.scope():
        model = load_backbone(recipe)
    weights_sha256 = weights_digest(model)
    # Finished chunks depend on every setting but workers (which changes the speed alone),
    # the weights (by their content: a file replaced under the same name is other weights),
    # the images, how many devices share each batch, and the code.
    key = {
        "params": settings.model_dump(exclude={"workers", "weights"}),
        "weights": weights_sha256,
        "images": images.identity,
        "devices": len(devices),
        "code": code_digests("extract_vgg_features"),
    }
    checkpoint = ChunkCheckpoint(args.checkpoints, key)
    started = time.perf_counter()
    features, resumed = extract_features(
        make_forward_pass(model, preprocess_function(settings.backbone), strategy),
        model.output_shape[-1],
        images,
        settings.image_size,
        settings.batch_size,
        settings.workers,
        settings.chunk_size,
        checkpoint,
    )
    seconds = time.perf_counter() - started
    names = feature_block_names(settings.layer, settings.blocks)
    widths = block_widths(model, settings.layer, names)
    save_npz(
        args.features,
        features=features,
        feature_blocks=np.array(names),
        block_widths=np.array(widths, dtype=np.int64),
        labels=images.labels,
        split=images.split,
        source=images.source,
        class_names=np.array(images.class_names),
    )
    write_json(
        args.backbone,
        {
            **recipe,
            "class_names": list(images.class_names),
            "feature_blocks": names,
            "block_widths": widths,
            "weights_sha256": weights_sha256,
        },
    )
    checkpoint.clear()
    counts = image_counts(images)
    write_run_facts(
        "extract_vgg_features",
        {
            **counts,
            "feature_dim": int(features.shape[1]),
            "devices": devices,
            "workers": settings.workers,
            "resumed_images": resumed,
            "seconds": round(seconds, 1),
            "images_per_second": round((len(images) - resumed) / seconds, 2),
        },
    )
    print(f"extract_vgg_features: wrote {args.features} {features.shape} in {seconds:.0f}s; {counts}")


if __name__ == "__main__":
    run_stage(main, quiet_tensorflow_stderr)

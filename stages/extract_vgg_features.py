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

import hashlib
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import pydantic
from pydantic import Field

from stages.shared.config import Section, StageError, read_params
from stages.shared.files import (
    DownloadError,
    atomic_path,
    download_or_stop,
    local_copy,
    local_or,
    read_npz,
    require_keys,
    save_npz,
    write_json,
)
from stages.shared.images import (
    IMAGE_SUFFIXES,
    LOCAL_WEIGHTS_DIR,
    POOLED_LAYERS,
    TOP_IMAGE_SIZE,
    TOP_LAYERS,
    WEIGHTS_KEYWORDS,
    block_widths,
    feature_block_names,
    files_under,
    is_skipped,
    load_backbone,
    prepare_image,
    preprocess_function,
    read_image_file,
    weights_digest,
    weights_source,
)
from stages.shared.runtime import (
    ResumeFolder,
    code_digests,
    describe_devices,
    distribution_strategy,
    run_stage,
    stage_args,
    write_run_facts,
)

# How to rebuild the frozen backbone for new images (``stages.commands.classify``): the settings
# that shape the features, written with the class names (a local weights file by its path).
RECIPE_KEYS = ("backbone", "weights", "layer", "blocks", "image_size")

LOCAL_DATA_DIR = Path("data/local/breast")
# MedMNIST's BreastMNIST releases: params value -> (file name, URL, MD5). The 28x28 file is
# the one every figure in the README was measured on (upscaled to image_size).
MEDMNIST_RELEASES = {
    "medmnist": (
        "breastmnist.npz",
        "https://zenodo.org/records/10519652/files/breastmnist.npz?download=1",
        "750601b1f35ba3300ea97c75c52ff8f6",
    ),
    "medmnist_224": (
        "breastmnist_224.npz",
        "https://zenodo.org/records/10519652/files/breastmnist_224.npz?download=1",
        "b56378a6eefa9fed602bb16d192d4c8b",
    ),
}
BREASTMNIST_CLASSES = ("malignant", "normal_or_benign")  # label 0, label 1
SPLITS = ("train", "val", "test")

PROGRESS_EVERY = 5  # batches between progress lines
CHUNK_SIZE = 1024  # images per checkpointed chunk: a killed run loses at most this many
PREFETCH_BATCHES = 2  # prepared batches waiting for the network, beyond one per worker

# Keys that change how fast the features come, not one byte of them: dvc.yaml leaves them
# out of the stage's params deps, so turning them reruns nothing.
SPEED_KEYS = ("workers", "chunk_size")


class Extraction(Section):
    data: local_or(LOCAL_DATA_DIR, "file or folder", *MEDMNIST_RELEASES)  # type: ignore[valid-type]
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


@dataclass(frozen=True)
class ImageSet:
    """Labelled images, read one at a time so that only a batch is ever decoded.

    ``read(i)`` returns image ``i`` as uint8 (H, W) or (H, W, 3), and may be called from
    several threads at once; ``split`` holds ``train``/``val``/``test`` per image and
    ``source`` where each image came from. ``identity`` is a digest of the images (a
    .npz file's bytes, or a folder's file names, sizes and times), so that a checkpoint
    of other images is not resumed.
    """

    read: Callable[[int], np.ndarray]
    labels: np.ndarray
    split: np.ndarray
    source: np.ndarray
    class_names: tuple[str, ...]
    identity: str

    def __len__(self) -> int:
        return len(self.labels)


# --------------------------------------------------------------------------- data
def download_breastmnist(release: str) -> Path:
    """A BreastMNIST release (``MEDMNIST_RELEASES``) from Zenodo, cached by Keras and checked
    against its MD5."""
    import keras

    name, url, md5 = MEDMNIST_RELEASES[release]
    with download_or_stop(
        f"BreastMNIST from {url}", "extract_vgg_features.data", "a .npz or an image folder", LOCAL_DATA_DIR
    ):
        # Keras tells an MD5 by its length, and caches the file in ~/.keras/datasets.
        return Path(keras.utils.get_file(name, url, file_hash=md5))


def _check_npz_split(path: Path, split: str, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Validate one split's arrays; return its labels flattened to int64 (N,)."""
    grey_or_rgb = images.ndim == 3 or (images.ndim == 4 and images.shape[-1] == 3)
    if images.dtype != np.uint8 or not grey_or_rgb:
        raise StageError(
            f"{path}: {split}_images must be uint8 (N, H, W) or (N, H, W, 3), got {images.dtype} {images.shape}"
        )
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise StageError(
            f"{path}: {split}_labels must be integers of shape (N,) or (N, 1), got {labels.dtype} {labels.shape}"
        )
    if len(labels) != len(images):
        raise StageError(f"{path}: {split}_labels has {len(labels)} labels for {len(images)} {split}_images")
    if len(labels) and not np.isin(labels, (0, 1)).all():
        raise StageError(
            f"{path}: {split}_labels must be 0 (malignant) or 1 (normal or benign), "
            f"found {sorted(set(labels.tolist()) - {0, 1})[:5]}"
        )
    return labels.astype(np.int64)


def load_npz_images(path: Path) -> ImageSet:
    """Images in MedMNIST's layout: ``{split}_images`` and ``{split}_labels`` per split.

    ``train`` is required; ``val`` and ``test`` are optional but come in pairs.
    """
    arrays = read_npz(path)
    present = [s for s in SPLITS if f"{s}_images" in arrays or f"{s}_labels" in arrays]
    splits = dict.fromkeys(["train", *present])
    require_keys(path, arrays, [f"{split}_{part}" for split in splits for part in ("images", "labels")])
    images, label_parts, split_names, sources = [], [], [], []
    for split in present:
        split_images = arrays[f"{split}_images"]
        label_parts.append(_check_npz_split(path, split, split_images, arrays[f"{split}_labels"]))
        images.extend(split_images)  # views into the uint8 arrays, not copies
        split_names += [split] * len(split_images)
        sources += [f"{split}_images[{i}]" for i in range(len(split_images))]
    if not len(arrays["train_labels"]):
        raise StageError(f"{path}: train_images is empty")
    labels = np.concatenate(label_parts)
    if len(np.unique(labels)) < 2:
        raise StageError(f"{path}: only one class (label {labels[0]}) in the labels; need both")
    with open(path, "rb") as file:
        identity = hashlib.file_digest(file, "sha256").hexdigest()
    return ImageSet(
        read=images.__getitem__,
        labels=labels,
        split=np.array(split_names),
        source=np.array(sources),
        class_names=BREASTMNIST_CLASSES,
        identity=identity,
    )


def load_image_folder(root: Path) -> ImageSet:
    """A folder with one subfolder per class (searched recursively), all of it ``train``.

    Classes are numbered in the sorted order of their folder names. Hidden files and
    folders (such as ``.DS_Store``) and what Windows and macOS leave behind
    (``Thumbs.db``, ``desktop.ini``, ``__MACOSX/``) are skipped; any other file that is
    not a PNG, JPEG, BMP or TIFF stops the stage, as does a file outside the class
    folders, an empty class folder or a single class. Every image's header is checked
    up front (``read_image_file`` of its header), so that a file that is no image stops the stage
    before the long extraction rather than in the middle of it.
    """
    entries = sorted(entry for entry in root.iterdir() if not is_skipped(entry.name))
    for entry in entries:
        if not entry.is_dir():
            raise StageError(f"{entry}: a file outside the class folders of {root}")
    class_names = tuple(entry.name for entry in entries)
    if len(class_names) < 2:
        found = ", ".join(class_names) or "none"
        raise StageError(f"{root}: only {len(class_names)} class folder(s) ({found}); need 2 or more")
    paths, labels = [], []
    for label, class_dir in enumerate(entries):
        files = files_under(class_dir)
        for file in files:
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                expected = ", ".join(IMAGE_SUFFIXES)
                raise StageError(f"{file}: unsupported file type (expected {expected})")
        if not files:
            raise StageError(f"{class_dir}: empty class folder (no images)")
        paths += files
        labels += [label] * len(files)
    listing = hashlib.sha256()
    for path in paths:
        read_image_file(path, header_only=True)
        stat = path.stat()
        listing.update(f"{path.relative_to(root).as_posix()}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return ImageSet(
        read=lambda i: read_image_file(paths[i]),
        labels=np.array(labels, dtype=np.int64),
        split=np.array(["train"] * len(paths)),
        source=np.array([p.relative_to(root).as_posix() for p in paths]),
        class_names=class_names,
        identity=listing.hexdigest(),
    )


def open_data(data: str) -> ImageSet:
    """The images named by ``extract_vgg_features.data``: a ``MEDMNIST_RELEASES`` name, or the
    name of a .npz or a folder in ``LOCAL_DATA_DIR``, where DVC tracks it as a dependency."""
    if data in MEDMNIST_RELEASES:
        return load_npz_images(download_breastmnist(data))
    path = local_copy(LOCAL_DATA_DIR, data)
    if path.is_dir():
        return load_image_folder(path)
    if path.is_file():
        if path.suffix.lower() != ".npz":
            raise StageError(f"{path}: unsupported data file; expected a .npz or a folder")
        return load_npz_images(path)
    raise StageError(f"{path}: extract_vgg_features.data not found (nor is it {' or '.join(MEDMNIST_RELEASES)})")


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
    run_stage(main)

"""The breast images that ``extract_vgg_features`` and ``find_near_copies`` both read, named by
``extract_vgg_features.data``: MedMNIST's BreastMNIST releases (downloaded once, MD5-checked),
or a local copy in ``data/local/breast/``, a ``.npz`` in MedMNIST's layout or a folder with
one subfolder of images per class. Both stages open them through ``open_data``, so they
see the same images in the same order, with the same labels, splits and sources.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydantic

from stages.shared.config import Section, StageError
from stages.shared.downloads import download_or_stop, local_copy, local_or
from stages.shared.files import read_npz, require_keys
from stages.shared.images import IMAGE_SUFFIXES, files_under, is_skipped, read_image_file

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

# The type of ``extract_vgg_features.data``: a release's name or a local copy's.
BreastData = local_or(LOCAL_DATA_DIR, "file or folder", *MEDMNIST_RELEASES)


class BreastDataSetting(Section):
    """``extract_vgg_features.data`` alone, for a stage that reads the images but not the rest
    of that section (whose other keys it ignores: the extraction checks them)."""

    model_config = pydantic.ConfigDict(extra="ignore")

    data: BreastData  # type: ignore[valid-type]


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

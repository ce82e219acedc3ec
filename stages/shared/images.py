"""Images and the backbone: reading a lab's image files, preparing an image for the
network, building the frozen VGG extractor and telling its weights apart; and the MNIST
digits' shape and classes. The extraction stage and classify-images both use them, so
new images go through exactly what the training images went through."""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from stages.shared.config import StageError, one_line
from stages.shared.files import download_or_stop, local_copy
from stages.shared.runtime import seed_everything

WEIGHTS_KEYWORDS = ("imagenet", "none")  # Keras's download, or random weights
LOCAL_WEIGHTS_DIR = Path("data/local/weights")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# What Windows and macOS leave in folders of images; skipped like hidden (dot) files.
SYSTEM_FILES = ("thumbs.db", "desktop.ini", "__macosx")
TOP_LAYERS = ("fc1", "fc2")  # Dense layers of the classifier head: need include_top and 224x224
POOLED_LAYERS = ("avg", "max")  # global pooling of the last conv block: any size from 32
TOP_IMAGE_SIZE = 224
# Only `weights: none` draws anything at random. A fixed seed, rather than params'
# `seed`, keeps a change of the KNN's fold seed from rerunning a long extraction.
RANDOM_WEIGHTS_SEED = 0


# ------------------------------------------------------------------------------- image files
# How read_image_file reads each of Pillow's modes; any other mode is refused.
GREY_MODES = ("1", "L", "LA")  # to grey: black and white as 0 and 255, alpha dropped
COLOUR_MODES = ("P", "PA", "RGB", "RGBA", "CMYK", "YCbCr")  # to RGB: the palette's colours, alpha dropped
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")  # grey, 0..65535 scaled to 0..255
OWN_RANGE_MODES = ("I", "F")  # 32-bit integer and float grey: the image's own min..max scaled to 0..255
IMAGE_MODES = GREY_MODES + COLOUR_MODES + SIXTEEN_BIT_MODES + OWN_RANGE_MODES


def read_image_file(path: Path, header_only: bool = False) -> np.ndarray | None:
    """Decode one image file to uint8 (H, W) grey or (H, W, 3) colour.

    Grey modes stay grey, with black-and-white as 0 and 255; palette, CMYK and YCbCr images
    become RGB; an alpha channel is dropped (the pixels as stored, not blended onto a
    background). 16-bit grey (common in lab TIFF and PNG) is scaled from its full range,
    0..65535, to 0..255. 32-bit integer and float grey have no full range of their own,
    so each such image is scaled from its own darkest pixel (to 0) to its brightest (to
    255), rounded; one with a single value throughout, or with NaN or infinite pixels,
    is refused. Any other mode (LAB, say) is refused, with the file and its mode, as is
    an image larger than Pillow's limit against decompression bombs.

    With ``header_only``, read the format, size and mode but no pixels, a fraction of a
    decode, and return None: a file that is no image, or of a mode refused, stops there;
    one cut short after a valid header only when decoded.
    """
    from PIL import Image

    try:
        with Image.open(path) as image:
            if image.mode not in IMAGE_MODES:
                raise StageError(
                    f"{path}: image mode {image.mode} is not read here (save it as 8- or 16-bit grey, or RGB)"
                )
            if header_only:
                return None
            image.load()  # Image.open only reads the header; this finds truncation
            if image.mode in SIXTEEN_BIT_MODES:
                pixels = np.asarray(image, dtype=np.float64) * (255 / 65535)
                return np.clip(pixels, 0, 255).astype(np.uint8)
            if image.mode in OWN_RANGE_MODES:
                return scaled_from_own_range(path, image.mode, np.asarray(image, dtype=np.float64))
            grey_or_colour = "L" if image.mode in GREY_MODES else "RGB"
            return np.asarray(image if image.mode == grey_or_colour else image.convert(grey_or_colour))
    except OSError as err:  # unreadable, truncated, or not an image at all
        raise StageError(f"{path}: cannot read image ({one_line(err)})") from None
    except Image.DecompressionBombError as err:  # not an OSError
        raise StageError(f"{path}: refused as a possible decompression bomb ({one_line(err)})") from None


def scaled_from_own_range(path: Path, mode: str, pixels: np.ndarray) -> np.ndarray:
    """float64 pixels of a 32-bit integer or float image to uint8: its lowest value to 0,
    its highest to 255, linearly, rounded to the nearest."""
    if not np.isfinite(pixels).all():
        raise StageError(f"{path}: image mode {mode} with NaN or infinite pixels; cannot scale it to 8 bits")
    low, high = pixels.min(), pixels.max()
    if low == high:
        raise StageError(f"{path}: image mode {mode} of one value ({low:g}) throughout; no range to scale to 8 bits")
    return np.rint((pixels - low) * (255 / (high - low))).astype(np.uint8)


def is_skipped(name: str) -> bool:
    """Whether a file or folder name is one that a folder of images collects by itself."""
    return name.startswith(".") or name.lower() in SYSTEM_FILES


def files_under(folder: Path) -> list[Path]:
    """The files in ``folder`` and its subfolders, sorted, but those ``is_skipped`` names."""
    return sorted(
        path
        for path in folder.rglob("*")
        if path.is_file() and not any(is_skipped(part) for part in path.relative_to(folder).parts)
    )


def prepare_image(image: np.ndarray, size: int, mode: str = "RGB") -> np.ndarray:
    """uint8 grey or RGB image -> float32 in 0..255, resized bilinearly to (size, size):
    (size, size, 3) with grey repeated to RGB, or, for ``mode`` ``"L"``, (size, size) grey."""
    from PIL import Image

    picture = Image.fromarray(image).convert(mode)
    if picture.size != (size, size):
        picture = picture.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(picture, dtype=np.float32)


# ------------------------------------------------------------------------------ the backbone
def preprocess_function(backbone: str) -> Callable[[np.ndarray], np.ndarray]:
    """The backbone's ``preprocess_input`` (RGB to BGR, ImageNet mean subtracted)."""
    import keras

    return getattr(keras.applications, backbone).preprocess_input


def build_extractor(backbone: str, weights: str, layer: str, image_size: int, blocks: Sequence[int] = (5,)):
    """A Keras model from (size, size, 3) preprocessed images to ``layer``'s features.

    ``weights`` is ``imagenet`` (downloaded by Keras), ``none`` (random, for tests
    and benchmarks) or a path to a weights file saved from the same backbone; for
    ``avg``/``max`` a file of the whole network works as well as a no-top one. For
    ``avg``/``max``, each of ``blocks`` (conv blocks 1 to 5) is pooled over the image
    at its last pooling layer, and the vectors are concatenated in that order: earlier
    blocks see finer, less ImageNet-specific patterns.
    """
    import keras

    top = layer in TOP_LAYERS
    architecture = {"vgg19": keras.applications.VGG19, "vgg16": keras.applications.VGG16}[backbone]
    shape = {"include_top": top, "input_shape": (image_size, image_size, 3)}
    if weights == "imagenet":
        with download_or_stop(
            f"the ImageNet weights of {backbone}",
            "extract_vgg_features.weights",
            f"a weights file of {backbone}",
            LOCAL_WEIGHTS_DIR,
        ):
            model = architecture(weights="imagenet", **shape)
    elif weights == "none":
        model = architecture(weights=None, **shape)
    else:
        weights_file = Path(weights)
        if not weights_file.is_file():
            raise StageError(f"{weights_file}: extract_vgg_features.weights file not found")
        model = architecture(weights=None, **shape)
        expected = f"{backbone} weights" + ("" if top else " (whole network or no-top)")
        try:
            with warnings.catch_warnings():  # Keras warns layer by layer before it raises
                warnings.simplefilter("ignore")
                model.load_weights(weights_file)
        except (ValueError, OSError) as err:
            raise StageError(
                f"{weights_file}: does not fit backbone {backbone} with layer {layer}; "
                f"expected {expected} ({one_line(err)})"
            ) from None
    if top:
        return keras.Model(model.input, model.get_layer(layer).output, name=f"{backbone}_{layer}")
    pool = {"avg": keras.layers.GlobalAveragePooling2D, "max": keras.layers.GlobalMaxPooling2D}[layer]
    pooled = [pool(name=f"block{b}_{layer}")(model.get_layer(f"block{b}_pool").output) for b in blocks]
    output = pooled[0] if len(pooled) == 1 else keras.layers.Concatenate(name="blocks")(pooled)
    return keras.Model(model.input, output, name=f"{backbone}_{layer}_blocks_{'_'.join(map(str, blocks))}")


def feature_block_names(layer: str, blocks: Sequence[int]) -> list[str]:
    """The names of the blocks that ``build_extractor``'s output holds side by side, in
    order: ``block<b>`` for a pooled layer, the layer itself (``fc1``, ``fc2``) for the top."""
    return [layer] if layer in TOP_LAYERS else [f"block{b}" for b in blocks]


def block_widths(model, layer: str, names: Sequence[str]) -> list[int]:
    """How many features each named block gives: its columns in the output, in order."""
    if layer in TOP_LAYERS:
        return [int(model.output_shape[-1])]
    return [int(model.get_layer(f"{name}_{layer}").output.shape[-1]) for name in names]


def weights_digest(model) -> str:
    """SHA-256 of the extractor's weights (shapes and float32 values, in layer order): which
    network the features came from, whatever file or download carried the weights."""
    digest = hashlib.sha256()
    for weight in model.weights:
        value = np.ascontiguousarray(np.asarray(weight.numpy(), dtype=np.float32))
        digest.update(repr(value.shape).encode() + value.tobytes())
    return digest.hexdigest()


def weights_source(weights: str) -> str:
    """What ``build_extractor`` loads for ``extract_vgg_features.weights``: its keyword, or the
    path of the local file it names (backbone.json records it, for classify-images)."""
    return weights if weights in WEIGHTS_KEYWORDS else local_copy(LOCAL_WEIGHTS_DIR, weights).as_posix()


def load_backbone(recipe: dict):
    """The extractor that ``recipe`` (the ``RECIPE_KEYS`` of params, a local weights file by
    its path, as saved in ``models/breast/backbone.json``) describes; random weights come
    from a fixed seed, so they are the same every time."""
    seed_everything(RANDOM_WEIGHTS_SEED)
    return build_extractor(
        recipe["backbone"], recipe["weights"], recipe["layer"], recipe["image_size"], recipe["blocks"]
    )


# ------------------------------------------------------------------------------------ MNIST
MNIST_NUM_CLASSES = 10
MNIST_CLASS_NAMES = tuple(str(digit) for digit in range(MNIST_NUM_CLASSES))
MNIST_IMAGE_SHAPE = (28, 28)


def mnist_model_input(images):
    """uint8 (B, 28, 28) -> float32 (B, 28, 28, 1) in [0, 1]."""
    import tensorflow as tf

    return tf.cast(images, tf.float32)[..., None] / 255.0

"""The frozen VGG backbone: building the extractor of a layer's features from ImageNet,
random or local weights, its input's preprocessing, and telling its weights apart. The
extraction stage and classify-images both build it here."""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from stages.shared.config import StageError, one_line
from stages.shared.downloads import download_or_stop, local_copy
from stages.shared.tensorflow_runtime import seed_everything

WEIGHTS_KEYWORDS = ("imagenet", "none")  # Keras's download, or random weights
LOCAL_WEIGHTS_DIR = Path("data/local/weights")
TOP_LAYERS = ("fc1", "fc2")  # Dense layers of the classifier head: need include_top and 224x224
POOLED_LAYERS = ("avg", "max")  # global pooling of the last conv block: any size from 32
TOP_IMAGE_SIZE = 224
# Only `weights: none` draws anything at random. A fixed seed, rather than params'
# `seed`, keeps a change of the KNN's fold seed from rerunning a long extraction.
RANDOM_WEIGHTS_SEED = 0


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

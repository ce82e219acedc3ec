"""Grad-CAM heat maps of the breast head: where in a scan the features that raised its
positive-class score lie (Selvaraju et al. 2017).

The score: each ensemble member's log-odds of the positive class, log p / (1 - p),
rebuilt from its logits (its last Dense layer without the softmax inside it), averaged
over the members. The logits, because a softmax probability near 0 or 1 has almost no
gradient left (float32 rounds it to 1 from a logit gap of about 17), and the ensemble
averages saturated probabilities; log-odds, because for two classes that is the positive
logit minus the other, and for more it stays the score that the positive probability
rises with. The average, because a map is linear in the score before its ReLU: the map
of the mean score is the mean of the members' maps.

The blocks: the head reads each conv block average-pooled, side by side. For block b,
with activations A (H x W x C), the map is ``sum_c G_c A[:, :, c]``, where G_c is the
gradient of the score summed over the block's positions: for average pooling, the
gradient with respect to the pooled feature c, since each position gets that divided by
H x W. (Grad-CAM's weight, the positions' mean, is G_c / (H x W): within a block, the
same map.) Each block's map, resized bilinearly to the image's size, is then its
first-order share of the score per pixel, up to one factor common to every block; the
maps are summed, so that a block weighs as much as it moves the score.
Grad-CAM's ReLU keeps what raised the score, and the map is divided by its peak.
``fc1``/``fc2`` features are refused: their Dense layers mix the positions of block 5's
map, which these maps were not tested on.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from stages.commands.model_files import load_keras_model, model_inputs, stage_paths
from stages.shared.backbone import TOP_LAYERS
from stages.shared.config import PARAMS_FILE, ParamsError, Section, StageError, read_params
from stages.shared.images import read_image_file
from stages.shared.predictions import NAMED_POSITIVE_CLASS
from stages.shared.runner import atomic_path

POSITIVE_CLASS_KEY = "positive_class.breast"  # the one key every breast stage reads
COLOUR_MAP = "jet"  # Grad-CAM's usual colours: blue (nothing) to red (the peak)
OPACITY = 0.5  # of the colour at the peak; a pixel without heat shows the scan unchanged


class PositiveClassParams(Section):
    positive_class: dict[str, str | None]


def positive_class(class_names: Sequence[str], params: Path = PARAMS_FILE) -> int:
    """The index of the class whose score the maps show: the one that ``POSITIVE_CLASS_KEY``
    names; with null, ``malignant`` when the data has it, else the second class."""
    chosen = read_params(PositiveClassParams, params).positive_class.get("breast")
    if chosen is None:
        return class_names.index(NAMED_POSITIVE_CLASS) if NAMED_POSITIVE_CLASS in class_names else 1
    if chosen not in class_names:
        raise ParamsError(
            f"{params}: {POSITIVE_CLASS_KEY}: {chosen!r} is not a class of the breast models "
            f"(their classes: {', '.join(class_names)}); name one of them, or null"
        )
    return list(class_names).index(chosen)


def member_logits_model(head):
    """A Keras model from the head's input to its members' logits, (B, members, classes): the
    head cloned with the softmax of each member's last Dense layer left out, its weights copied.

    ``train_head`` exports members that are Keras models of their own, averaged (or one,
    alone); the clone's members are found as the nested models it calls.
    """
    import keras

    members, softmax_layers = [], []

    def without_softmax(layer):
        config = layer.get_config()
        if isinstance(layer, keras.layers.Dense) and config.get("activation") == "softmax":
            config["activation"] = "linear"
            softmax_layers.append(layer.name)
        return layer.__class__.from_config(config)

    def call_and_keep_members(layer, *args, **kwargs):
        outputs = layer(*args, **kwargs)
        if isinstance(layer, keras.Model):
            members.append(outputs)
        return outputs

    clone = keras.models.clone_model(
        head, clone_function=without_softmax, call_function=call_and_keep_members, recursive=True
    )
    clone.set_weights(head.get_weights())
    if not members or len(softmax_layers) != len(members):
        raise StageError(
            f"--heatmaps: the head is not an ensemble of softmax heads as train_head writes them "
            f"({len(members)} member model(s), {len(softmax_layers)} softmax layer(s))"
        )
    stacked = keras.layers.Concatenate(axis=1)([keras.layers.Reshape((1, -1))(logits) for logits in members])
    return keras.Model(clone.input, stacked, name="member_logits")


class Head(NamedTuple):
    """What the maps differentiate: ``train_head``'s saved ``model``, the ``blocks`` it reads
    and their ``columns`` in the backbone's features, and the index of the ``positive`` class."""

    model: Any
    blocks: list[str]
    columns: np.ndarray
    positive: int


def load_head(recipe: dict, recipe_path: Path) -> Head:
    """``train_head``'s model, whose Grad-CAM the maps are, whichever classifier gives the
    probabilities: refused in one line when it is missing or reads ``fc1``/``fc2`` features."""
    if recipe["layer"] in TOP_LAYERS:
        raise StageError(
            f"--heatmaps: the breast models read {recipe['layer']} features ({recipe_path}), whose Dense layers "
            f"mix the positions of block 5's map; the heat maps are made for pooled conv blocks only "
            f"(extract_vgg_features.layer avg or max)"
        )
    path = stage_paths("train_head")["model"]
    if not path.is_file():
        raise StageError(
            f"--heatmaps: {path}: not found; the heat maps are the Grad-CAM of train_head's model (the KNN has "
            f"no gradient): run `dvc repro train_head` (or `dvc pull`) first"
        )
    blocks, columns = model_inputs("train_head", recipe, recipe_path)
    return Head(load_keras_model(path), blocks, columns, positive_class(recipe["class_names"]))


class GradCam:
    """The Grad-CAM maps of the ``head``'s positive-class score (see the module docstring) for
    batches of prepared images (float 0..255, as ``prepare_image`` gives them). ``backbone``:
    the rebuilt extractor, whose output holds every extracted block side by side."""

    def __init__(self, backbone, preprocess, head: Head):
        import keras

        activations = [backbone.get_layer(f"{block}_pool").output for block in head.blocks]
        self.activations_and_features = keras.Model(backbone.inputs, [*activations, backbone.output])
        self.member_logits = member_logits_model(head.model)
        self.preprocess, self.columns, self.positive, self.blocks = preprocess, head.columns, head.positive, head.blocks

    def scores(self, logits):
        """Each image's log-odds of the positive class, averaged over the members."""
        import tensorflow as tf

        positive = logits[..., self.positive]
        others = tf.concat([logits[..., : self.positive], logits[..., self.positive + 1 :]], axis=-1)
        return tf.reduce_mean(positive - tf.reduce_logsumexp(others, axis=-1), axis=1)

    def maps(self, batch: np.ndarray) -> np.ndarray:
        """float32 (B, size, size) in 0..1: each image's map, divided by its peak (all zeros
        when nothing in the image raised the score)."""
        import tensorflow as tf

        images = tf.constant(self.preprocess(np.array(batch, dtype=np.float32)))  # a copy: it works in place
        with tf.GradientTape() as tape:
            *activations, features = self.activations_and_features(images, training=False)
            logits = self.member_logits(tf.gather(features, self.columns, axis=1), training=False)
            score = tf.reduce_sum(self.scores(logits))  # images do not interact: one gradient for all
        gradients = tape.gradient(score, activations)
        size = images.shape[1:3]
        combined = 0
        for block, gradient in zip(activations, gradients):
            weights = tf.reduce_sum(gradient, axis=(1, 2))  # (B, C): for average pooling, d score / d pooled
            block_map = tf.einsum("bhwc,bc->bhw", block, weights)[..., None]
            combined += tf.image.resize(block_map, size, method="bilinear")[..., 0]
        heat = tf.nn.relu(combined)
        return tf.math.divide_no_nan(heat, tf.reduce_max(heat, axis=(1, 2), keepdims=True)).numpy()


def overlay(scan: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3): ``heat`` (0..1, the network's square input) laid over the scan in
    ``COLOUR_MAP``'s colours, the more opaque the hotter; a grey scan becomes RGB. Drawn at
    the scan's size, or, for a scan smaller than the map (BreastMNIST's 28 px), at the
    map's: the scan enlarged, bilinearly as for the network, until its shorter side is."""
    import matplotlib
    from PIL import Image

    picture = Image.fromarray(scan).convert("RGB")
    scale = max(1.0, max(heat.shape) / min(picture.size))
    if scale > 1:
        enlarged = (round(picture.width * scale), round(picture.height * scale))
        picture = picture.resize(enlarged, Image.Resampling.BILINEAR)
    resized = Image.fromarray(np.asarray(heat, dtype=np.float32)).resize(picture.size, Image.Resampling.BILINEAR)
    heat = np.clip(np.asarray(resized), 0, 1)[..., None]
    colours = matplotlib.colormaps[COLOUR_MAP](heat[..., 0])[..., :3] * 255
    blended = (1 - OPACITY * heat) * np.asarray(picture, dtype=np.float32) + OPACITY * heat * colours
    return np.round(blended).astype(np.uint8)


def png_bytes(image: np.ndarray) -> bytes:
    """A uint8 image as PNG bytes (to embed in a page, or to write)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def heatmap_paths(folder: Path, files: Sequence[Path]) -> dict[Path, Path]:
    """Where each image's map goes: inside ``folder``, its path below the deepest folder that
    every image lies in, with ``.png`` added to its name (``scans/a/x.jpg`` and
    ``scans/b/x.jpg`` give ``a/x.jpg.png`` and ``b/x.jpg.png``). Different images get
    different names; a file named twice, one name."""
    absolute = [Path(os.path.abspath(file)) for file in files]
    if not absolute:
        return {}
    common = Path(os.path.commonpath([path.parent for path in absolute]))
    return {file: folder / path.parent.relative_to(common) / f"{path.name}.png" for file, path in zip(files, absolute)}


class Overlays:
    """An ``after_batch`` hook: each classified image's map laid over its scan, as read from
    its file, made once for each of ``uses`` (the PNG files, the page). Each use gets
    ``(file, scan, overlaid, row)``, where ``row`` is the image's values in the table."""

    def __init__(self, gradcam: GradCam, uses: Sequence[Callable[[Path, np.ndarray, np.ndarray, dict], None]]):
        self.gradcam, self.uses = gradcam, uses

    def __call__(self, names: Sequence[Path], batch: np.ndarray, rows: dict) -> None:
        for index, (name, heat) in enumerate(zip(names, self.gradcam.maps(batch))):
            scan = read_image_file(name)
            overlaid = overlay(scan, heat)
            row = {column: values[index] for column, values in rows.items()}
            for use in self.uses:
                use(name, scan, overlaid, row)


class HeatmapWriter:
    """Writes each classified image's map over its scan (a use of ``Overlays``) to its
    ``heatmap_paths`` PNG."""

    def __init__(self, folder: Path, files: Sequence[Path]):
        self.paths, self.written = heatmap_paths(folder, files), 0

    def __call__(self, name: Path, _scan: np.ndarray, overlaid: np.ndarray, _row: dict) -> None:
        with atomic_path(self.paths[name]) as tmp:
            tmp.write_bytes(png_bytes(overlaid))
        self.written += 1

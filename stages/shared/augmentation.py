"""``RandomAffine``: the original's rotation, shift and zoom as one Keras preprocessing layer.

Kept apart from the stage module because defining a Keras layer imports TensorFlow,
and the stage checks its params before it pays for that import.

Why not Keras's ``RandomRotation``, ``RandomTranslation`` and ``RandomZoom``:
  - each of them resamples the image, so the three blur it three times and cut off
    corners that a later step would have brought back; the original's ImageDataGenerator
    composes one matrix and resamples once, as this layer does;
  - they draw from a seed-generator variable, a stateful op, and TensorFlow's op
    determinism then runs the whole ``tf.data`` map on one thread. This layer takes
    the seed as an argument (stateless random ops), so the map runs in parallel and
    stays reproducible, and a resumed run needs no saved random state;
  - one resampling costs about a third of three. On two CPU cores the pipeline alone
    delivers about 50,000 images/s this way against 11,000 with Keras's layers
    (``bench/bench_mnist_pipeline.py``): plenty for the CPU, which trains about 600
    images/s, and room to feed a GPU.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf


class RandomAffine(keras.layers.Layer):
    """Rotate, shift and zoom each image of a batch by its own random amount.

    Args:
        rotation_degrees: angles are drawn uniformly from [-rotation_degrees, rotation_degrees].
        shift: horizontal and vertical shifts are drawn uniformly from [-shift, shift], as
            fractions of the image's width and height.
        zoom: the scale is drawn uniformly from [1 - zoom, 1 + zoom], the same for both
            axes, so digits keep their aspect ratio.

    Called as ``layer(images, seed)`` on float images of shape (batch, height, width,
    channels), where ``seed`` is a shape-(2,) integer tensor: the same seed gives the
    same transforms. Pixels that come from outside the image are black (0), MNIST's
    background. Interpolation is bilinear.
    """

    def __init__(self, rotation_degrees: float, shift: float, zoom: float, **kwargs):
        # float32 whatever the global policy: under mixed precision the images would
        # otherwise be cast to float16 before resampling.
        super().__init__(dtype="float32", **kwargs)
        self.max_angle = math.radians(rotation_degrees)
        self.max_shift = shift
        self.max_zoom = zoom

    def call(self, images, seed):
        shape = tf.shape(images)
        height = tf.cast(shape[1], tf.float32)
        width = tf.cast(shape[2], tf.float32)
        # One draw of four numbers in [-1, 1] per image: angle, x shift, y shift, zoom.
        draws = tf.random.stateless_uniform([shape[0], 4], seed=seed, minval=-1.0, maxval=1.0)
        angle = draws[:, 0] * self.max_angle
        shift_x = draws[:, 1] * self.max_shift * width
        shift_y = draws[:, 2] * self.max_shift * height
        scale = 1.0 + draws[:, 3] * self.max_zoom
        # The matrix maps each output pixel to the input point it samples:
        # input = scale * rotate(output - centre) + centre + shift.
        cos, sin = scale * tf.cos(angle), scale * tf.sin(angle)
        centre_x, centre_y = (width - 1) / 2, (height - 1) / 2
        zeros = tf.zeros_like(cos)
        transforms = tf.stack(
            [
                cos,
                -sin,
                centre_x + shift_x - cos * centre_x + sin * centre_y,
                sin,
                cos,
                centre_y + shift_y - sin * centre_x - cos * centre_y,
                zeros,
                zeros,
            ],
            axis=1,
        )
        return keras.ops.image.affine_transform(
            images, transforms, interpolation="bilinear", fill_mode="constant", fill_value=0
        )

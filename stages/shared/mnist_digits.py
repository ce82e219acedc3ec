"""MNIST's digits as the network takes them: their shape and classes, and their scaling.
The training stage and classify-images share them; the augmentation is in augmentation.py."""

from __future__ import annotations

MNIST_NUM_CLASSES = 10
MNIST_CLASS_NAMES = tuple(str(digit) for digit in range(MNIST_NUM_CLASSES))
MNIST_IMAGE_SHAPE = (28, 28)


def mnist_model_input(images):
    """uint8 (B, 28, 28) -> float32 (B, 28, 28, 1) in [0, 1]."""
    import tensorflow as tf

    return tf.cast(images, tf.float32)[..., None] / 255.0

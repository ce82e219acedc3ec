"""Seeding, so that the same params on the same machine give the same outputs."""

from __future__ import annotations


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and the Keras backend, and ask TensorFlow for deterministic ops.

    Same params on the same machine then give the same metrics. Determinism is a
    setting of the whole process, so ``deterministic=False`` turns it off again
    (TensorFlow has no public call for that; Keras reads the same private flag).
    """
    import keras
    import tensorflow as tf
    from tensorflow.python.framework import config as tf_config

    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    else:
        tf_config.disable_op_determinism()

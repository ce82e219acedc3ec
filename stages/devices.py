"""The devices a model runs on: one, or several under TensorFlow's MirroredStrategy."""

from __future__ import annotations

import os
from typing import Any


def device_names() -> list[str]:
    """The devices a model runs on: the GPUs, else the CPU's logical devices (several
    only when the process split the CPU before TensorFlow started, with
    ``tf.config.set_logical_device_configuration``: how the tests run the
    several-device path without GPUs)."""
    import tensorflow as tf

    return [device.name for device in tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")]


def distribution_strategy() -> tuple[Any, list[str]]:
    """Where a model runs, as ``(strategy, device names)``: a MirroredStrategy over
    ``device_names()`` when there are several, else TensorFlow's default strategy, one device."""
    import tensorflow as tf

    devices = device_names()
    if len(devices) > 1:
        return tf.distribute.MirroredStrategy(devices), devices
    return tf.distribute.get_strategy(), devices[:1]


def describe_devices(devices: list[str]) -> str:
    """The devices a model runs on, for a person: ``CPU:0 (2 cores)``, ``GPU:0, GPU:1 (NVIDIA A100)``."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    kinds = sorted({tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus})
    return f"{', '.join(d.removeprefix('/device:') for d in devices)} ({', '.join(kinds) or f'{os.cpu_count()} cores'})"

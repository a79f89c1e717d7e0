"""Choosing a tf.distribute strategy and the dtype policy."""

from __future__ import annotations

import json
import os

import keras
import tensorflow as tf


def cluster_from_env() -> dict | None:
    """The TF_CONFIG cluster when it describes more than one task, else None."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return None
    config = json.loads(raw)
    cluster = config.get("cluster", {})
    tasks = sum(len(v) for v in cluster.values())
    return config if tasks > 1 else None


def make_strategy(name: str = "auto") -> tf.distribute.Strategy:
    """Builds a strategy.

    Args:
      name: "auto" (MultiWorkerMirroredStrategy when TF_CONFIG describes a
        cluster, else MirroredStrategy over all local GPUs, or the CPU when
        there are none), "mirrored", "multi_worker", "one_device" or "tpu"
        (TPUClusterResolver from the environment).
    """
    if name == "auto":
        name = "multi_worker" if cluster_from_env() else "mirrored"
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    if name == "one_device":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        if gpus:
            return tf.distribute.MirroredStrategy([d.name for d in gpus])
        cpus = tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in cpus])
    raise ValueError(f"Unknown strategy {name!r}.")


def set_precision(precision: str) -> None:
    """Sets the global Keras dtype policy (float32, mixed_float16, mixed_bfloat16)."""
    keras.mixed_precision.set_global_policy(precision)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes checkpoints and summaries."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    return resolver.task_type == "chief" or (
        resolver.task_type == "worker" and resolver.task_id == 0
        and "chief" not in resolver.cluster_spec().as_dict())

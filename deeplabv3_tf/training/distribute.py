"""Choosing a tf.distribute strategy and the dtype policy."""

from __future__ import annotations

import json
import os

import keras
import tensorflow as tf

from deeplabv3_tf.core.precision import check_precision


def cluster_from_env() -> dict | None:
    """The TF_CONFIG cluster when it describes more than one task, else None."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return None
    config = json.loads(raw)
    cluster = config.get("cluster", {})
    tasks = sum(len(v) for v in cluster.values())
    return config if tasks > 1 else None


# TensorFlow's coordination service declares a worker dead when it has not heard
# its heartbeat for this long (TensorFlow's default: 10 s), and stops every worker.
# A worker whose machine is loaded, or that is writing a checkpoint after a
# SIGTERM, can miss 10 s of heartbeats while alive; a dead one is still found.
HEARTBEAT_TIMEOUT_MS = 60_000


def _configure_coordination_service() -> None:
    """What MultiWorkerMirroredStrategy configures itself (a standalone service led
    by the chief, or worker 0, coordinating the chief and workers), with
    HEARTBEAT_TIMEOUT_MS; the strategy keeps a service configured before it."""
    from tensorflow.python.eager import context
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2

    if context.context().coordination_service is not None:
        return
    cluster = tf.distribute.cluster_resolver.TFConfigClusterResolver().cluster_spec()
    jobs = [job for job in ("chief", "worker") if job in cluster.jobs]
    leader = "chief" if "chief" in cluster.jobs else "worker"
    context.context().configure_coordination_service(
        service_type="standalone", service_leader=f"/job:{leader}/replica:0/task:0",
        heartbeat_timeout_in_ms=HEARTBEAT_TIMEOUT_MS,
        coordinated_jobs=[coordination_config_pb2.CoordinatedJob(
            name=job, num_tasks=cluster.num_tasks(job)) for job in jobs])


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
        _configure_coordination_service()
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
    """Sets the global Keras dtype policy (float32, mixed_float16, mixed_bfloat16).

    Raises:
      UnsupportedPrecisionError: mixed_bfloat16 where this CPU has no bfloat16
        kernels (`precision.check_precision`).
    """
    check_precision(precision)
    keras.mixed_precision.set_global_policy(precision)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes checkpoints and summaries."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    return resolver.task_type == "chief" or (
        resolver.task_type == "worker" and resolver.task_id == 0
        and "chief" not in resolver.cluster_spec().as_dict())

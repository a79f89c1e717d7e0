"""Replica consistency on 2 logical CPU devices, and 2-worker training.

Logical devices must be configured before TensorFlow initialises, so each
case runs in its own Python process.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from deeplabv3_tf.data.tfrecord_builders.voc import build_voc
from deeplabv3_tf.training.distribute import HEARTBEAT_TIMEOUT_MS
from deeplabv3_tf.data.synthetic import write_voc_dataset
from tests.helpers import ROOT


ONE_STEP = textwrap.dedent("""
    import dataclasses, sys
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from deeplabv3_tf.configs.experiment import override
    from deeplabv3_tf.configs.recipes import tiny_voc
    from deeplabv3_tf.training.optimizer import make_optimizer
    from deeplabv3_tf.model.blocks import BatchNorm
    from deeplabv3_tf.runs import build_model
    from deeplabv3_tf.training.train_step import make_train_step

    experiment = override(tiny_voc(), ["model.dropout_rate=0.0", "train.batch_size=4",
                                       "train.weight_decay=1e-3", "train.learning_rate=0.1",
                                       *sys.argv[2:]])
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (4, 49, 53, 3)).astype("float32")
    labels = rng.integers(0, 21, (4, 49, 53)).astype("int32")
    # Replica 0's half is almost all ignored, replica 1's hardly at all.
    labels[:2, :45] = 255
    labels[2:, :2] = 255
    results = {}
    for name, devices in (("one", ["/cpu:0"]), ("two", ["/cpu:0", "/cpu:1"])):
        strategy = tf.distribute.MirroredStrategy(devices)
        exp = experiment
        keras.utils.set_random_seed(1)
        with strategy.scope():
            model = build_model(exp, BatchNorm(synchronized=len(devices) > 1))
            optimizer = make_optimizer(exp.train)
            optimizer.build(model.trainable_variables)
        initial = [w.numpy() for w in model.weights]
        step = make_train_step(model, optimizer, strategy, exp)
        batch = tf.data.Dataset.from_tensors({"image": images, "label": labels})
        batch = next(iter(strategy.experimental_distribute_dataset(batch)))
        loss, matrix, stop = step(batch)
        assert float(stop) == 0.0
        results[name] = {"loss": float(loss), "matrix": matrix.numpy().tolist(),
                         "replicas": strategy.num_replicas_in_sync,
                         "weights": [w.numpy() for w in model.weights]}
    arrays = {f"{n}_{i}": w for n in results for i, w in enumerate(results[n]["weights"])}
    arrays.update({f"init_{i}": w for i, w in enumerate(initial)})
    np.savez(sys.argv[1], **arrays)
    print("RESULT", {n: {k: v for k, v in r.items() if k != "weights"} for n, r in results.items()})
""")


@pytest.mark.numerics
@pytest.mark.parametrize("overrides", [
    [], ["train.top_k_percent_pixels=0.3", "model.decoder='deeplabv3plus'",
         "model.decoder_filters=16", "model.decoder_low_level_filters=8"]],
    ids=["deeplabv3", "deeplabv3plus_hard_pixels"])
def test_two_replicas_with_sync_bn_match_one_replica(tmp_path, overrides):
    # With hard-pixel mining each image keeps its own hardest pixels: the global
    # normaliser (their count) is the same however the batch is split.
    out = tmp_path / "weights.npz"
    result = subprocess.run([sys.executable, "-c", ONE_STEP, str(out), *overrides], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(l for l in result.stdout.splitlines() if l.startswith("RESULT"))
    summary = eval(line[len("RESULT "):])
    assert summary["one"]["replicas"] == 1 and summary["two"]["replicas"] == 2
    assert summary["one"]["loss"] == pytest.approx(summary["two"]["loss"], rel=1e-5)
    # Batches of 4 and of 2 run other kernel blockings: a pixel whose top two
    # logits tie to round-off may change class, nothing more.
    one_matrix, two_matrix = np.array(summary["one"]["matrix"]), np.array(summary["two"]["matrix"])
    assert one_matrix.sum() == two_matrix.sum() > 0
    assert np.abs(one_matrix - two_matrix).sum() <= 2 * 0.001 * one_matrix.sum()
    weights = np.load(out)
    count = len([k for k in weights if k.startswith("one_")])
    assert count > 50
    moved = 0
    for i in range(count):
        one, two, init = weights[f"one_{i}"], weights[f"two_{i}"], weights[f"init_{i}"]
        # Both started from the same weights; the step moved them far more than
        # the two runs differ. The runs' gradients (and synchronised batch
        # statistics) are the same sums over the global batch, added in another
        # order: each differs from the exact sum by at most gamma_n ~ 6e-4 (n ~ 1e4
        # pixels) of its terms' magnitudes, far less than the step they make.
        # Per-replica normalisation or unsynchronised statistics move it by tens
        # of percent (replica 0's half is almost all ignored pixels).
        step = np.abs(init - one).max()
        assert np.abs(two - one).max() <= 1e-2 * step, f"weight {i}"
        moved += step > 0
    assert moved > count // 2


MULTI_WORKER = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    from deeplabv3_tf.configs.experiment import override
    from deeplabv3_tf.configs.recipes import tiny_voc
    from deeplabv3_tf.training.trainer import train
    steps = int(sys.argv[4])
    experiment = override(tiny_voc(), [
        f"data.train_records={sys.argv[1]!r}", "data.val_records=''", f"train.steps={steps}",
        "train.batch_size=4", f"train.checkpoint_every={steps}", "train.log_every=1",
        "train.strategy='multi_worker'", "data.crop_size=(49, 49)", "model.dropout_rate=0.0"])
    result = train(experiment, sys.argv[2], progress=False, log=lambda m: None)
    np.savez(sys.argv[3], *[w.numpy() for w in result.model.weights])
    print("STEP", result.step, "PREEMPTED", result.preempted)
    from tensorflow.python.eager import context
    print("HEARTBEAT", context.context().coordination_service.heartbeat_timeout_in_ms)
""")


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _start_workers(tmp_path, steps):
    info = write_voc_dataset(str(tmp_path / "data"), num_train=8, num_val=1, with_sbd=False,
                             size_range=(50, 70))
    build_voc(info["voc_dir"], str(tmp_path / "records"), splits=("train",), progress=False,
              log=lambda _: None)
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    processes = []
    for index in range(2):
        env = dict(os.environ, TF_CONFIG=json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": index}}))
        processes.append(subprocess.Popen(
            [sys.executable, "-c", MULTI_WORKER, str(tmp_path / "records" / "train-*"),
             str(tmp_path / "run"), str(tmp_path / f"w{index}.npz"), str(steps)],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return processes


def _finish(processes, tmp_path):
    outputs = [p.communicate(timeout=600) for p in processes]
    for p, (out, err) in zip(processes, outputs):
        assert p.returncode == 0, err[-3000:]
    first, second = np.load(tmp_path / "w0.npz"), np.load(tmp_path / "w1.npz")
    assert len(first.files) == len(second.files) > 50
    for key in first.files:
        np.testing.assert_array_equal(first[key], second[key])
    return [out for out, _ in outputs]


def test_two_workers_train_and_agree(tmp_path):
    outputs = _finish(_start_workers(tmp_path, 3), tmp_path)
    assert all("STEP 3 PREEMPTED False" in out for out in outputs)
    # The coordination service waits HEARTBEAT_TIMEOUT_MS, not TensorFlow's 10 s, for a
    # worker's heartbeat before it stops the cluster.
    assert all(f"HEARTBEAT {HEARTBEAT_TIMEOUT_MS}\n" in out for out in outputs)
    # The chief wrote the checkpoint and the experiment; the worker cleaned up.
    assert (tmp_path / "run" / "experiment.json").exists()
    assert list((tmp_path / "run").glob("ckpt-3.index"))
    assert not list((tmp_path / "run").glob(".worker-*"))


def test_sigterm_to_one_worker_stops_both_at_the_same_step(tmp_path):
    processes = _start_workers(tmp_path, 400)
    events = tmp_path / "run" / "train"
    deadline = time.time() + 300
    while time.time() < deadline and not (events.exists() and list(events.iterdir())):
        time.sleep(0.05)
    time.sleep(0.5)  # well inside the 400 steps
    processes[1].send_signal(signal.SIGTERM)
    outputs = _finish(processes, tmp_path)
    steps = {int(out.split("STEP ")[1].split()[0]) for out in outputs}
    assert len(steps) == 1 and all("PREEMPTED True" in out for out in outputs)
    (step,) = steps
    assert 1 <= step < 400
    assert list((tmp_path / "run").glob(f"ckpt-{step}.index"))

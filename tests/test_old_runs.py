"""A run directory written by version 0.1.0 (tests/fixtures/run_0_1_0) still loads,
trains on, evaluates and exports with the current code."""

import hashlib
import json
import os
import shutil

import numpy as np
import tensorflow as tf

from deeplabv3_tf.configs.experiment import override
from deeplabv3_tf.evaluation.evaluate import evaluate_run
from deeplabv3_tf.model.blocks import BatchNorm
from deeplabv3_tf.runs import build_model, latest_checkpoint, load_experiment, restore_model
from deeplabv3_tf.training.trainer import train
from tests.helpers import ROOT, run_tool

FIXTURE = os.path.join(ROOT, "tests", "fixtures", "run_0_1_0")


def _old_run(tmp_path) -> str:
    run_dir = str(tmp_path / "run")
    shutil.copytree(FIXTURE, run_dir)
    return run_dir


def _digest(array) -> str:
    array = np.ascontiguousarray(array)
    return f"{array.dtype}{array.shape}" + hashlib.sha256(array.tobytes()).hexdigest()


def test_old_experiment_moves_batch_norm_choices_out_of_the_model(tmp_path):
    with open(os.path.join(FIXTURE, "experiment.json")) as f:
        written = json.load(f)
    assert written["model"]["freeze_bn"] is True and "sync_bn" in written["model"]
    experiment = load_experiment(_old_run(tmp_path))
    assert experiment.train.freeze_bn is True
    assert not hasattr(experiment.model, "freeze_bn")
    # Saved again, it is the current format, and reads back the same.
    assert "freeze_bn" not in experiment.to_dict()["model"]


def test_old_checkpoint_restores_every_weight_bitwise(tmp_path):
    run_dir = _old_run(tmp_path)
    experiment = load_experiment(run_dir)
    model = build_model(experiment, BatchNorm(frozen=experiment.train.freeze_bn))
    prefix = latest_checkpoint(run_dir)
    restore_model(model, prefix)  # every model variable must find its value
    # A variable is saved once, under the first path to it in the object graph
    # (a head's kernel under the optimizer's list of variables): look everywhere.
    reader = tf.train.load_checkpoint(prefix)
    stored = {_digest(reader.get_tensor(key)) for key in reader.get_variable_to_shape_map()}
    restored = [_digest(v.numpy()) for v in model.weights]
    assert len(restored) > 50
    assert all(d in stored for d in restored)


def test_old_run_trains_on_evaluates_and_exports(tmp_path, trained_run):
    run_dir = _old_run(tmp_path)
    records = trained_run["records_dir"]
    experiment = override(load_experiment(run_dir), [
        f"data.train_records={os.path.join(records, 'train-*')!r}",
        f"data.val_records={os.path.join(records, 'val-*')!r}", "train.steps=4"])
    result = train(experiment, run_dir, progress=False, log=lambda _: None)
    assert result.step == 4 and result.history[0]["step"] == 3  # resumed after step 2
    assert latest_checkpoint(run_dir).endswith("ckpt-4")
    # Frozen BatchNorm stayed frozen: its moving statistics are the checkpoint's.
    reader = tf.train.load_checkpoint(os.path.join(run_dir, "ckpt-2"))
    moving = {_digest(reader.get_tensor(k)) for k in reader.get_variable_to_shape_map()
              if "moving_mean" in k}
    assert all(_digest(v.numpy()) in moving for v in result.model.weights
               if "moving_mean" in v.path)

    results = evaluate_run(run_dir, str(tmp_path / "eval"), records=trained_run["val_records"],
                           progress=False, log=lambda _: None)
    assert set(results) == {"os16", "os8", "os8_ms_flip"}
    assert all(0 <= r["miou"] <= 1 for r in results.values())

    exported = run_tool("tools/export.py", f"--model_dir={run_dir}",
                        f"--export_dir={tmp_path / 'export'}", "--scales=1.0", "--noflip")
    assert exported.returncode == 0, exported.stderr[-3000:]
    loaded = tf.saved_model.load(exported.stdout.strip().splitlines()[-1])
    image = tf.zeros([1, 37, 41, 3], tf.uint8)
    assert loaded.signatures["serving_default"](images=image)["semantic"].shape == (1, 37, 41)

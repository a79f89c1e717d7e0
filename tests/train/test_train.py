"""Training: learning, precision, failure, kill-and-resume, pretraining and initialisation."""

import dataclasses
import glob
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from deeplabv3_tf.data import make_dataset
from deeplabv3_tf.evaluation.evaluate import evaluate_model
from deeplabv3_tf.data.tfrecord_builders.classification import build_classification
from deeplabv3_tf.data.tfrecord_builders.voc import build_voc
from deeplabv3_tf.runs import load_experiment
from deeplabv3_tf.configs.experiment import override
from deeplabv3_tf.configs.recipes import tiny_jft, tiny_voc
from deeplabv3_tf.model import build_deeplabv3
from deeplabv3_tf.runs import initialize_from_run
from deeplabv3_tf.data.synthetic import write_voc_dataset
from deeplabv3_tf.training.trainer import train
from tests.data.fixtures import write_classification
from tests.helpers import ROOT, skip_without_kernels

QUIET = dict(progress=False, log=lambda _: None)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    root = tmp_path_factory.mktemp("voc")
    info = write_voc_dataset(str(root / "data"), num_train=40, num_val=10, with_sbd=False,
                             size_range=(80, 112), max_objects=2)
    build_voc(info["voc_dir"], str(root / "records"), splits=("train", "val"), **QUIET)
    return str(root / "records" / "train-*"), str(root / "records" / "val-*")


def _experiment(records, *assignments):
    train_records, val_records = records
    return override(tiny_voc(), [f"data.train_records={train_records!r}",
                                 f"data.val_records={val_records!r}", *assignments])


def test_tiny_recipe_learns(records, tmp_path):
    experiment = _experiment(records, "train.steps=80", "train.log_every=10",
                             "data.crop_size=(81, 81)")
    result = train(experiment, str(tmp_path / "run"), **QUIET)
    keras.utils.set_random_seed(experiment.train.seed)
    untrained = evaluate_model(build_deeplabv3(experiment.model),
                               make_dataset(records[1], training=False), 21)
    losses = [h["loss"] for h in result.history]
    assert len(losses) == 8 and losses[-1] < 0.6 * losses[0]
    assert result.history[-1]["train_miou"] > 2 * result.history[0]["train_miou"]
    assert result.evaluation["miou"] > 0.15
    assert result.evaluation["miou"] > 3 * untrained["miou"]
    assert result.history[-1]["learning_rate"] < result.history[0]["learning_rate"]
    assert os.path.exists(tmp_path / "run" / "experiment.json")
    assert glob.glob(str(tmp_path / "run" / "train" / "events.out.tfevents.*"))
    assert glob.glob(str(tmp_path / "run" / "val" / "events.out.tfevents.*"))
    assert tf.train.latest_checkpoint(str(tmp_path / "run")).endswith("ckpt-80")


@pytest.mark.parametrize("precision", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_steps(records, tmp_path, precision, dtype_policy):
    skip_without_kernels(precision)
    experiment = _experiment(records, "train.steps=3", "train.log_every=1",
                             f"train.precision={precision!r}", "data.val_records=''",
                             "data.crop_size=(49, 49)")
    result = train(experiment, str(tmp_path / "run"), **QUIET)
    assert all(np.isfinite(h["loss"]) for h in result.history)
    assert all(v.dtype == "float32" for v in result.model.weights if "seed" not in v.path)
    assert result.model.get_layer("aspp_project_conv").compute_dtype == precision.split("_")[1]
    if precision == "mixed_float16":
        assert result.history[-1]["loss_scale"] > 1


def test_non_finite_loss_stops_and_keeps_last_checkpoint(records, tmp_path):
    model_dir = str(tmp_path / "run")
    good = _experiment(records, "train.steps=2", "train.checkpoint_every=1",
                       "data.val_records=''", "data.crop_size=(49, 49)")
    train(good, model_dir, **QUIET)
    before = sorted(os.listdir(model_dir))
    bad = dataclasses.replace(good, train=dataclasses.replace(
        good.train, steps=4, class_weights=(float("inf"),) * 21))
    with pytest.raises(FloatingPointError, match="at step 3.*ckpt-2"):
        train(bad, model_dir, **QUIET)
    assert sorted(os.listdir(model_dir)) == before
    assert tf.train.latest_checkpoint(model_dir).endswith("ckpt-2")


TRAIN_CMD = ["tools/train.py", "--experiment=tiny_voc", "--deterministic_ops", "--noprogress",
             "--steps=24", "--set=train.checkpoint_every=8", "--set=train.log_every=4",
             "--set=data.crop_size=(65,65)", "--set=train.eval_every=0"]


def _train_cmd(records, model_dir):
    return [sys.executable, *TRAIN_CMD, f"--train_records={records[0]}", "--val_records=",
            f"--model_dir={model_dir}"]


def _final_weights(model_dir):
    experiment = load_experiment(model_dir)
    model = build_deeplabv3(experiment.model)
    tf.train.Checkpoint(model=model).restore(
        tf.train.latest_checkpoint(model_dir)).expect_partial()
    return [w.numpy() for w in model.weights]


def _wait_for(path_glob, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if glob.glob(path_glob):
            return
        time.sleep(0.01)
    raise TimeoutError(path_glob)


@pytest.fixture(scope="module")
def uninterrupted(records, tmp_path_factory):
    """The final weights of the run the killed ones are compared with."""
    reference = tmp_path_factory.mktemp("uninterrupted")
    subprocess.run(_train_cmd(records, reference), cwd=ROOT, check=True,
                   capture_output=True, timeout=600)
    return _final_weights(str(reference))


@pytest.mark.parametrize("kill_signal", [signal.SIGKILL, signal.SIGTERM])
def test_killed_run_resumes_to_the_same_weights(records, uninterrupted, tmp_path, kill_signal):
    run = tmp_path / "run"
    process = subprocess.Popen(_train_cmd(records, run), cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    _wait_for(str(run / "ckpt-8.index"))
    time.sleep(0.15)  # a few steps past the checkpoint, before the next one
    process.send_signal(kill_signal)
    out, err = process.communicate(timeout=300)
    saved = int(tf.train.latest_checkpoint(str(run)).rsplit("-", 1)[1])
    if kill_signal == signal.SIGTERM:
        assert process.returncode == 0, err[-2000:]
        assert '"preempted": true' in out
        # The step that was running when the signal came is in the checkpoint.
        assert 8 < saved < 24
    else:
        assert process.returncode == -signal.SIGKILL
        assert saved in (8, 16)
    resumed = subprocess.run(_train_cmd(records, run), cwd=ROOT, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout + resumed.stderr
    assert tf.train.latest_checkpoint(str(run)).endswith("ckpt-24")
    for a, b in zip(uninterrupted, _final_weights(str(run))):
        np.testing.assert_array_equal(a, b)


def test_jft_pretraining_initialises_segmentation(records, tmp_path):
    manifest = write_classification(str(tmp_path / "cls"))
    build_classification(manifest, str(tmp_path / "jft"), num_classes=21, **QUIET)
    pretrain = override(tiny_jft(), [f"data.train_records={str(tmp_path / 'jft' / 'train-*')!r}",
                                     "train.steps=4", "train.log_every=2", "train.batch_size=4",
                                     "data.image_size=48"])
    result = train(pretrain, str(tmp_path / "jft_run"), **QUIET)
    assert result.step == 4 and all(np.isfinite(h["loss"]) for h in result.history)
    classifier_bias = result.model.get_layer("classifier").bias.numpy()
    assert classifier_bias.mean() < -1.0  # prior bias log(1/20), moved a little
    segmentation = build_deeplabv3(dataclasses.replace(pretrain.model, output_stride=16))
    messages = []
    initialize_from_run(segmentation, str(tmp_path / "jft_run"), log=messages.append)
    assert any("classification run tiny_jft" in m for m in messages)
    source = result.model.get_layer("backbone").weights
    target = segmentation.get_layer("backbone").weights
    assert len(source) == len(target)
    for s, t in zip(source, target):
        np.testing.assert_array_equal(s.numpy(), t.numpy())


def test_init_from_deeplab_run_with_other_classes_skips_logits(records, tmp_path):
    experiment = _experiment(records, "train.steps=2", "data.val_records=''",
                             "data.crop_size=(49, 49)")
    result = train(experiment, str(tmp_path / "run"), **QUIET)
    target = build_deeplabv3(dataclasses.replace(experiment.model, num_classes=5))
    messages = []
    initialize_from_run(target, str(tmp_path / "run"), log=messages.append)
    assert any("skipping layer 'logits'" in m for m in messages)
    np.testing.assert_array_equal(
        target.get_layer("aspp_project_conv").kernel.numpy(),
        result.model.get_layer("aspp_project_conv").kernel.numpy())


def test_other_model_in_model_dir_is_refused(records, tmp_path):
    experiment = _experiment(records, "train.steps=1", "data.val_records=''",
                             "data.crop_size=(49, 49)")
    train(experiment, str(tmp_path / "run"), **QUIET)
    other = override(experiment, ["model.aspp_filters=16"])
    with pytest.raises(ValueError, match="another model"):
        train(other, str(tmp_path / "run"), **QUIET)


def test_jit_compiled_steps_match_plain_steps(records, tmp_path):
    experiment = _experiment(records, "train.steps=2", "train.log_every=1",
                             "data.val_records=''", "data.crop_size=(49, 49)",
                             "model.dropout_rate=0.0")
    plain = train(experiment, str(tmp_path / "plain"), **QUIET)
    jit = train(override(experiment, ["train.jit_compile=True"]), str(tmp_path / "jit"), **QUIET)
    assert [h["loss"] for h in jit.history] == pytest.approx(
        [h["loss"] for h in plain.history], rel=1e-3)
    assert jit.history[-1]["train_miou"] == pytest.approx(plain.history[-1]["train_miou"], rel=1e-2)


def test_overrides_apply_together_and_name_unknown_fields():
    experiment = override(tiny_voc(), ["model.num_classes=3",
                                       "data.class_names=('bg', 'road', 'car')",
                                       "data.crop_size=(33, 41)", "train.steps=7", "name=custom"])
    assert experiment.model.num_classes == 3 and experiment.data.class_names == ("bg", "road", "car")
    assert experiment.data.crop_size == (33, 41) and experiment.train.steps == 7
    assert experiment.name == "custom"
    with pytest.raises(ValueError, match="train.stepz"):
        override(tiny_voc(), ["train.stepz=3"])
    with pytest.raises(ValueError, match="class names"):
        override(tiny_voc(), ["model.num_classes=3"])


def test_records_with_other_class_count_are_refused(records, tmp_path):
    experiment = override(_experiment(records, "train.steps=1", "data.val_records=''"),
                          ["model.num_classes=3", "data.class_names=('a', 'b', 'c')"])
    with pytest.raises(ValueError, match="21 classes.*train.manifest.json.*num_classes=3"):
        train(experiment, str(tmp_path / "run"), **QUIET)


def test_resume_with_another_replica_count_is_allowed(records, tmp_path):
    experiment = _experiment(records, "train.steps=1", "data.val_records=''",
                             "data.crop_size=(49, 49)")
    train(experiment, str(tmp_path / "run"), **QUIET)
    # As if the first run had used several replicas (synchronised BN).
    synced = override(experiment, ["train.steps=2", "train.sync_bn=True"])
    assert train(synced, str(tmp_path / "run"), **QUIET).step == 2


def test_imagenet_h5_initialisation_through_train(records, tmp_path):
    from deeplabv3_tf.model.config import keras_applications_compatible
    from deeplabv3_tf.model import build_resnet
    from tests.model.test_imagenet import randomize, write_keras2_h5

    experiment = _experiment(records, "train.steps=0", "data.val_records=''")
    model_config = keras_applications_compatible(experiment.model)
    source = build_resnet(model_config)
    randomize(source, seed=3)
    h5 = str(tmp_path / "tiny_notop.h5")
    write_keras2_h5(source, h5)
    experiment = dataclasses.replace(experiment, model=model_config,
                                     train=dataclasses.replace(experiment.train, init=h5))
    messages = []
    result = train(experiment, str(tmp_path / "run"), progress=False, log=messages.append)
    assert any("ImageNet weights from" in m for m in messages)
    np.testing.assert_array_equal(
        result.model.get_layer("backbone").get_layer("conv3_block1_1_conv").kernel.numpy(),
        source.get_layer("conv3_block1_1_conv").kernel.numpy())
    missing = dataclasses.replace(experiment, train=dataclasses.replace(
        experiment.train, init=str(tmp_path / "absent.h5")))
    with pytest.raises(FileNotFoundError, match="absent.h5"):
        train(missing, str(tmp_path / "other"), **QUIET)


def test_aux_head_adds_its_loss_and_trains(records, tmp_path):
    """With model.aux_head the loss is main + aux_loss_weight * aux; evaluation and
    export use the main logits only."""
    from deeplabv3_tf.runs import load_trained_model

    steps = ["train.steps=2", "train.eval_every=0", "train.checkpoint_every=2",
             "train.log_every=1", "model.aux_head=True", "train.learning_rate=0.0",
             "train.weight_decay=0.0"]
    losses = {}
    for weight in (0.0, 1.0):
        result = train(_experiment(records, *steps, f"train.aux_loss_weight={weight}",
                                   "train.seed=3"),
                       str(tmp_path / f"w{weight}"), **QUIET)
        losses[weight] = result.history[0]["loss"]
    # The same weights and batch (lr 0): the aux term adds a cross-entropy (> 0.1 at init).
    assert losses[1.0] > losses[0.0] + 0.1
    model, experiment, _ = load_trained_model(str(tmp_path / "w1.0"))
    assert experiment.model.aux_head
    assert model(np.zeros((1, 65, 65, 3), np.float32)).shape == (1, 65, 65, 21)

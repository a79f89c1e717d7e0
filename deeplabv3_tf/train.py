"""The training loop: custom, distributed, resumable.

A custom loop rather than `Model.fit`: Keras 3's fit fails under
MultiWorkerMirroredStrategy (keras-team/keras#20585), and the loop needs exact
control of loss normalisation across replicas: each replica's cross-entropy sum
is divided by the number of non-ignored pixels of the whole global batch, so
the loss and the update do not depend on the replica count (the step:
`train_step.py`; the optimizer and its schedule: `optimizer.py`).

Everything the trajectory depends on is in the checkpoint or derived from it:
step, weights (BN statistics included), optimizer slots and iteration count,
the dynamic loss scale, the dropout RNG states, and the data position (the
training stream is a pure function of the seed and the position
step * global batch, see `data.pipeline.training_stream`). A killed run resumes
by rerunning the same command; SIGTERM saves a checkpoint after the current
step and returns, on every worker of a cluster at the same step (the flag is
all-reduced with the step's other results).
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import threading
import time
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from deeplabv3_tf import data as data_lib
from deeplabv3_tf.config import ModelConfig
from deeplabv3_tf.data.tfrecord_builders.shards import records_manifest
from deeplabv3_tf.distribute import is_chief, make_strategy, set_precision
from deeplabv3_tf.evaluate import evaluate_model
from deeplabv3_tf.experiments import (
    EXPERIMENT_FILE, ExperimentConfig, check_records_classes, load_experiment, save_experiment)
from deeplabv3_tf.metrics import iou_from_confusion
from deeplabv3_tf.model import build_deeplabv3
from deeplabv3_tf.model.classifier import build_classifier
from deeplabv3_tf.model.deeplabv3 import main_output
from deeplabv3_tf.model.imagenet import load_imagenet_weights
from deeplabv3_tf.model.transfer import initialize_from_run
from deeplabv3_tf.optimizer import make_optimizer, poly_schedule
from deeplabv3_tf.precision import check_precision
from deeplabv3_tf.progress import ProgressBar
from deeplabv3_tf.train_step import make_train_step, weight_decay_mask
from deeplabv3_tf.visualize import overlay


@dataclasses.dataclass
class TrainResult:
    """What a call to `train` did."""

    model: keras.Model
    step: int
    model_dir: str
    preempted: bool = False
    history: list[dict] = dataclasses.field(default_factory=list)
    evaluation: dict | None = None


class _TerminationFlag:
    """Turns SIGTERM into a flag the loop checks after every step."""

    def __init__(self):
        self.raised = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        self.raised = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def build_model(experiment: ExperimentConfig) -> keras.Model:
    """The experiment's model: DeepLabv3 or the backbone classifier."""
    if experiment.task == "classification":
        return build_classifier(experiment.model)
    return build_deeplabv3(experiment.model)


def initialize(model: keras.Model, init: str, log: Callable[[str], None],
               config: ModelConfig | None = None) -> None:
    """ImageNet `.h5` weights, or the latest checkpoint of another run (`config`:
    the model's, checked against the run's)."""
    if not init:
        log("init: random")
        return
    if init.endswith((".h5", ".hdf5")):
        if not os.path.exists(init):
            raise FileNotFoundError(
                f"ImageNet weights not found: {init}. Download "
                "keras.applications' ResNet '_notop.h5' file, or set train.init=''.")
        count = load_imagenet_weights(model, init)
        log(f"init: ImageNet weights from {init} ({count} backbone layers)")
        return
    initialize_from_run(model, init, log=log, target_config=config)


def _check_same_experiment(saved: ExperimentConfig, experiment: ExperimentConfig,
                           model_dir: str) -> None:
    # sync_bn follows the replica count, which may change between restarts.
    def graph(config):
        return dataclasses.replace(config.model, sync_bn=False)

    if graph(saved) != graph(experiment):
        raise ValueError(
            f"{model_dir} holds a run of another model ({os.path.join(model_dir, EXPERIMENT_FILE)}); "
            "choose another --model_dir.")


def train(experiment: ExperimentConfig, model_dir: str, *, progress: bool = True,
          log: Callable[[str], None] = print, stop_after: int | None = None) -> TrainResult:
    """Trains (or resumes training of) an experiment in `model_dir`.

    Args:
      experiment: The experiment; saved as model_dir/experiment.json.
      model_dir: Checkpoints, experiment.json and TensorBoard logs (train/, val/).
      progress: Show a progress bar with steps/s and ETA.
      log: Where messages go.
      stop_after: Stop (with a checkpoint) after this step, before the end.

    Returns:
      A TrainResult with the trained model.

    Raises:
      FloatingPointError: the loss became NaN or Inf; the last checkpoint is kept.
    """
    tc = experiment.train
    check_precision(tc.precision)  # first: a missing kernel is said before any work
    _check_records(experiment)
    strategy = make_strategy(tc.strategy)
    set_precision(tc.precision)
    replicas = strategy.num_replicas_in_sync
    if tc.batch_size % replicas:
        raise ValueError(f"batch_size={tc.batch_size} is not divisible by {replicas} replicas.")
    sync_bn = tc.sync_bn if tc.sync_bn is not None else replicas > 1
    experiment = dataclasses.replace(
        experiment, model=dataclasses.replace(experiment.model, sync_bn=sync_bn))
    chief = is_chief(strategy)
    write_dir = model_dir if chief else os.path.join(
        model_dir, f".worker-{strategy.cluster_resolver.task_id}")
    os.makedirs(write_dir, exist_ok=True)
    if os.path.exists(os.path.join(model_dir, EXPERIMENT_FILE)):
        _check_same_experiment(load_experiment(model_dir), experiment, model_dir)
    keras.utils.set_random_seed(tc.seed)

    segmentation = experiment.task == "segmentation"
    with strategy.scope():
        model = build_model(experiment)
        optimizer = make_optimizer(tc)
        optimizer.build(model.trainable_variables)
        step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    rng_states = [v for v in model.variables if "seed_generator" in v.path]
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step_var,
                                     rng=rng_states)
    manager = tf.train.CheckpointManager(checkpoint, write_dir, max_to_keep=tc.keep_checkpoints)
    if manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        log(f"resumed from {manager.latest_checkpoint} at step {int(step_var.numpy())}")
    else:
        initialize(model, tc.init, log, experiment.model)
        if chief:
            save_experiment(experiment, model_dir)
    start = int(step_var.numpy())

    dataset = _training_dataset(experiment, start * tc.batch_size)
    if strategy.cluster_resolver is not None and strategy.cluster_resolver.task_type:
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        dataset = dataset.with_options(options)
    iterator = iter(strategy.experimental_distribute_dataset(dataset))

    train_step = make_train_step(model, optimizer, strategy, experiment)
    # Evaluation and image summaries read the main logits only (no auxiliary head).
    predictor = main_output(model)
    num_classes = experiment.model.num_classes
    writers = _summary_writers(model_dir, chief)
    history, evaluation, preempted = [], None, False
    end = min(tc.steps, stop_after) if stop_after else tc.steps
    bar = ProgressBar(tc.steps, desc=f"[{experiment.name}]", unit="step", initial=start,
                      enabled=progress)
    window = np.zeros((num_classes, num_classes), np.int64)
    window_loss, window_steps, window_start = 0.0, 0, time.perf_counter()
    step = start
    with _TerminationFlag() as terminated:
        while step < end:
            batch = next(iterator)
            loss, matrix, stop = train_step(batch, terminated.raised)
            stopping = float(stop) > 0
            step += 1
            step_var.assign(step)
            loss = float(loss)
            if not math.isfinite(loss):
                raise FloatingPointError(
                    f"Loss is {loss} at step {step}; stopped without saving. The last "
                    f"good checkpoint is {manager.latest_checkpoint or '(none yet)'}.")
            window += matrix.numpy()
            window_loss += loss
            window_steps += 1
            bar.update(1, loss=f"{loss:.4f}")
            if step % tc.log_every == 0 or step == end:
                record = _log_scalars(writers, optimizer, model, tc, step, window_loss / window_steps,
                                      window, segmentation, window_steps,
                                      time.perf_counter() - window_start)
                history.append(record)
                window[:] = 0
                window_loss, window_steps, window_start = 0.0, 0, time.perf_counter()
            if segmentation and tc.image_summary_every and step % tc.image_summary_every == 0:
                _image_summary(writers, predictor, strategy, batch, step,
                               experiment.data.info.lookup())
            if step % tc.checkpoint_every == 0 or step == end or stopping:
                manager.save(checkpoint_number=step)
            if (segmentation and tc.eval_every and step % tc.eval_every == 0
                    and experiment.data.val_records and step < end):
                _evaluate(predictor, experiment, writers, step, log)
            if stopping:
                preempted = True
                log(f"SIGTERM (here or on another worker): saved a checkpoint at step {step} "
                    f"in {write_dir}; rerun the same command to resume")
                break
    bar.close()
    if segmentation and experiment.data.val_records and not preempted and step == tc.steps:
        evaluation = _evaluate(predictor, experiment, writers, step, log)
    if not chief:
        tf.io.gfile.rmtree(write_dir)
    return TrainResult(model=model, step=step, model_dir=model_dir, preempted=preempted,
                       history=history, evaluation=evaluation)


def _check_records(experiment: ExperimentConfig) -> None:
    """Refuses records whose manifest gives another number of classes than the model's."""
    manifest, manifest_path = records_manifest(experiment.data.train_records)
    if manifest is not None:
        check_records_classes(manifest, manifest_path, experiment.model.num_classes)


def _training_dataset(experiment: ExperimentConfig, start_index: int) -> tf.data.Dataset:
    data, tc = experiment.data, experiment.train
    if experiment.task == "classification":
        return data_lib.make_classification_dataset(
            data.train_records, num_classes=experiment.model.num_classes, training=True,
            batch_size=tc.batch_size, image_size=data.image_size,
            use_confidence=data.use_confidence, seed=tc.seed,
            shuffle_buffer=data.shuffle_buffer, start_index=start_index)
    return data_lib.make_dataset(
        data.train_records, training=True, batch_size=tc.batch_size,
        crop_size=data.crop_size, min_scale=data.min_scale, max_scale=data.max_scale,
        flip=data.flip, ignore_label=data.ignore_label, seed=tc.seed,
        shuffle_buffer=data.shuffle_buffer, start_index=start_index,
        hard_class_ids=data.hard_class_ids, hard_class_repeat=data.hard_class_repeat)


def _summary_writers(model_dir: str, chief: bool) -> dict:
    if not chief:
        return {}
    return {name: tf.summary.create_file_writer(os.path.join(model_dir, name))
            for name in ("train", "val")}


def _log_scalars(writers, optimizer, model, tc, step, loss, window, segmentation,
                 window_steps, seconds) -> dict:
    variables = model.trainable_variables
    decay = sum(float(tf.reduce_sum(tf.square(tf.cast(v, tf.float32))))
                for v, d in zip(variables, weight_decay_mask(variables)) if d) * tc.weight_decay / 2
    record = {"step": step, "loss": loss, "weight_decay_loss": decay,
              "learning_rate": float(poly_schedule(tc)(step - 1)),
              "steps_per_second": window_steps / max(seconds, 1e-9)}
    if segmentation:
        record["train_miou"] = iou_from_confusion(window)["miou"]
    if hasattr(optimizer, "dynamic_scale"):
        record["loss_scale"] = float(tf.convert_to_tensor(optimizer.dynamic_scale.value))
    if writers:
        with writers["train"].as_default(step=step):
            for key, value in record.items():
                if key != "step" and value == value:  # skip NaN mIoU
                    tf.summary.scalar(key, value)
    return record


def _image_summary(writers, model, strategy, batch, step, palette, count: int = 2) -> None:
    if not writers:
        return
    images = strategy.experimental_local_results(batch["image"])[0][:count]
    labels = strategy.experimental_local_results(batch["label"])[0][:count]
    predictions = tf.argmax(model(images, training=False), axis=-1, output_type=tf.int32)
    panels = []
    for image, label, prediction in zip(images.numpy(), labels.numpy(), predictions.numpy()):
        image = np.clip(image, 0, 255).astype(np.uint8)
        panels.append(np.concatenate([image, overlay(image, label % 256, palette),
                                      overlay(image, prediction, palette)], axis=1))
    with writers["train"].as_default(step=step):
        tf.summary.image("image_label_prediction", np.stack(panels), max_outputs=count)


def _evaluate(model, experiment, writers, step, log) -> dict:
    dataset = data_lib.make_dataset(experiment.data.val_records, training=False)
    result = evaluate_model(model, dataset, experiment.model.num_classes,
                            ignore_label=experiment.data.ignore_label)
    log(f"step {step}: val mIoU {100 * result['miou']:.2f} over {result['images']} images")
    if writers:
        with writers["val"].as_default(step=step):
            tf.summary.scalar("miou", result["miou"])
            tf.summary.scalar("pixel_accuracy", result["pixel_accuracy"])
            for name, iou in zip(experiment.data.class_names, result["iou"]):
                if iou == iou:
                    tf.summary.scalar(f"iou/{name}", iou)
    return result


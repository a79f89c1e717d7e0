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

from deeplabv3_tf.configs.experiment import ExperimentConfig, check_records_classes
from deeplabv3_tf.core.precision import check_precision
from deeplabv3_tf.core.progress import ProgressBar
from deeplabv3_tf.data.schema import records_manifest
from deeplabv3_tf.evaluation.evaluate import evaluate_model
from deeplabv3_tf.model.blocks import BatchNorm
from deeplabv3_tf.model.config import ModelConfig
from deeplabv3_tf.model.deeplabv3 import main_output
from deeplabv3_tf.model.weights.imagenet import load_imagenet_weights
from deeplabv3_tf.runs import (
    EXPERIMENT_FILE, build_model, check_same_model, initialize_from_run, load_experiment,
    save_experiment, training_checkpoint)
from deeplabv3_tf.tasks import Task, get_task
from deeplabv3_tf.training.distribute import is_chief, make_strategy, set_precision
from deeplabv3_tf.training.optimizer import make_optimizer, poly_schedule
from deeplabv3_tf.training.train_step import make_train_step, weight_decay_mask


@dataclasses.dataclass
class TrainResult:
    """What a call to `train` did."""

    model: keras.Model
    step: int
    model_dir: str
    preempted: bool = False
    history: list[dict] = dataclasses.field(default_factory=list)
    evaluation: dict | None = None

    def summary(self) -> dict:
        """What `tools/train.py` prints at the end (one JSON line)."""
        summary = {"step": self.step, "model_dir": self.model_dir, "preempted": self.preempted}
        if self.history:
            summary["last_loss"] = self.history[-1]["loss"]
        if self.evaluation:
            summary["val_miou"] = self.evaluation["miou"]
        return summary


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
    # Synchronised BatchNorm follows the replica count, which may change between restarts.
    batch_norm = BatchNorm(synchronized=tc.sync_bn if tc.sync_bn is not None else replicas > 1,
                           frozen=tc.freeze_bn)
    chief = is_chief(strategy)
    write_dir = model_dir if chief else os.path.join(
        model_dir, f".worker-{strategy.cluster_resolver.task_id}")
    os.makedirs(write_dir, exist_ok=True)
    if os.path.exists(os.path.join(model_dir, EXPERIMENT_FILE)):
        check_same_model(load_experiment(model_dir), experiment, model_dir)
    keras.utils.set_random_seed(tc.seed)

    task = get_task(experiment.task)
    with strategy.scope():
        model = build_model(experiment, batch_norm)
        optimizer = make_optimizer(tc)
        optimizer.build(model.trainable_variables)
        step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    rng_states = [v for v in model.variables if "seed_generator" in v.path]
    checkpoint = training_checkpoint(model, optimizer, step_var, rng_states)
    manager = tf.train.CheckpointManager(checkpoint, write_dir, max_to_keep=tc.keep_checkpoints)
    if manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        log(f"resumed from {manager.latest_checkpoint} at step {int(step_var.numpy())}")
    else:
        initialize(model, tc.init, log, experiment.model)
        if chief:
            save_experiment(experiment, model_dir)
    start = int(step_var.numpy())
    iterator = iter(strategy.experimental_distribute_dataset(
        _training_dataset(task, experiment, strategy, start * tc.batch_size)))
    train_step = make_train_step(model, optimizer, strategy, experiment)
    # Evaluation and image summaries read the main logits only (no auxiliary head).
    loop = _Loop(task, experiment, main_output(model), strategy, optimizer, model,
                 _summary_writers(model_dir, chief), log)
    end = min(tc.steps, stop_after) if stop_after else tc.steps
    bar = ProgressBar(tc.steps, desc=f"[{experiment.name}]", unit="step", initial=start,
                      enabled=progress)
    step, preempted = start, False
    with _TerminationFlag() as terminated:
        while step < end:
            batch = next(iterator)
            loss, matrix, stop = train_step(batch, terminated.raised)
            stopping = float(stop) > 0
            step += 1
            step_var.assign(step)
            loss = _finite(float(loss), step, manager)
            bar.update(1, loss=f"{loss:.4f}")
            loop.after_step(step, batch, loss, matrix.numpy(), last=step == end)
            if step % tc.checkpoint_every == 0 or step == end or stopping:
                manager.save(checkpoint_number=step)
            if tc.eval_every and step % tc.eval_every == 0 and step < end:
                loop.evaluate(step)
            if stopping:
                preempted = True
                log(f"SIGTERM (here or on another worker): saved a checkpoint at step {step} "
                    f"in {write_dir}; rerun the same command to resume")
                break
    bar.close()
    evaluation = loop.evaluate(step) if not preempted and step == tc.steps else None
    if not chief:
        tf.io.gfile.rmtree(write_dir)
    return TrainResult(model=model, step=step, model_dir=model_dir, preempted=preempted,
                       history=loop.history, evaluation=evaluation)


def _finite(loss: float, step: int, manager) -> float:
    if not math.isfinite(loss):
        raise FloatingPointError(
            f"Loss is {loss} at step {step}; stopped without saving. The last "
            f"good checkpoint is {manager.latest_checkpoint or '(none yet)'}.")
    return loss


class _Loop:
    """What the loop does between steps: scalars over a window of steps, image
    summaries, validation; each as the experiment's task defines it."""

    def __init__(self, task: Task, experiment: ExperimentConfig, predictor: keras.Model,
                 strategy, optimizer, model: keras.Model, writers: dict, log):
        self.task, self.experiment, self.predictor = task, experiment, predictor
        self.strategy, self.optimizer, self.model = strategy, optimizer, model
        self.writers, self.log = writers, log
        self.history: list[dict] = []
        num_classes = experiment.model.num_classes
        self.window = np.zeros((num_classes, num_classes), np.int64)
        self.window_loss, self.window_steps, self.window_start = 0.0, 0, time.perf_counter()

    def after_step(self, step: int, batch, loss: float, matrix: np.ndarray, last: bool) -> None:
        tc = self.experiment.train
        self.window += matrix
        self.window_loss += loss
        self.window_steps += 1
        if step % tc.log_every == 0 or last:
            self.history.append(_log_scalars(
                self.writers, self.optimizer, self.model, tc, step,
                self.window_loss / self.window_steps, self.task.train_metrics(self.window),
                self.window_steps, time.perf_counter() - self.window_start))
            self.window[:] = 0
            self.window_loss, self.window_steps, self.window_start = 0.0, 0, time.perf_counter()
        if tc.image_summary_every and step % tc.image_summary_every == 0:
            _image_summary(self.writers, self.task, self.predictor, self.strategy, batch, step,
                           self.experiment.data.info.lookup())

    def evaluate(self, step: int) -> dict | None:
        """mIoU on the task's validation records (None where it has none)."""
        dataset = self.task.validation_dataset(self.experiment)
        if dataset is None:
            return None
        return _evaluate(self.predictor, dataset, self.experiment, self.writers, step, self.log)


def _check_records(experiment: ExperimentConfig) -> None:
    """Refuses records whose manifest gives another number of classes than the model's."""
    manifest, manifest_path = records_manifest(experiment.data.train_records)
    if manifest is not None:
        check_records_classes(manifest, manifest_path, experiment.model.num_classes)


def _training_dataset(task: Task, experiment: ExperimentConfig, strategy,
                      start_index: int) -> tf.data.Dataset:
    dataset = task.training_dataset(experiment, start_index)
    if strategy.cluster_resolver is not None and strategy.cluster_resolver.task_type:
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        dataset = dataset.with_options(options)
    return dataset


def _summary_writers(model_dir: str, chief: bool) -> dict:
    if not chief:
        return {}
    return {name: tf.summary.create_file_writer(os.path.join(model_dir, name))
            for name in ("train", "val")}


def _log_scalars(writers, optimizer, model, tc, step, loss, task_metrics: dict,
                 window_steps, seconds) -> dict:
    variables = model.trainable_variables
    decay = sum(float(tf.reduce_sum(tf.square(tf.cast(v, tf.float32))))
                for v, d in zip(variables, weight_decay_mask(variables)) if d) * tc.weight_decay / 2
    record = {"step": step, "loss": loss, "weight_decay_loss": decay,
              "learning_rate": float(poly_schedule(tc)(step - 1)),
              "steps_per_second": window_steps / max(seconds, 1e-9)}
    record.update(task_metrics)
    if hasattr(optimizer, "dynamic_scale"):
        record["loss_scale"] = float(tf.convert_to_tensor(optimizer.dynamic_scale.value))
    if writers:
        with writers["train"].as_default(step=step):
            for key, value in record.items():
                if key != "step" and value == value:  # skip NaN mIoU
                    tf.summary.scalar(key, value)
    return record


def _image_summary(writers, task: Task, predictor, strategy, batch, step, palette,
                   count: int = 2) -> None:
    if not writers:
        return
    images = strategy.experimental_local_results(batch["image"])[0][:count]
    labels = strategy.experimental_local_results(batch["label"])[0][:count] \
        if "label" in batch else None
    panels = task.summary_images(predictor, images.numpy(),
                                 None if labels is None else labels.numpy(), palette)
    if panels is None:
        return
    with writers["train"].as_default(step=step):
        tf.summary.image("image_label_prediction", panels, max_outputs=count)


def _evaluate(model, dataset, experiment, writers, step, log) -> dict:
    result = evaluate_model(model, dataset, experiment.model.num_classes,
                            ignore_label=experiment.data.ignore_label, trimap_bands=())
    log(f"step {step}: val mIoU {100 * result['miou']:.2f} over {result['images']} images")
    if writers:
        with writers["val"].as_default(step=step):
            tf.summary.scalar("miou", result["miou"])
            tf.summary.scalar("pixel_accuracy", result["pixel_accuracy"])
            for name, iou in zip(experiment.data.class_names, result["iou"]):
                if iou == iou:
                    tf.summary.scalar(f"iou/{name}", iou)
    return result


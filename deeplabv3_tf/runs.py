"""The run directory: what it holds, how to read it, how to write one.

    <run>/experiment.json     the experiment (`configs.experiment.ExperimentConfig`):
                              everything that rebuilds the model and its data
    <run>/checkpoint          tf.train.CheckpointManager's index
    <run>/ckpt-<step>.*       tf.train.Checkpoint(model=..., optimizer=...,
                              step=..., rng=...): the model's variables by
                              layer (the layer names are the contract), the
                              optimizer's slots, the step and the dropout RNGs
    <run>/train/, <run>/val/  TensorBoard logs (training only)
    <run>/import.json         where imported weights came from (imports only)

`tools/train.py` writes runs (`training.trainer.train`), so does
`tools/import_weights.py` (`write_run`); the export, the evaluation,
prediction, the LiteRT conversion and `train.init` read them
(`load_trained_model`, `initialize_from_run`). The model is always rebuilt from
experiment.json by the experiment's task, so that architecture and
preprocessing cannot drift from training.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable

import keras
import tensorflow as tf

from deeplabv3_tf.configs.experiment import ExperimentConfig
from deeplabv3_tf.core.console import note_once
from deeplabv3_tf.core.files import staged_directory, write_json_atomically
from deeplabv3_tf.model.blocks import BatchNorm
from deeplabv3_tf.model.config import ModelConfig
from deeplabv3_tf.model.deeplabv3 import build_deeplabv3
from deeplabv3_tf.model.transfer import check_compatible, not_carried, transfer_weights
from deeplabv3_tf.tasks import get_task
from deeplabv3_tf.tasks.segmentation import NAME as SEGMENTATION

EXPERIMENT_FILE = "experiment.json"


def save_experiment(experiment: ExperimentConfig, directory: str) -> str:
    """Writes `directory`/experiment.json (atomically); returns its path."""
    return write_json_atomically(os.path.join(directory, EXPERIMENT_FILE), experiment.to_dict())


def load_experiment(directory: str) -> ExperimentConfig:
    """Reads experiment.json from a run directory (or a checkpoint's directory).

    Files written by earlier versions load: BatchNorm's runtime choices are
    moved out of the model config (`ExperimentConfig.from_dict`), a missing
    dataset description is noted once.
    """
    given = directory
    if not os.path.isdir(directory):
        directory = os.path.dirname(directory)
    path = os.path.join(directory, EXPERIMENT_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{given} is not a training run: no {path}.")
    with open(path) as f:
        values = json.load(f)
    experiment = ExperimentConfig.from_dict(values)
    if "colors" in get_task(experiment.task).dataset_fields and "dataset" not in values.get(
            "data", {}):
        note_once(path, f"note: {path} has no dataset description (written by an older "
                  "version): the PASCAL VOC colour map is used for its classes; tools/export.py "
                  "--palette sets colours and names.")
    return experiment


def build_model(experiment: ExperimentConfig, batch_norm: BatchNorm = BatchNorm()) -> keras.Model:
    """The experiment's model, built by its task."""
    return get_task(experiment.task).build_model(experiment.model, batch_norm)


def check_same_model(saved: ExperimentConfig, experiment: ExperimentConfig,
                     model_dir: str) -> None:
    """Refuses to continue a run in `model_dir` with another model."""
    if saved.task != experiment.task or saved.model != experiment.model:
        raise ValueError(
            f"{model_dir} holds a run of another model ({os.path.join(model_dir, EXPERIMENT_FILE)}); "
            "choose another --model_dir.")


def training_checkpoint(model: keras.Model, optimizer=None, step: tf.Variable | None = None,
                        rng: list | None = None) -> tf.train.Checkpoint:
    """The checkpoint object of a run: what every ckpt-<step> holds."""
    parts = {"model": model}
    if optimizer is not None:
        parts.update(optimizer=optimizer, step=step, rng=rng or [])
    return tf.train.Checkpoint(**parts)


def latest_checkpoint(path: str) -> str:
    """A checkpoint prefix from a run directory or a prefix."""
    if os.path.isdir(path):
        prefix = tf.train.latest_checkpoint(path)
        if prefix is None:
            raise FileNotFoundError(f"No checkpoint in {path}.")
        return prefix
    if not tf.io.gfile.glob(path + ".index"):
        raise FileNotFoundError(f"No checkpoint at {path} (expected {path}.index).")
    return path


def restore_model(model: keras.Model, prefix: str) -> None:
    """Restores a model's variables from a run's checkpoint (optimizer state ignored)."""
    status = training_checkpoint(model).restore(prefix)
    # Every model variable must come from the checkpoint; the optimizer may be left.
    status.assert_existing_objects_matched().expect_partial()


def write_run(directory: str, experiment: ExperimentConfig, model: keras.Model,
              extra_files: dict[str, dict] | None = None) -> str:
    """Writes a run directory holding `model` as checkpoint ckpt-0, atomically.

    Args:
      directory: The run directory; replaced as a whole (a staging sibling is
        renamed at the end: a failure leaves no half-written run).
      experiment: Its experiment.json.
      model: The model `build_model(experiment)` builds, with its weights.
      extra_files: More JSON files by name (an import's provenance).

    Returns:
      `directory`.
    """
    with staged_directory(directory) as staging:
        save_experiment(experiment, staging)
        manager = tf.train.CheckpointManager(training_checkpoint(model), staging, max_to_keep=1)
        manager.save(checkpoint_number=0)
        for name, value in (extra_files or {}).items():
            write_json_atomically(os.path.join(staging, name), value)
    return directory


def initialize_from_run(target: keras.Model, path: str,
                        log: Callable[[str], None] = print,
                        target_config: ModelConfig | None = None) -> int:
    """Initialises `target` from the latest checkpoint of another run, by layer name.

    A segmentation run gives every layer that fits (any number of classes: the
    `logits` layers are skipped, with a message, when their shapes differ;
    with another decoder they are left out: `transfer.not_carried`), so a
    DeepLabv3+ run takes a DeepLabv3 run's backbone and ASPP and starts its
    decoder and logits anew; a classification run gives its backbone
    (`Task.transferable`).

    Args:
      target: The model to fill.
      path: A run directory or checkpoint prefix.
      log: Where messages go.
      target_config: `target`'s config; when given, a source whose backbone
        weights mean something else (`transfer.check_compatible`) is refused.

    Returns:
      Number of layers copied.
    """
    prefix = latest_checkpoint(path)
    experiment = load_experiment(os.path.dirname(prefix))
    if target_config is not None:
        check_compatible(experiment.model, target_config, f"init {path}")
    task = get_task(experiment.task)
    source = task.build_model(experiment.model)
    restore_model(source, prefix)
    part = task.transferable(source)
    leave_out = () if target_config is None else not_carried(experiment.model, target_config)
    if part is source:
        copied = transfer_weights(source, target, log=log, leave_out=leave_out)
        log(f"init: {copied} layers from {experiment.name} ({prefix})")
    else:
        copied = transfer_weights(part, target.get_layer(part.name), log=log)
        log(f"init: {part.name} from {task.name} run {experiment.name} ({prefix}), "
            f"{copied} layers")
    if copied == 0:
        raise ValueError(f"No layer of {prefix} fits the model.")
    return copied


def load_trained_model(run_dir: str, output_stride: int | None = None,
                       checkpoint: str | None = None):
    """Rebuilds a segmentation run's model from its experiment.json and restores its weights.

    Args:
      run_dir: Training run directory (experiment.json + checkpoints).
      output_stride: Inference output stride (None: the training one).
      checkpoint: A checkpoint prefix (default: the run's latest).

    Returns:
      (model, experiment as trained, checkpoint prefix): the inference graph,
      without the auxiliary head, BatchNorm in inference mode.
    """
    experiment = load_experiment(run_dir)
    if experiment.task != SEGMENTATION:
        raise ValueError(f"{run_dir} is a {experiment.task} run, not a segmentation run.")
    trained_config = experiment.model
    # Restore into the graph as trained: tf.train.Checkpoint matches Keras layers
    # by position, and another output stride adds or removes padding layers.
    model = build_deeplabv3(trained_config)
    prefix = checkpoint or latest_checkpoint(run_dir)
    restore_model(model, prefix)
    other_stride = output_stride and output_stride != trained_config.output_stride
    if other_stride or trained_config.aux_head:
        # The inference graph: at the requested stride, without the auxiliary head.
        inference = build_deeplabv3(
            dataclasses.replace(trained_config, output_stride=output_stride or
                                trained_config.output_stride), include_aux=False)
        transfer_weights(model, inference, skip_mismatched=(), log=lambda _: None)
        model = inference
    return model, experiment, prefix

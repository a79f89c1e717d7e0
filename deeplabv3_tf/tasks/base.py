"""What a kind of task is to the rest of the package: one object per task.

The trainer, the train step, the run directory and the weight importers ask
the experiment's `Task` (`tasks.get_task(experiment.task)`) for everything that
differs between tasks, as TF Model Garden's Task objects: the model, the
training stream, the loss and its normaliser, what a step measures, what a
validation pass reads, what another run takes from this task's models. None of
them compares task names.

A task reads the experiment duck-typed (`experiment.model`, `.data`,
`.train`): the configs layer sits above the tasks, because an experiment's
checks ask its task which dataset fields its records describe.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

from deeplabv3_tf.model.blocks import BatchNorm
from deeplabv3_tf.model.config import ModelConfig

Experiment = Any  # configs.experiment.ExperimentConfig (a layer above)


class Task:
    """One kind of task. Subclasses set the class attributes and the methods.

    Attributes:
      name: The experiment's `task` value.
      dataset_fields: What this task takes from its training records' manifest
        (`configs.experiment.resolve_experiment`): the number of classes, and
        the dataset description fields its outputs are shown with.
    """

    name: str = ""
    dataset_fields: tuple[str, ...] = ("num_classes", "class_names")

    def build_model(self, config: ModelConfig, batch_norm: BatchNorm = BatchNorm()) -> keras.Model:
        """The task's network for `config`; every input is float RGB in [0, 255]."""
        raise NotImplementedError

    def training_dataset(self, experiment: Experiment, start_index: int) -> tf.data.Dataset:
        """The training stream from example `start_index` (global batches)."""
        raise NotImplementedError

    def loss_normalizer(self, batch: dict, experiment: Experiment, step: tf.Tensor) -> tf.Tensor:
        """float32 scalar: what this replica's share of the global normaliser is
        (valid pixels, examples); depends on the labels (and the step) only."""
        raise NotImplementedError

    def loss_sum(self, batch: dict, outputs, experiment: Experiment,
                 step: tf.Tensor) -> tf.Tensor:
        """float32 scalar: the replica's loss summed over what `loss_normalizer`
        counts; `step` is the optimizer's step (a schedule may depend on it)."""
        raise NotImplementedError

    def step_predictions(self, outputs) -> tf.Tensor:
        """What a training step's confusion matrix is counted from (computed in
        the step's forward pass, XLA-compiled with it)."""
        return tf.zeros([], tf.int32)

    def step_confusion(self, batch: dict, predictions, experiment: Experiment) -> tf.Tensor:
        """int64 [C, C]: the confusion matrix of a training step's `step_predictions`
        (zeros where the task has none)."""
        num_classes = experiment.model.num_classes
        return tf.zeros([num_classes, num_classes], tf.int64)

    def train_metrics(self, confusion: np.ndarray) -> dict[str, float]:
        """Scalars logged from a window of steps' summed confusion matrices."""
        return {}

    def validation_dataset(self, experiment: Experiment) -> tf.data.Dataset | None:
        """Records evaluated by mIoU during and after training; None for none."""
        return None

    def summary_images(self, predictor: keras.Model, images: np.ndarray, labels: np.ndarray,
                       palette: np.ndarray) -> np.ndarray | None:
        """uint8 [N, H, W', 3] panels for TensorBoard; None for none."""
        return None

    def transferable(self, model: keras.Model) -> keras.Model:
        """The part of this task's model that initialises another run's model
        (copied by layer name)."""
        return model

"""Semantic segmentation: DeepLabv3 (or DeepLabv3+), per-pixel cross-entropy over
non-ignored pixels or the hardest of them (plus the auxiliary head's, weighted), mIoU."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from deeplabv3_tf.data.pipeline import make_dataset
from deeplabv3_tf.data.visualize import overlay
from deeplabv3_tf.model.blocks import BatchNorm
from deeplabv3_tf.model.config import ModelConfig
from deeplabv3_tf.model.deeplabv3 import AUX_LOGITS, LOGITS, build_deeplabv3
from deeplabv3_tf.ops.losses import mining_fraction, segmentation_loss_sum, valid_pixel_count
from deeplabv3_tf.ops.metrics import confusion_matrix, iou_from_confusion
from deeplabv3_tf.tasks.base import Experiment, Task

NAME = "segmentation"


class SegmentationTask(Task):
    name = NAME
    dataset_fields = ("num_classes", "dataset", "class_names", "colors", "label_ids")

    def build_model(self, config: ModelConfig, batch_norm: BatchNorm = BatchNorm()) -> keras.Model:
        return build_deeplabv3(config, batch_norm=batch_norm)

    def training_dataset(self, experiment: Experiment, start_index: int) -> tf.data.Dataset:
        data, tc = experiment.data, experiment.train
        return make_dataset(
            data.train_records, training=True, batch_size=tc.batch_size,
            crop_size=data.crop_size, min_scale=data.min_scale, max_scale=data.max_scale,
            flip=data.flip, ignore_label=data.ignore_label, seed=tc.seed,
            shuffle_buffer=data.shuffle_buffer, start_index=start_index,
            hard_class_ids=data.hard_class_ids, hard_class_repeat=data.hard_class_repeat)

    @staticmethod
    def _hard_fraction(experiment: Experiment, step: tf.Tensor):
        """The share of pixels hard-pixel mining keeps at `step`; None when it is off."""
        tc = experiment.train
        if not tc.mines_hard_pixels:
            return None
        return mining_fraction(step, tc.top_k_percent_pixels, tc.hard_example_mining_step)

    def loss_normalizer(self, batch: dict, experiment: Experiment, step: tf.Tensor) -> tf.Tensor:
        return valid_pixel_count(batch["label"], experiment.data.ignore_label,
                                 self._hard_fraction(experiment, step))

    def loss_sum(self, batch: dict, outputs, experiment: Experiment,
                 step: tf.Tensor) -> tf.Tensor:
        ignore_label, weights = experiment.data.ignore_label, experiment.train.class_weights
        fraction = self._hard_fraction(experiment, step)

        def head_loss(logits):
            return segmentation_loss_sum(batch["label"], logits, ignore_label, weights, fraction)

        if not isinstance(outputs, dict):
            return head_loss(outputs)
        # Same number of pixels, same normaliser: the auxiliary loss (its own hardest
        # pixels when mining) is a weighted extra term.
        return (head_loss(outputs[LOGITS])
                + experiment.train.aux_loss_weight * head_loss(outputs[AUX_LOGITS]))

    def step_predictions(self, outputs) -> tf.Tensor:
        # The main head's logits (a model with the auxiliary head returns both).
        logits = outputs[LOGITS] if isinstance(outputs, dict) else outputs
        return tf.argmax(logits, axis=-1, output_type=tf.int32)

    def step_confusion(self, batch: dict, predictions, experiment: Experiment) -> tf.Tensor:
        return confusion_matrix(batch["label"], predictions, experiment.model.num_classes,
                                experiment.data.ignore_label)

    def train_metrics(self, confusion: np.ndarray) -> dict[str, float]:
        return {"train_miou": iou_from_confusion(confusion)["miou"]}

    def validation_dataset(self, experiment: Experiment) -> tf.data.Dataset | None:
        if not experiment.data.val_records:
            return None
        return make_dataset(experiment.data.val_records, training=False)

    def summary_images(self, predictor: keras.Model, images: np.ndarray, labels: np.ndarray,
                       palette: np.ndarray) -> np.ndarray:
        """Image, label and prediction side by side, as colour overlays."""
        predictions = tf.argmax(predictor(images, training=False), axis=-1,
                                output_type=tf.int32).numpy()
        panels = []
        for image, label, prediction in zip(images, labels, predictions):
            image = np.clip(image, 0, 255).astype(np.uint8)
            panels.append(np.concatenate([image, overlay(image, label % 256, palette),
                                          overlay(image, prediction, palette)], axis=1))
        return np.stack(panels)

"""Multi-label image classification (JFT-style backbone pretraining): sigmoid
cross-entropy over multi-hot (or confidence) targets, averaged over examples.
Its backbone initialises segmentation runs."""

from __future__ import annotations

import keras
import tensorflow as tf

from deeplabv3_tf.data.pipeline import make_classification_dataset
from deeplabv3_tf.model.backbones import BACKBONE_NAME
from deeplabv3_tf.model.blocks import BatchNorm
from deeplabv3_tf.model.classifier import build_classifier
from deeplabv3_tf.model.config import ModelConfig
from deeplabv3_tf.ops.losses import example_count, multilabel_loss_sum
from deeplabv3_tf.tasks.base import Experiment, Task

NAME = "classification"


class ClassificationTask(Task):
    name = NAME
    dataset_fields = ("num_classes", "class_names")

    def build_model(self, config: ModelConfig, batch_norm: BatchNorm = BatchNorm()) -> keras.Model:
        return build_classifier(config, batch_norm=batch_norm)

    def training_dataset(self, experiment: Experiment, start_index: int) -> tf.data.Dataset:
        data, tc = experiment.data, experiment.train
        return make_classification_dataset(
            data.train_records, num_classes=experiment.model.num_classes, training=True,
            batch_size=tc.batch_size, image_size=data.image_size,
            use_confidence=data.use_confidence, seed=tc.seed,
            shuffle_buffer=data.shuffle_buffer, start_index=start_index)

    def loss_normalizer(self, batch: dict, experiment: Experiment, step: tf.Tensor) -> tf.Tensor:
        return example_count(batch["target"])

    def loss_sum(self, batch: dict, outputs, experiment: Experiment,
                 step: tf.Tensor) -> tf.Tensor:
        return multilabel_loss_sum(batch["target"], outputs)

    def transferable(self, model: keras.Model) -> keras.Model:
        """Only the backbone: the classifier's head has no place in another task."""
        return model.get_layer(BACKBONE_NAME)

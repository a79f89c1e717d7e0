"""The backbone as a multi-label image classifier (JFT-style pretraining).

Layers: `backbone` (the same nested backbone as DeepLabv3's, so its weights move
between the two by name), `pool` (global mean of the last endpoint),
the backbone's own layers before the logits, if it has any (`Backbone.classifier_head`:
MobileNetV3's `classifier_hidden` and `classifier_dropout`, as torchvision's),
`classifier` (dense, float32, bias initialised to log(1 / (C - 1)) so that
every class starts near probability 1/C: with thousands of classes a zero bias
would start every sigmoid at 0.5 and the first steps would only learn the
prior).
"""

from __future__ import annotations

import math

import keras

from deeplabv3_tf.model.backbones import (
    BACKBONE_NAME, build_backbone, feature_endpoint, get_backbone)
from deeplabv3_tf.model.blocks import BatchNorm
from deeplabv3_tf.model.config import ModelConfig

CLASSIFIER_LAYER = "classifier"


def prior_bias(num_classes: int) -> float:
    """Logit of probability 1/C."""
    return -math.log(max(num_classes - 1, 1))


def build_classifier(config: ModelConfig, input_shape=(None, None, 3),
                     name: str = "resnet_classifier",
                     batch_norm: BatchNorm = BatchNorm()) -> keras.Model:
    """Backbone + global average pooling + dense logits.

    Args:
      config: Backbone settings; `num_classes` is the number of labels.
      input_shape: Shape of one image.
      name: Model name.
      batch_norm: How its BatchNorms run (`blocks.BatchNorm`).

    Returns:
      A `keras.Model` mapping float RGB [B, H, W, 3] in [0, 255] to float32
      logits [B, num_classes].
    """
    backbone = build_backbone(config, input_shape, name=BACKBONE_NAME, batch_norm=batch_norm)
    images = keras.Input(shape=input_shape, name="images")
    endpoints = backbone(images)
    features = endpoints[feature_endpoint(config)]
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(features)
    head = get_backbone(config.backbone).classifier_head
    if head is not None:
        pooled = head(pooled, config)
    logits = keras.layers.Dense(
        config.num_classes, name=CLASSIFIER_LAYER, dtype="float32",
        bias_initializer=keras.initializers.Constant(prior_bias(config.num_classes)))(pooled)
    return keras.Model(images, logits, name=name)

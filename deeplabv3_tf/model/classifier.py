"""The backbone as a multi-label image classifier (JFT-style pretraining).

Layers: `backbone` (the same nested ResNet as DeepLabv3's, so its weights move
between the two by name), `pool` (global mean of the last endpoint),
`classifier` (dense, float32, bias initialised to log(1 / (C - 1)) so that
every class starts near probability 1/C: with thousands of classes a zero bias
would start every sigmoid at 0.5 and the first steps would only learn the
prior).
"""

from __future__ import annotations

import math

import keras

from deeplabv3_tf.config import ModelConfig
from deeplabv3_tf.model.backbone import BACKBONE_NAME, build_resnet

CLASSIFIER_LAYER = "classifier"


def prior_bias(num_classes: int) -> float:
    """Logit of probability 1/C."""
    return -math.log(max(num_classes - 1, 1))


def build_classifier(config: ModelConfig, input_shape=(None, None, 3),
                     name: str = "resnet_classifier") -> keras.Model:
    """Backbone + global average pooling + dense logits.

    Args:
      config: Backbone settings; `num_classes` is the number of labels.
      input_shape: Shape of one image.
      name: Model name.

    Returns:
      A `keras.Model` mapping float RGB [B, H, W, 3] in [0, 255] to float32
      logits [B, num_classes].
    """
    backbone = build_resnet(config, input_shape, name=BACKBONE_NAME)
    images = keras.Input(shape=input_shape, name="images")
    endpoints = backbone(images)
    features = endpoints[f"c{len(endpoints) + 1}"]
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(features)
    logits = keras.layers.Dense(
        config.num_classes, name=CLASSIFIER_LAYER, dtype="float32",
        bias_initializer=keras.initializers.Constant(prior_bias(config.num_classes)))(pooled)
    return keras.Model(images, logits, name=name)

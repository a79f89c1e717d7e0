"""The backbone as a multi-label image classifier (JFT-style pretraining).

Layers: `backbone` (the same nested backbone as DeepLabv3's, so its weights move
between the two by name), `pool` (global mean of the last endpoint),
`classifier_hidden` and `classifier_dropout` (MobileNetV3 only: its 1280-wide
hidden layer with hard-swish, dropout 0.2, as torchvision's),
`classifier` (dense, float32, bias initialised to log(1 / (C - 1)) so that
every class starts near probability 1/C: with thousands of classes a zero bias
would start every sigmoid at 0.5 and the first steps would only learn the
prior).
"""

from __future__ import annotations

import math

import keras

from deeplabv3_tf.config import ModelConfig
from deeplabv3_tf.config import MOBILENET_V3_LARGE
from deeplabv3_tf.model import mobilenet_v3
from deeplabv3_tf.model.backbone import BACKBONE_NAME
from deeplabv3_tf.model.backbones import build_backbone, feature_endpoint

CLASSIFIER_LAYER = "classifier"
HIDDEN_LAYER = "classifier_hidden"


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
    backbone = build_backbone(config, input_shape, name=BACKBONE_NAME)
    images = keras.Input(shape=input_shape, name="images")
    endpoints = backbone(images)
    features = endpoints[feature_endpoint(config)]
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(features)
    if config.backbone == MOBILENET_V3_LARGE:
        # MobileNetV3's classifier: a hidden layer with hard-swish and dropout 0.2.
        pooled = keras.layers.Dense(
            mobilenet_v3.channels(mobilenet_v3.CLASSIFIER_HIDDEN, config),
            activation="hard_swish", name=HIDDEN_LAYER)(pooled)
        pooled = keras.layers.Dropout(0.2, name="classifier_dropout")(pooled)
    logits = keras.layers.Dense(
        config.num_classes, name=CLASSIFIER_LAYER, dtype="float32",
        bias_initializer=keras.initializers.Constant(prior_bias(config.num_classes)))(pooled)
    return keras.Model(images, logits, name=name)

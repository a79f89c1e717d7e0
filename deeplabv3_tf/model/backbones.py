"""The backbone a config names, and which of its endpoints the heads read.

  resnet               dilated ResNet v1 (backbone.py): endpoints c2..c5 (c6..c8
                       with cascaded blocks); auxiliary head on c4
  mobilenet_v3_large   torchvision's MobileNetV3-Large (mobilenet_v3.py):
                       endpoints c1..c5 and c3_block1, where the auxiliary head sits
"""

from __future__ import annotations

import keras

from deeplabv3_tf.config import MOBILENET_V3_LARGE, ModelConfig
from deeplabv3_tf.model import mobilenet_v3
from deeplabv3_tf.model.backbone import BACKBONE_NAME, build_resnet


def build_backbone(config: ModelConfig, input_shape=(None, None, 3),
                   name: str = BACKBONE_NAME) -> keras.Model:
    """`build_resnet` or `build_mobilenet_v3`, by `config.backbone`."""
    if config.backbone == MOBILENET_V3_LARGE:
        return mobilenet_v3.build_mobilenet_v3(config, input_shape, name)
    return build_resnet(config, input_shape, name)


def feature_endpoint(config: ModelConfig) -> str:
    """The endpoint ASPP (or the classifier's pooling) reads: the last stage's."""
    return f"c{5 + config.num_cascade_blocks}"


def aux_endpoint(config: ModelConfig) -> str:
    """The endpoint torchvision's auxiliary FCN head reads."""
    return mobilenet_v3.AUX_ENDPOINT if config.backbone == MOBILENET_V3_LARGE else "c4"

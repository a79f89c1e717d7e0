"""The backbones: one module each, listed once here.

  resnet               dilated ResNet v1 (resnet.py): endpoints c2..c5 (c6..c8
                       with cascaded blocks); auxiliary head on c4, decoder on c2
  mobilenet_v3_large   torchvision's MobileNetV3-Large (mobilenet_v3.py):
                       endpoints c1..c5, c3_block1, where the auxiliary head sits,
                       and c2_depthwise, where the decoder reads

A new backbone is a module that ends with a `base.Backbone` record (builder,
checks, endpoints, weight fields, torchvision names) and one line in
`BACKBONES`; nothing else in the package names a backbone kind.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import keras

from deeplabv3_tf.model.backbones import mobilenet_v3, resnet
from deeplabv3_tf.model.backbones.base import BACKBONE_NAME, Backbone
from deeplabv3_tf.model.blocks import BatchNorm

if TYPE_CHECKING:  # annotations only: config.py imports this package
    from deeplabv3_tf.model.config import ModelConfig

BACKBONES: dict[str, Backbone] = {b.name: b for b in (resnet.BACKBONE, mobilenet_v3.BACKBONE)}


def get_backbone(name: str) -> Backbone:
    """The record of a backbone kind; an unknown name is an error listing the known ones."""
    if name not in BACKBONES:
        raise ValueError(f"backbone={name!r} is not one of {tuple(BACKBONES)}.")
    return BACKBONES[name]


def build_backbone(config: ModelConfig, input_shape=(None, None, 3), name: str = BACKBONE_NAME,
                   batch_norm: BatchNorm = BatchNorm()) -> keras.Model:
    """The backbone `config.backbone` names, built from `config`."""
    return get_backbone(config.backbone).build(config, input_shape, name, batch_norm)


def feature_endpoint(config: ModelConfig) -> str:
    """The endpoint ASPP (or the classifier's pooling) reads: the last stage's."""
    return f"c{5 + config.num_cascade_blocks}"


def aux_endpoint(config: ModelConfig) -> str:
    """The endpoint torchvision's auxiliary FCN head reads."""
    return get_backbone(config.backbone).aux_endpoint(config)


def low_level_endpoint(config: ModelConfig) -> str:
    """The stride-4 endpoint the DeepLabv3+ decoder reads."""
    return get_backbone(config.backbone).low_level_endpoint(config)

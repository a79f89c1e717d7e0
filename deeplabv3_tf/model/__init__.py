"""The networks: backbones (one module each, listed in `backbones`), the DeepLabv3
head, the backbone classifier, BatchNorm folding, weight importers and cost counts.

What a graph is, is `config.ModelConfig`; how its BatchNorms run is
`blocks.BatchNorm`, an argument of every builder.
"""

from deeplabv3_tf.model.backbones import BACKBONE_NAME, build_backbone
from deeplabv3_tf.model.backbones.mobilenet_v3 import build_mobilenet_v3
from deeplabv3_tf.model.backbones.resnet import build_resnet
from deeplabv3_tf.model.blocks import BatchNorm
from deeplabv3_tf.model.classifier import build_classifier
from deeplabv3_tf.model.config import ModelConfig
from deeplabv3_tf.model.deeplabv3 import AUX_LOGITS, LOGITS, LOGITS_LAYER, build_deeplabv3

__all__ = ["AUX_LOGITS", "BACKBONE_NAME", "LOGITS", "LOGITS_LAYER", "BatchNorm", "ModelConfig",
           "build_backbone", "build_classifier", "build_deeplabv3", "build_mobilenet_v3",
           "build_resnet"]

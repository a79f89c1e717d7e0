"""DeepLabv3 model: dilated ResNet or MobileNetV3 backbone, ASPP head, weight loading."""

from deeplabv3_tf.model.backbone import BACKBONE_NAME, build_resnet
from deeplabv3_tf.model.backbones import build_backbone
from deeplabv3_tf.model.deeplabv3 import AUX_LOGITS, LOGITS, LOGITS_LAYER, build_deeplabv3
from deeplabv3_tf.model.mobilenet_v3 import build_mobilenet_v3

__all__ = ["AUX_LOGITS", "BACKBONE_NAME", "LOGITS", "LOGITS_LAYER", "build_backbone",
           "build_deeplabv3", "build_mobilenet_v3", "build_resnet"]

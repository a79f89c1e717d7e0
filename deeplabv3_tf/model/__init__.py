"""DeepLabv3 model: dilated ResNet backbone, ASPP head, weight loading."""

from deeplabv3_tf.model.backbone import BACKBONE_NAME, build_resnet
from deeplabv3_tf.model.deeplabv3 import LOGITS_LAYER, build_deeplabv3

__all__ = ["BACKBONE_NAME", "LOGITS_LAYER", "build_deeplabv3", "build_resnet"]

"""DeepLabv3 model: dilated ResNet backbone, ASPP head, weight loading."""

from deeplabv3_tf.model.backbone import BACKBONE_NAME, build_resnet
from deeplabv3_tf.model.deeplabv3 import AUX_LOGITS, LOGITS, LOGITS_LAYER, build_deeplabv3

__all__ = ["AUX_LOGITS", "BACKBONE_NAME", "LOGITS", "LOGITS_LAYER", "build_deeplabv3",
           "build_resnet"]

"""DeepLabv3: a dilated backbone (ResNet or MobileNetV3) + ASPP with image-level
features (paper §3.3); DeepLabv3+ with its decoder (`config.decoder`).

Layer names (the checkpoint contract; backbone names in `backbones/`):

  backbone                          the nested backbone model (ResNet or MobileNetV3)
  aspp_0_{conv,bn,relu}             1x1 branch
  aspp_{1,2,3}_{conv,bn,relu}       3x3 atrous branches (config.effective_aspp_rates)
  aspp_pool_mean                    global mean over the feature map
  aspp_pool_{conv,bn,relu}          1x1 conv of the image-level features
  aspp_pool_resize                  back to the feature map size (float32)
  aspp_concat
  aspp_project_{conv,bn,relu}       1x1 projection of the concatenation
  dropout
  decoder_*                         DeepLabv3+'s decoder (config.decoder; decoders.py)
  head_{conv,bn,relu}               3x3 conv before the logits (config.head_filters > 0)
  logits                            1x1 conv to num_classes, with bias (float32),
                                    at the output stride (at stride 4 with the decoder)
  logits_resize                     bilinear upsampling to the input size (float32)
  aux_{conv,bn,relu}, aux_dropout, aux_logits, aux_logits_resize
                                    auxiliary FCN head on the backbone's aux endpoint
                                    (config.aux_head; backbones.aux_endpoint)

`logits` and `aux_logits` are the only layers whose shapes depend on
num_classes: they are skipped when initialising from a checkpoint with another
number of classes.
"""

from __future__ import annotations

import keras

from deeplabv3_tf.model.backbones import (
    BACKBONE_NAME, aux_endpoint, build_backbone, feature_endpoint)
from deeplabv3_tf.model.blocks import BatchNorm, Norm, conv_bn
from deeplabv3_tf.model.config import ModelConfig
from deeplabv3_tf.model.decoders import decode
from deeplabv3_tf.model.layers import ResizeLike

LOGITS_LAYER = "logits"
AUX_LOGITS_LAYER = "aux_logits"
# Output keys of a model built with its auxiliary head.
LOGITS, AUX_LOGITS = "logits", "aux_logits"


def aspp(features, config: ModelConfig, norm: Norm, name: str = "aspp"):
    """Atrous Spatial Pyramid Pooling with image-level features (paper §3.3).

    Args:
      features: float [B, h, w, C] backbone output.
      config: Model config: filters, rates, image pooling.
      norm: The BatchNorm of every conv.
      name: Layer-name prefix.

    Returns:
      float [B, h, w, config.aspp_filters], after the 1x1 projection.
    """
    filters = config.aspp_filters
    branches = [conv_bn(features, filters, 1, norm, f"{name}_0")]
    for i, rate in enumerate(config.effective_aspp_rates, start=1):
        branches.append(conv_bn(features, filters, 3, norm, f"{name}_{i}",
                                dilation_rate=rate))
    if config.image_pooling:
        pooled = keras.layers.GlobalAveragePooling2D(
            keepdims=True, name=f"{name}_pool_mean")(features)
        pooled = conv_bn(pooled, filters, 1, norm, f"{name}_pool")
        # Bilinear upsampling of a 1x1 map is a broadcast; it runs in float32.
        pooled = ResizeLike(name=f"{name}_pool_resize")([pooled, features])
        branches.append(pooled)
    x = keras.layers.Concatenate(name=f"{name}_concat")(branches)
    return conv_bn(x, filters, 1, norm, f"{name}_project")


def fcn_head(features, config: ModelConfig, norm: Norm, name: str = "aux"):
    """torchvision's FCNHead, the auxiliary classifier.

    Args:
      features: float [B, h, w, C] (the backbone's aux endpoint).
      config: Model config (classes).
      norm: The BatchNorm of its conv.
      name: Layer-name prefix.

    Returns:
      float32 logits [B, h, w, num_classes].
    """
    x = conv_bn(features, features.shape[-1] // 4, 3, norm, name)
    x = keras.layers.Dropout(0.1, name=f"{name}_dropout")(x)
    return keras.layers.Conv2D(config.num_classes, 1, name=AUX_LOGITS_LAYER,
                               dtype="float32")(x)


def build_deeplabv3(config: ModelConfig, input_shape=(None, None, 3),
                    name: str = "deeplabv3", include_aux: bool | None = None,
                    batch_norm: BatchNorm = BatchNorm()) -> keras.Model:
    """Builds DeepLabv3 (its cascade variant, or DeepLabv3+) as a functional Keras model.

    Args:
      config: Model config. Output stride, ASPP rates and multi-grid only
        change the graph, not the variables: weights trained at one output
        stride load into a model built at another.
      input_shape: Shape of one image, [H, W, 3]; H and W may be None.
      name: Model name.
      include_aux: Build the auxiliary head (default: `config.aux_head`).
        Inference builds without it; weights still move by layer name.
      batch_norm: How its BatchNorms run: synchronised, frozen or folded
        (`blocks.BatchNorm`; not part of the config, so not of the checkpoint).

    Returns:
      A `keras.Model` mapping float RGB images [B, H, W, 3] with values in
      [0, 255] (any H, W) to float32 logits [B, H, W, num_classes]; with the
      auxiliary head, to a dict {LOGITS: ..., AUX_LOGITS: ...} of such logits.

    Example:
      >>> cfg = ModelConfig(depth=14, base_width=8, multi_grid=(1,),
      ...                   aspp_filters=16)
      >>> build_deeplabv3(cfg)(np.zeros((2, 97, 131, 3))).shape
      TensorShape([2, 97, 131, 21])
    """
    backbone = build_backbone(config, input_shape, name=BACKBONE_NAME, batch_norm=batch_norm)
    norm = Norm.of(config, batch_norm)
    images = keras.Input(shape=input_shape, name="images")
    endpoints = backbone(images)
    features = endpoints[feature_endpoint(config)]
    if config.use_aspp:
        features = aspp(features, config, norm)
    x = keras.layers.Dropout(config.dropout_rate, name="dropout")(features)
    x = decode(x, endpoints, config, norm)
    if config.head_filters:
        x = conv_bn(x, config.head_filters, 3, norm, "head")
    # float32: the softmax/cross-entropy on these logits needs full precision.
    logits = keras.layers.Conv2D(config.num_classes, 1, name=LOGITS_LAYER,
                                 dtype="float32")(x)
    logits = ResizeLike(name="logits_resize")([logits, images])
    if config.aux_head if include_aux is None else include_aux:
        if not config.aux_head:
            raise ValueError("include_aux=True needs a config with aux_head=True.")
        aux = fcn_head(endpoints[aux_endpoint(config)], config, norm)
        aux = ResizeLike(name="aux_logits_resize")([aux, images])
        return keras.Model(images, {LOGITS: logits, AUX_LOGITS: aux}, name=name)
    return keras.Model(images, logits, name=name)


def main_output(model: keras.Model) -> keras.Model:
    """`model` itself, or, when it has an auxiliary head, the view of it that
    returns only the main logits (same layers and variables)."""
    if isinstance(model.output, dict):
        return keras.Model(model.input, model.output[LOGITS], name=model.name)
    return model

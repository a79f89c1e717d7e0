"""Decoders: what runs between the encoder (backbone + ASPP) and the logits.

  none            DeepLabv3: the logits read the encoder's features at the
                  output stride, then are upsampled to the input (paper §3.3)
  deeplabv3plus   DeepLabv3+ (Chen et al. 2018, arXiv 1802.02611, §3.1):
                  stride-4 features of the backbone, projected to 48 channels,
                  concatenated with the encoder's features upsampled to them,
                  refined by two 3x3 convs of 256 channels; the logits are
                  computed at stride 4, then upsampled to the input

A new decoder is a function here and one line in `DECODERS`; the backbone
record names the endpoint it reads (`Backbone.low_level_endpoint`).

Where the paper and research/deeplab (`model.py: refine_by_decoder`) are
followed, and where not:
  - 1x1 conv to `decoder_low_level_filters` (48, paper Table 1) + BN + ReLU on
    the low-level features; two 3x3 convs of `decoder_filters` (256, Table 2)
    + BN + ReLU; no dropout in the decoder (research/deeplab); the concat
    puts the encoder's features first (research/deeplab's order).
  - `decoder_separable`: each 3x3 conv becomes research/deeplab's
    `split_separable_conv2d` (`decoder_use_separable_conv`): depthwise 3x3 +
    BN + ReLU, then pointwise 1x1 + BN + ReLU.
  - The encoder's features are resized to the low-level features' size
    (bilinear with half-pixel centres, as every resize of this package);
    research/deeplab resizes with align_corners=True.
  - ResNet: the paper's "Conv2 (before striding)", the output of stage 2
    ("c2", after its last unit's ReLU), as keras-hub and mmsegmentation tap
    it. research/deeplab reads `block1/unit_2/bottleneck_v1/conv3`, the
    residual branch of the last stride-4 unit before the sum: its slim
    ResNet strides in block1's last unit, so unit_2 is the last at stride 4.
  - MobileNetV3: research/deeplab's `layer_4/depthwise_output`, the depthwise
    activation of stage 2's last block (72 channels); the paper has no
    MobileNet.

Layer names (the checkpoint contract):

  decoder_project_{conv,bn,relu}     1x1 projection of the low-level features
  decoder_features_resize            encoder features to the low-level size (float32)
  decoder_concat
  decoder_{0,1}_{conv,bn,relu}       the two 3x3 convs
  decoder_{0,1}_depthwise_{conv,bn,relu}, decoder_{0,1}_pointwise_{conv,bn,relu}
                                     the same, separable (`decoder_separable`)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import keras

from deeplabv3_tf.model.backbones import low_level_endpoint
from deeplabv3_tf.model.blocks import Norm, conv_bn, separable_conv_bn
from deeplabv3_tf.model.layers import ResizeLike

if TYPE_CHECKING:  # annotations only: config.py imports this module
    from deeplabv3_tf.model.config import ModelConfig

NONE, DEEPLABV3PLUS = "none", "deeplabv3plus"
NUM_DECODER_CONVS = 2  # paper Table 2


def deeplabv3plus(features, endpoints: dict, config: ModelConfig, norm: Norm):
    """The DeepLabv3+ decoder.

    Args:
      features: float [B, h, w, C], the encoder's output (after its dropout).
      endpoints: The backbone's endpoints; reads `low_level_endpoint(config)`,
        float [B, ceil(H/4), ceil(W/4), C_low].
      config: Model config: decoder widths, separable convs.
      norm: The BatchNorm of every conv.

    Returns:
      float [B, ceil(H/4), ceil(W/4), config.decoder_filters].
    """
    low_level = endpoints[low_level_endpoint(config)]
    low_level = conv_bn(low_level, config.decoder_low_level_filters, 1, norm,
                        "decoder_project")
    features = ResizeLike(name="decoder_features_resize")([features, low_level])
    x = keras.layers.Concatenate(name="decoder_concat")([features, low_level])
    for i in range(NUM_DECODER_CONVS):
        if config.decoder_separable:
            x = separable_conv_bn(x, config.decoder_filters, 3, norm, f"decoder_{i}")
        else:
            x = conv_bn(x, config.decoder_filters, 3, norm, f"decoder_{i}")
    return x


# name -> (encoder features, endpoints, config, norm) -> the features the logits read;
# None: the encoder's features themselves.
DECODERS: dict[str, Callable | None] = {
    NONE: None,
    DEEPLABV3PLUS: deeplabv3plus,
}


# What a model with each decoder is called (paper figures, messages).
ARCHITECTURE_NAMES = {NONE: "DeepLabv3", DEEPLABV3PLUS: "DeepLabv3+"}


def decode(features, endpoints: dict, config: ModelConfig, norm: Norm):
    """The features the logits read: `config.decoder` applied to the encoder's."""
    decoder = DECODERS[config.decoder]
    return features if decoder is None else decoder(features, endpoints, config, norm)

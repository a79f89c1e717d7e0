"""Dilated MobileNetV3-Large backbone, as torchvision defines it, as a Keras functional model.

torchvision's `mobilenet_v3_large(dilated=True)` (Howard et al. 2019, Table 1):
a 3x3/2 stem with hard-swish, 15 inverted residual blocks (1x1 expansion,
depthwise kxk, squeeze-and-excitation on some, 1x1 linear projection, residual
add when shape allows) and a last 1x1 conv to 6 x 160 = 960 channels.

Stages are named by nominal stride, as the ResNet's (backbone.py):

  stage  blocks (torchvision features[i])  channels  nominal stride
  c1     conv1 (0), block 1 (1)            16        2
  c2     blocks 1-2 (2-3)                  24        4
  c3     blocks 1-3 (4-6)                  40        8
  c4     blocks 1-6 (7-12)                 80, 112   16
  c5     blocks 1-3 (13-15), last (16)     160, 960  32

Output stride: a stage whose stride would pass `config.output_stride` keeps
stride 1 and dilates every depthwise conv of the stage, its first included
(torchvision's `dilated=True`, which is output stride 16: c5 at rate 2).
Output stride 8 dilates c4 too (rate 2) and c5 at rate 4; the same weights
run at either, as with the ResNet; 32 dilates nothing.

Layer names (the checkpoint contract):

  normalize                               input normalisation (config.normalization)
  conv1_pad, conv1_conv, conv1_bn, conv1_act      stem, 3x3/2, hard-swish
  conv{s}_block{u}_expand_{conv,bn,act}   1x1 expansion (absent where the block
                                          does not expand: conv1_block1)
  conv{s}_block{u}_dw_{pad,conv,bn,act}   depthwise kxk (pad: strided only)
  conv{s}_block{u}_se_{pool,reduce,relu,expand,gate,scale}
                                          squeeze-and-excitation (reduce and expand
                                          are 1x1 convs with bias; gate hard-sigmoid)
  conv{s}_block{u}_project_{conv,bn}      1x1 linear projection
  conv{s}_block{u}_add                    residual sum (stride 1, same channels)
  conv5_last_{conv,bn,act}                1x1 conv to 960 channels, hard-swish

Endpoints: "c1".."c5" (stage outputs; c5 after conv5_last) and
"c3_block1", the output of stage 3's first (strided) block, which is where
torchvision's DeepLabv3 taps its auxiliary head (`stage_indices[-4]`,
features[4]).

BatchNorm epsilon is MobileNetV3's 1e-3 (torchvision, keras.applications) in
the backbone, whatever `config.bn_epsilon` (the head's) is.
"""

from __future__ import annotations

import dataclasses

import keras

from deeplabv3_tf.config import ModelConfig
from deeplabv3_tf.model.backbone import BACKBONE_NAME, batch_norm, conv_bn, symmetric_padding
from deeplabv3_tf.model.layers import InputNormalization, ResidualAdd

BN_EPSILON = 1e-3
AUX_ENDPOINT = "c3_block1"
RELU, HARD_SWISH = "relu", "hard_swish"

# torchvision's inverted_residual_setting for mobilenet_v3_large at width 1.0, by
# stage: (kernel, expanded channels, output channels, squeeze-excite, activation,
# stride). Each stage's first block carries its stride.
STAGES = (
    ("c1", ((3, 16, 16, False, RELU, 1),)),
    ("c2", ((3, 64, 24, False, RELU, 2), (3, 72, 24, False, RELU, 1))),
    ("c3", ((5, 72, 40, True, RELU, 2), (5, 120, 40, True, RELU, 1),
            (5, 120, 40, True, RELU, 1))),
    ("c4", ((3, 240, 80, False, HARD_SWISH, 2), (3, 200, 80, False, HARD_SWISH, 1),
            (3, 184, 80, False, HARD_SWISH, 1), (3, 184, 80, False, HARD_SWISH, 1),
            (3, 480, 112, True, HARD_SWISH, 1), (3, 672, 112, True, HARD_SWISH, 1))),
    ("c5", ((5, 672, 160, True, HARD_SWISH, 2), (5, 960, 160, True, HARD_SWISH, 1),
            (5, 960, 160, True, HARD_SWISH, 1))),
)
STEM_CHANNELS = 16
LAST_CHANNELS_FACTOR = 6  # the last 1x1 conv: 6 x the last block's channels
CLASSIFIER_HIDDEN = 1280  # the ImageNet classifier's hidden layer (model/classifier.py)


def make_divisible(value: float, divisor: int = 8) -> int:
    """torchvision's _make_divisible: the nearest multiple of `divisor`, never
    below `divisor` nor more than 10 % below `value`."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def channels(value: int, config: ModelConfig) -> int:
    """A width of the table scaled by config.width_multiplier."""
    return make_divisible(value * config.width_multiplier)


def block_plan(config: ModelConfig) -> list[dict]:
    """Every inverted residual block with its channels, stride and rate, in order.

    Returns:
      One dict per block: name ("conv3_block1"), stage ("c3"), kernel,
      input, expanded, output (channels, scaled), se (squeeze channels or 0),
      activation, stride (after dilation), rate.
    """
    current_stride, rate = 2, 1  # after the stem
    previous = channels(STEM_CHANNELS, config)
    plan = []
    for s, (stage, blocks) in enumerate(STAGES, start=1):
        for u, (kernel, expanded, out, se, activation, stride) in enumerate(blocks, start=1):
            if stride > 1:
                if current_stride * stride > config.output_stride:
                    rate *= stride
                    stride = 1
                else:
                    current_stride *= stride
            expanded_channels = channels(expanded, config)
            plan.append(dict(
                name=f"conv{s}_block{u}", stage=stage, kernel=kernel, input=previous,
                expanded=expanded_channels, output=channels(out, config),
                se=make_divisible(expanded_channels // 4) if se else 0,
                activation=activation, stride=stride, rate=rate))
            previous = channels(out, config)
    return plan


def last_channels(config: ModelConfig) -> int:
    """Channels of c5 (the last 1x1 conv's output: 960 at width 1.0)."""
    return LAST_CHANNELS_FACTOR * channels(STAGES[-1][1][-1][2], config)


def _activation(x, activation: str | None, name: str):
    if activation == RELU:
        return keras.layers.ReLU(name=f"{name}_act")(x)
    if activation == HARD_SWISH:
        return keras.layers.Activation("hard_swish", name=f"{name}_act")(x)
    return x


def conv_bn_act(x, filters: int, kernel: int, config: ModelConfig, name: str,
                activation: str | None, strides: int = 1, depthwise: bool = False,
                rate: int = 1):
    """Conv (or depthwise conv) + BN (+ activation): `{name}_{pad,conv,bn,act}`,
    padded as the ResNet's convs (`backbone.symmetric_padding`, which is
    torchvision's (kernel - 1) // 2 * rate a side for odd kernels); with
    config.fold_bn the conv has a bias and there is no BN."""
    if not depthwise:
        x = conv_bn(x, filters, kernel, config, name, strides=strides, dilation_rate=rate,
                    relu=False)
        return _activation(x, activation, name)
    x, padding = symmetric_padding(x, kernel, strides, rate, name)
    x = keras.layers.DepthwiseConv2D(
        kernel, strides=strides, padding=padding, dilation_rate=rate,
        use_bias=config.fold_bn, depthwise_initializer="he_normal", name=f"{name}_conv")(x)
    if not config.fold_bn:
        x = batch_norm(x, config, f"{name}_bn")
    return _activation(x, activation, name)


def squeeze_excite(x, squeeze: int, name: str):
    """torchvision's SqueezeExcitation with a hard-sigmoid gate: x * gate(mean(x))."""
    width = x.shape[-1]
    s = keras.layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_pool")(x)
    s = keras.layers.Conv2D(squeeze, 1, name=f"{name}_reduce")(s)
    s = keras.layers.ReLU(name=f"{name}_relu")(s)
    s = keras.layers.Conv2D(width, 1, name=f"{name}_expand")(s)
    s = keras.layers.Activation("hard_sigmoid", name=f"{name}_gate")(s)
    return keras.layers.Multiply(name=f"{name}_scale")([x, s])


def inverted_residual(x, block: dict, config: ModelConfig):
    """One MobileNetV3 block (see `block_plan` for `block`).

    Returns:
      float [B, ceil(H / stride), ceil(W / stride), block["output"]].
    """
    name, activation = block["name"], block["activation"]
    y = x
    if block["expanded"] != block["input"]:
        y = conv_bn_act(y, block["expanded"], 1, config, f"{name}_expand", activation)
    y = conv_bn_act(y, block["expanded"], block["kernel"], config, f"{name}_dw", activation,
                    strides=block["stride"], depthwise=True, rate=block["rate"])
    if block["se"]:
        y = squeeze_excite(y, block["se"], f"{name}_se")
    y = conv_bn_act(y, block["output"], 1, config, f"{name}_project", None)
    if block["stride"] == 1 and block["input"] == block["output"]:
        y = ResidualAdd(name=f"{name}_add")([x, y])
    return y


def build_mobilenet_v3(config: ModelConfig, input_shape=(None, None, 3),
                       name: str = BACKBONE_NAME) -> keras.Model:
    """Builds the dilated MobileNetV3-Large backbone.

    Args:
      config: Model config (width_multiplier, output_stride, normalization,
        BN momentum and sync; see the module docstring for BN epsilon).
      input_shape: Shape of one image; H and W may be None.
      name: Model name.

    Returns:
      A `keras.Model` mapping float32 RGB [B, H, W, 3] in [0, 255] to a dict of
      endpoints {"c1": [B, ceil(H/2), ceil(W/2), 16], ..., "c5": [B, ceil(H/os),
      ceil(W/os), 960], "c3_block1": [B, ceil(H/8), ceil(W/8), 40]} (channels
      at width 1.0; strides at most `config.output_stride`).

    Example:
      >>> cfg = ModelConfig(backbone="mobilenet_v3_large", width_multiplier=0.25)
      >>> build_mobilenet_v3(cfg)(np.zeros((1, 97, 131, 3)))["c5"].shape
      TensorShape([1, 7, 9, 240])
    """
    config = dataclasses.replace(config, bn_epsilon=BN_EPSILON)
    images = keras.Input(shape=input_shape, name="images")
    x = InputNormalization(config.normalization, name="normalize")(images)
    x = conv_bn_act(x, channels(STEM_CHANNELS, config), 3, config, "conv1", HARD_SWISH,
                    strides=2)
    endpoints = {}
    plan = block_plan(config)
    for i, block in enumerate(plan):
        x = inverted_residual(x, block, config)
        if block["name"] == "conv3_block1":
            endpoints[AUX_ENDPOINT] = x
        if i + 1 == len(plan) or plan[i + 1]["stage"] != block["stage"]:
            endpoints[block["stage"]] = x
    endpoints["c5"] = conv_bn_act(x, last_channels(config), 1, config, "conv5_last", HARD_SWISH)
    return keras.Model(images, endpoints, name=name)

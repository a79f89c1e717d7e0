"""Dilated MobileNetV3-Large backbone, as torchvision defines it, as a Keras functional model.

torchvision's `mobilenet_v3_large(dilated=True)` (Howard et al. 2019, Table 1):
a 3x3/2 stem with hard-swish, 15 inverted residual blocks (1x1 expansion,
depthwise kxk, squeeze-and-excitation on some, 1x1 linear projection, residual
add when shape allows) and a last 1x1 conv to 6 x 160 = 960 channels.

Stages are named by nominal stride, as the ResNet's (resnet.py):

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

Endpoints: "c1".."c5" (stage outputs; c5 after conv5_last);
"c3_block1", the output of stage 3's first (strided) block, which is where
torchvision's DeepLabv3 taps its auxiliary head (`stage_indices[-4]`,
features[4]); and "c2_depthwise", the depthwise activation of stage 2's last
block, where research/deeplab's DeepLabv3+ decoder reads the stride-4 features.

BatchNorm epsilon is MobileNetV3's 1e-3 (torchvision, keras.applications) in
the backbone, whatever `config.bn_epsilon` (the head's) is.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import keras

from deeplabv3_tf.model.backbones.base import BACKBONE_NAME, Backbone, TorchvisionLayout
from deeplabv3_tf.model.blocks import BatchNorm, Norm, conv_bn, depthwise_conv_bn
from deeplabv3_tf.model.layers import InputNormalization, ResidualAdd

if TYPE_CHECKING:  # annotations only: config.py imports the backbones
    from deeplabv3_tf.model.config import ModelConfig

NAME = "mobilenet_v3_large"

BN_EPSILON = 1e-3
AUX_ENDPOINT = "c3_block1"
# What the DeepLabv3+ decoder reads: the depthwise conv's output in the last
# block at stride 4 (research/deeplab's mobilenet_v3_large_seg decoder end
# point, layer_4/depthwise_output), 72 channels at width 1.0.
LOW_LEVEL_ENDPOINT = "c2_depthwise"
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


def conv_bn_act(x, filters: int, kernel: int, norm: Norm, name: str,
                activation: str | None, strides: int = 1, depthwise: bool = False,
                rate: int = 1):
    """Conv (or depthwise conv) + BN (+ activation): `{name}_{pad,conv,bn,act}`,
    padded as the ResNet's convs (`blocks.symmetric_padding`, which is
    torchvision's (kernel - 1) // 2 * rate a side for odd kernels); with a
    folded `norm` the conv has a bias and there is no BN."""
    if not depthwise:
        x = conv_bn(x, filters, kernel, norm, name, strides=strides, dilation_rate=rate,
                    relu=False)
        return _activation(x, activation, name)
    x = depthwise_conv_bn(x, kernel, norm, name, strides=strides, dilation_rate=rate)
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


def inverted_residual(x, block: dict, norm: Norm):
    """One MobileNetV3 block (see `block_plan` for `block`).

    Returns:
      (output, depthwise): float [B, ceil(H / stride), ceil(W / stride),
      block["output"]] and the depthwise conv's activation (block["expanded"]
      channels), which the DeepLabv3+ decoder reads at stride 4.
    """
    name, activation = block["name"], block["activation"]
    y = x
    if block["expanded"] != block["input"]:
        y = conv_bn_act(y, block["expanded"], 1, norm, f"{name}_expand", activation)
    y = depthwise = conv_bn_act(y, block["expanded"], block["kernel"], norm, f"{name}_dw",
                                activation, strides=block["stride"], depthwise=True,
                                rate=block["rate"])
    if block["se"]:
        y = squeeze_excite(y, block["se"], f"{name}_se")
    y = conv_bn_act(y, block["output"], 1, norm, f"{name}_project", None)
    if block["stride"] == 1 and block["input"] == block["output"]:
        y = ResidualAdd(name=f"{name}_add")([x, y])
    return y, depthwise


def build_mobilenet_v3(config: ModelConfig, input_shape=(None, None, 3),
                       name: str = BACKBONE_NAME,
                       batch_norm: BatchNorm = BatchNorm()) -> keras.Model:
    """Builds the dilated MobileNetV3-Large backbone.

    Args:
      config: Model config (width_multiplier, output_stride, normalization,
        BN momentum; see the module docstring for BN epsilon).
      input_shape: Shape of one image; H and W may be None.
      name: Model name.
      batch_norm: How its BatchNorms run (`blocks.BatchNorm`).

    Returns:
      A `keras.Model` mapping float32 RGB [B, H, W, 3] in [0, 255] to a dict of
      endpoints {"c1": [B, ceil(H/2), ceil(W/2), 16], ..., "c5": [B, ceil(H/os),
      ceil(W/os), 960], "c3_block1": [B, ceil(H/8), ceil(W/8), 40],
      "c2_depthwise": [B, ceil(H/4), ceil(W/4), 72]} (channels
      at width 1.0; strides at most `config.output_stride`).

    Example:
      >>> cfg = ModelConfig(backbone="mobilenet_v3_large", width_multiplier=0.25)
      >>> build_mobilenet_v3(cfg)(np.zeros((1, 97, 131, 3)))["c5"].shape
      TensorShape([1, 7, 9, 240])
    """
    norm = Norm.of(config, batch_norm, epsilon=BN_EPSILON)
    images = keras.Input(shape=input_shape, name="images")
    x = InputNormalization(config.normalization, name="normalize")(images)
    x = conv_bn_act(x, channels(STEM_CHANNELS, config), 3, norm, "conv1", HARD_SWISH,
                    strides=2)
    endpoints = {}
    plan = block_plan(config)
    for i, block in enumerate(plan):
        x, depthwise = inverted_residual(x, block, norm)
        if block["name"] == "conv3_block1":
            endpoints[AUX_ENDPOINT] = x
        if i + 1 == len(plan) or plan[i + 1]["stage"] != block["stage"]:
            endpoints[block["stage"]] = x
            if block["stage"] == "c2":
                endpoints[LOW_LEVEL_ENDPOINT] = depthwise
    endpoints["c5"] = conv_bn_act(x, last_channels(config), 1, norm, "conv5_last", HARD_SWISH)
    return keras.Model(images, endpoints, name=name)


def check(config: ModelConfig) -> None:
    """Refuses ResNet-only settings."""
    if config.num_cascade_blocks:
        raise ValueError("num_cascade_blocks repeats ResNet blocks; the "
                         f"{config.backbone} backbone has none.")


def describe(config: ModelConfig) -> str:
    width = "" if config.width_multiplier == 1.0 else f" x{config.width_multiplier:g}"
    return f"MobileNetV3-Large{width}"


def classifier_head(x, config: ModelConfig):
    """MobileNetV3's ImageNet classifier before its logits: a hidden layer with
    hard-swish, then dropout 0.2 (`classifier_hidden`, `classifier_dropout`)."""
    x = keras.layers.Dense(channels(CLASSIFIER_HIDDEN, config), activation="hard_swish",
                           name="classifier_hidden")(x)
    return keras.layers.Dropout(0.2, name="classifier_dropout")(x)


# ----------------------------------------------------------------------------
# torchvision's names (model/weights/torchvision.py reads them through BACKBONE).
#
#   features.0.{0,1}                  conv1_conv, conv1_bn
#   features.{i}.block.{k}.{0,1}      conv{s}_block{u}_{expand,dw,project}_{conv,bn}
#                                     (block i of `block_plan`; k counts the
#                                     block's parts in order)
#   features.{i}.block.{k}.fc{1,2}    conv{s}_block{u}_se_{reduce,expand}
#   features.16.{0,1}                 conv5_last_conv, conv5_last_bn
#   classifier.0, classifier.3        classifier_hidden, classifier
#
# DeepLabv3's IntermediateLayerGetter keeps `features.{i}` as `backbone.{i}`.

FEATURE_MODULES = 17  # features[0] (stem), 15 blocks, features[16] (last conv)


def torchvision_modules(config: ModelConfig) -> dict[str, str]:
    """Keras layer name -> torchvision `features` module (no prefix).

    features[i] is block i (1..15) of `block_plan`, in order; inside it,
    `block.k` counts the block's parts: expansion (if any), depthwise,
    squeeze-excite (if any), projection. A conv part's conv and BN are `.0`
    and `.1`; squeeze-excite's convs are `fc1`, `fc2`.
    """
    names = {"conv1_conv": "0.0", "conv1_bn": "0.1"}
    plan = block_plan(config)
    for index, block in enumerate(plan, start=1):
        parts = ((["expand"] if block["expanded"] != block["input"] else []) + ["dw"]
                 + (["se"] if block["se"] else []) + ["project"])
        for k, part in enumerate(parts):
            module = f"{index}.block.{k}"
            if part == "se":
                names[f"{block['name']}_se_reduce"] = f"{module}.fc1"
                names[f"{block['name']}_se_expand"] = f"{module}.fc2"
            else:
                names[f"{block['name']}_{part}_conv"] = f"{module}.0"
                names[f"{block['name']}_{part}_bn"] = f"{module}.1"
    names["conv5_last_conv"] = f"{len(plan) + 1}.0"
    names["conv5_last_bn"] = f"{len(plan) + 1}.1"
    return names


def _torchvision_module(name: str, config: ModelConfig) -> str | None:
    return torchvision_modules(config).get(name)


def _check_state_dict(state_dict: dict, prefix: str, fields: dict, architecture: str,
                      source: str) -> None:
    found = {int(m.group(1)) for k in state_dict
             if (m := re.match(rf"{re.escape(prefix)}(\d+)\.", k))}
    stem = state_dict.get(f"{prefix}0.0.weight")
    if len(found) != FEATURE_MODULES or stem is None or stem.shape[0] != 16:
        raise ValueError(
            f"{source}: the backbone has {len(found)} feature modules"
            + ("" if stem is None else f" and a {stem.shape[0]}-channel stem")
            + f"; {architecture} (width 1.0) has {FEATURE_MODULES} and 16; check --arch.")


BACKBONE = Backbone(
    name=NAME,
    build=build_mobilenet_v3,
    check=check,
    describe=describe,
    # torchvision's deeplabv3_mobilenet_v3_large uses 12, 24, 36 at output stride 16.
    aspp_rates_at_os16=(12, 24, 36),
    aux_endpoint=lambda config: AUX_ENDPOINT,
    low_level_endpoint=lambda config: LOW_LEVEL_ENDPOINT,
    weight_fields=("width_multiplier",),
    classifier_head=classifier_head,
    torchvision=TorchvisionLayout(
        architectures={"mobilenet_v3_large": {}},
        published={
            "deeplabv3_mobilenet_v3_large": {
                "weights": "DeepLabV3_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1",
                "url": "https://download.pytorch.org/models/deeplabv3_mobilenet_v3_large-fc3c493d.pth",
                "file_mb": 42.301,
                "reported": "COCO val2017 (VOC classes): mIoU 60.3, pixel accuracy 91.2; "
                            "11,029,328 parameters, 10.452 GMACs at 520x520",
            },
            "mobilenet_v3_large": {
                "weights": "MobileNet_V3_Large_Weights.IMAGENET1K_V2",
                "url": "https://download.pytorch.org/models/mobilenet_v3_large-5c1a4163.pth",
                "file_mb": 21.1,
                "reported": "ImageNet-1k val: top-1 75.274",
            },
        },
        classifier_prefix="features.",
        classifier_modules={"classifier_hidden": "classifier.0", "classifier": "classifier.3"},
        module_of=_torchvision_module,
        check_state_dict=_check_state_dict,
        deeplabv3_output_stride=16),
)

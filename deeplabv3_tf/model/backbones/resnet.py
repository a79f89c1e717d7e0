"""Dilated ResNet v1 backbone (paper §3.1-3.2) as a Keras functional model.

Layer names follow keras.applications' ResNets, so that ImageNet weights map
by name and the names double as the checkpoint contract:

  normalize                           input normalisation (config.normalization)
  conv1_pad, conv1_conv, conv1_bn, conv1_relu
                                      stem "v0": 7x7/2 conv
  conv1_{1,2,3}_{pad,conv,bn,relu}    stem "v1": three 3x3 convs, first one /2
  pool1_pad, pool1_pool               3x3/2 max pool
  conv{s}_block{u}_{i}_{pad,conv,bn,relu}
                                      stage s (2..5, the paper's block1..block4;
                                      6..8 are the cascaded block5..block7),
                                      unit u (from 1), conv i (1: 1x1, 2: 3x3,
                                      3: 1x1 expansion; 0: projection shortcut)
  conv{s}_block{u}_add, conv{s}_block{u}_out
                                      residual sum and its ReLU

Endpoints are keyed by stage, "c2".."c5" (and "c6".."c8" with cascaded
blocks), not by stride: with atrous convolution the two differ.

Padding: every strided conv with a kernel larger than 1 pads explicitly and
symmetrically, then runs "valid" (as slim's conv2d_same and keras.applications'
ZeroPadding2D). TF's "same" padding puts the extra row/column at the bottom and
right only when the size is even, which would make the features depend on the
parity of the input size. With this padding a stage maps n to ceil(n / 2).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import keras

from deeplabv3_tf.model.backbones.base import BACKBONE_NAME, Backbone, TorchvisionLayout
from deeplabv3_tf.model.blocks import BatchNorm, Norm, conv_bn
from deeplabv3_tf.model.layers import InputNormalization, ResidualAdd

if TYPE_CHECKING:  # annotations only: config.py imports the backbones
    from deeplabv3_tf.model.config import ModelConfig

NAME = "resnet"
# Bottleneck units per stage (conv2..conv5, the paper's block1..block4).
# 14 is a one-unit-per-stage network for tests and demos.
BLOCKS_PER_DEPTH = {
    14: (1, 1, 1, 1),
    26: (2, 2, 2, 2),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}
STEMS = ("v0", "v1")
# Nominal stride of each stage; stages past config.output_stride dilate instead.
STAGE_STRIDES = (1, 2, 2, 2)
STEM_STRIDE = 4


def bottleneck(x, filters: int, strides: int, dilation_rate: int,
               config: ModelConfig, norm: Norm, name: str):
    """ResNet v1 bottleneck unit: 1x1 -> 3x3 (atrous) -> 1x1 (4x), + shortcut.

    The shortcut is a 1x1 projection when the channels or the resolution
    change, the identity otherwise (as research/deeplab's resnet_v1).

    Args:
      x: float [B, H, W, C_in].
      filters: Width of the 1x1 and 3x3 convs; the unit outputs 4x filters.
      strides: 1 or 2; on the first 1x1 conv if config.stride_in_1x1, else on
        the 3x3 conv.
      dilation_rate: Atrous rate of the 3x3 conv.
      config: Model config (stride placement).
      norm: The BatchNorm of every conv.
      name: Layer-name prefix, e.g. "conv4_block3".

    Returns:
      float [B, ceil(H / strides), ceil(W / strides), 4 * filters].
    """
    out_channels = 4 * filters
    if x.shape[-1] != out_channels or strides != 1:
        shortcut = conv_bn(x, out_channels, 1, norm, f"{name}_0",
                           strides=strides, relu=False)
    else:
        shortcut = x
    stride_1x1, stride_3x3 = (strides, 1) if config.stride_in_1x1 else (1, strides)
    y = conv_bn(x, filters, 1, norm, f"{name}_1", strides=stride_1x1)
    y = conv_bn(y, filters, 3, norm, f"{name}_2", strides=stride_3x3,
                dilation_rate=dilation_rate)
    y = conv_bn(y, out_channels, 1, norm, f"{name}_3", relu=False)
    y = ResidualAdd(name=f"{name}_add")([shortcut, y])
    return keras.layers.ReLU(name=f"{name}_out")(y)


def stem(x, config: ModelConfig, norm: Norm):
    """Stride-4 root: a 7x7/2 conv ("v0") or three 3x3 convs ("v1"), then max pool."""
    width = config.base_width
    if config.stem == "v0":
        x = conv_bn(x, width, 7, norm, "conv1", strides=2)
    else:
        x = conv_bn(x, width, 3, norm, "conv1_1", strides=2)
        x = conv_bn(x, width, 3, norm, "conv1_2")
        x = conv_bn(x, 2 * width, 3, norm, "conv1_3")
    # Zero padding equals -inf padding here: the inputs are ReLU outputs.
    x = keras.layers.ZeroPadding2D(1, name="pool1_pad")(x)
    return keras.layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)


def stage_plan(config: ModelConfig) -> list[dict]:
    """Stride and per-unit atrous rates of every stage, in build order.

    Once the accumulated stride reaches `config.output_stride`, a stage's stride
    becomes 1 and the atrous rate is multiplied by it (paper §3.1). Every unit
    of a dilated stage uses the stage's rate; the last block (conv5) and every
    cascaded block multiply it by `config.multi_grid` (paper §3.2.1:
    multi_grid (1, 2, 4) at output stride 16 gives rates (2, 4, 8)). With
    `config.dilate_first_unit` False, the first unit of a stage keeps the
    rate the previous stage ended with (torchvision: conv4 at output stride 8
    runs rates (1, 2, 2, ...), conv5 (2, 4, 4)).

    Returns:
      One dict per stage: name ("conv2"..), endpoint ("c2"..), filters,
      units, stride, rates (a tuple, one per unit).
    """
    blocks = BLOCKS_PER_DEPTH[config.depth]
    num_stages = len(blocks) + config.num_cascade_blocks
    units = list(blocks) + [blocks[-1]] * config.num_cascade_blocks
    current_stride, rate = STEM_STRIDE, 1
    plan = []
    for i in range(num_stages):
        stride = STAGE_STRIDES[min(i, len(STAGE_STRIDES) - 1)]
        previous_rate = rate
        if current_stride * stride > config.output_stride:
            rate *= stride
            stride = 1
        else:
            current_stride *= stride
        multi_grid = config.multi_grid if i >= len(blocks) - 1 else (1,) * units[i]
        rates = [rate * m for m in multi_grid]
        if not config.dilate_first_unit:
            rates[0] = previous_rate * multi_grid[0]
        plan.append(dict(
            name=f"conv{i + 2}", endpoint=f"c{i + 2}",
            filters=config.base_width * 2 ** min(i, len(STAGE_STRIDES) - 1),
            units=units[i], stride=stride, rates=tuple(rates)))
    return plan


def build_resnet(config: ModelConfig, input_shape=(None, None, 3),
                 name: str = BACKBONE_NAME, batch_norm: BatchNorm = BatchNorm()) -> keras.Model:
    """Builds the dilated ResNet v1 backbone.

    Args:
      config: Model config (depth, width, stem, output stride, multi-grid...).
      input_shape: Shape of one image; H and W may be None.
      name: Model name; the segmentation model finds its backbone by it.
      batch_norm: How its BatchNorms run (`blocks.BatchNorm`).

    Returns:
      A `keras.Model` mapping float32 RGB [B, H, W, 3] in [0, 255] to a dict of
      endpoints {"c2": [B, ceil(H/4), ceil(W/4), 4 * base_width], ...,
      "c5": [B, ceil(H/os), ceil(W/os), 32 * base_width]} (plus c6..c8 with
      cascaded blocks), where os is the stage's accumulated stride, at most
      `config.output_stride`.

    Example:
      >>> cfg = ModelConfig(depth=14, base_width=8, multi_grid=(1,))
      >>> build_resnet(cfg)(np.zeros((1, 97, 131, 3)))["c5"].shape
      TensorShape([1, 7, 9, 256])
    """
    images = keras.Input(shape=input_shape, name="images")
    x = InputNormalization(config.normalization, name="normalize")(images)
    norm = Norm.of(config, batch_norm)
    x = stem(x, config, norm)
    endpoints = {}
    for stage in stage_plan(config):
        for u, rate in enumerate(stage["rates"]):
            x = bottleneck(
                x, stage["filters"], stage["stride"] if u == 0 else 1, rate,
                config, norm, name=f"{stage['name']}_block{u + 1}")
        endpoints[stage["endpoint"]] = x
    return keras.Model(images, endpoints, name=name)


def check(config: ModelConfig) -> None:
    """Refuses settings a ResNet has no meaning for, or cannot build."""
    if config.width_multiplier != 1.0:
        raise ValueError(f"width_multiplier={config.width_multiplier} is a MobileNetV3 "
                         "setting; a ResNet's width is base_width.")
    if config.depth not in BLOCKS_PER_DEPTH:
        raise ValueError(f"depth={config.depth} is not supported; choose one of "
                         f"{sorted(BLOCKS_PER_DEPTH)}.")
    if config.stem not in STEMS:
        raise ValueError(f"stem={config.stem!r} is not one of {STEMS}.")
    last_units = BLOCKS_PER_DEPTH[config.depth][-1]
    if len(config.multi_grid) != last_units or min(config.multi_grid) < 1:
        raise ValueError(
            f"multi_grid={config.multi_grid} must give one positive rate per unit of the "
            f"last block, which has {last_units} unit(s) at depth {config.depth}.")


# ----------------------------------------------------------------------------
# torchvision's names (model/weights/torchvision.py reads them through BACKBONE).
#
#   conv1, bn1                          conv1_conv, conv1_bn
#   layer{s-1}.{u-1}.conv{i}, .bn{i}    conv{s}_block{u}_{i}_conv, _bn
#   layer{s-1}.{u-1}.downsample.{0,1}   conv{s}_block{u}_0_conv, _bn
#   fc                                  classifier

_UNIT = re.compile(r"conv(\d)_block(\d+)_(\d)_(conv|bn)")


def _torchvision_module(name: str, config: ModelConfig) -> str | None:
    if name in ("conv1_conv", "conv1_bn"):
        return "conv1" if name == "conv1_conv" else "bn1"
    match = _UNIT.fullmatch(name)
    if not match:
        return None
    stage, unit, index, kind = int(match[1]), int(match[2]), int(match[3]), match[4]
    base = f"layer{stage - 1}.{unit - 1}."
    if index == 0:
        return base + ("downsample.0" if kind == "conv" else "downsample.1")
    return base + f"{kind}{index}"


def _check_state_dict(state_dict: dict, prefix: str, fields: dict, architecture: str,
                      source: str) -> None:
    def units(stage):
        pattern = re.compile(rf"{re.escape(prefix)}layer{stage}\.(\d+)\.")
        found = {int(m.group(1)) for k in state_dict if (m := pattern.match(k))}
        return max(found) + 1 if found else 0

    found = tuple(units(s) for s in (1, 2, 3, 4))
    expected = BLOCKS_PER_DEPTH[fields["depth"]]
    if found != expected:
        raise ValueError(f"{source}: the backbone has {found} units per stage, "
                         f"{architecture} has {expected}; check --arch.")


BACKBONE = Backbone(
    name=NAME,
    build=build_resnet,
    check=check,
    describe=lambda config: f"R{config.depth}",
    aspp_rates_at_os16=(6, 12, 18),  # the paper's (§3.3)
    aux_endpoint=lambda config: "c4",
    # The paper's "Conv2 (before striding)": the stride-4 stage's output.
    low_level_endpoint=lambda config: "c2",
    weight_fields=("depth", "base_width", "stem", "stride_in_1x1"),
    classifier_head=None,
    torchvision=TorchvisionLayout(
        architectures={"resnet50": {"depth": 50}, "resnet101": {"depth": 101}},
        published={
            "deeplabv3_resnet50": {
                "weights": "DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1",
                "url": "https://download.pytorch.org/models/deeplabv3_resnet50_coco-cd0a2569.pth",
                "file_mb": 160.5,
                "reported": "COCO val2017 (VOC classes): mIoU 66.4, pixel accuracy 92.4",
            },
            "deeplabv3_resnet101": {
                "weights": "DeepLabV3_ResNet101_Weights.COCO_WITH_VOC_LABELS_V1",
                "url": "https://download.pytorch.org/models/deeplabv3_resnet101_coco-586e9e4e.pth",
                "file_mb": 233.2,
                "reported": "COCO val2017 (VOC classes): mIoU 67.4, pixel accuracy 92.4",
            },
            "resnet50": {
                "weights": "ResNet50_Weights.IMAGENET1K_V2",
                "url": "https://download.pytorch.org/models/resnet50-11ad3fa6.pth",
                "file_mb": 97.8,
                "reported": "ImageNet-1k val: top-1 80.858",
            },
            "resnet101": {
                "weights": "ResNet101_Weights.IMAGENET1K_V2",
                "url": "https://download.pytorch.org/models/resnet101-cd907fc2.pth",
                "file_mb": 170.5,
                "reported": "ImageNet-1k val: top-1 81.886",
            },
        },
        classifier_prefix="",
        classifier_modules={"classifier": "fc"},
        module_of=_torchvision_module,
        check_state_dict=_check_state_dict,
        deeplabv3_output_stride=8),
)

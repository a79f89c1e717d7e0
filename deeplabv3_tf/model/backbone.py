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

import keras

from deeplabv3_tf.config import ModelConfig
from deeplabv3_tf.model.layers import (AtrousConv2D, FusedBatchNormalization, InputNormalization,
                                       ResidualAdd)

BACKBONE_NAME = "backbone"
# Nominal stride of each stage; stages past config.output_stride dilate instead.
STAGE_STRIDES = (1, 2, 2, 2)
STEM_STRIDE = 4


def batch_norm(x, config: ModelConfig, name: str):
    """BatchNormalization with the config's decay, epsilon, sync and freeze."""
    layer = FusedBatchNormalization(
        momentum=config.bn_momentum, epsilon=config.bn_epsilon,
        synchronized=config.sync_bn, name=name)
    if config.freeze_bn:
        # A non-trainable Keras 3 BatchNormalization runs in inference mode.
        layer.trainable = False
    return layer(x)


def symmetric_padding(x, kernel_size: int, strides: int, dilation_rate: int, name: str):
    """The padding of a conv that pads symmetrically for any stride.

    Returns:
      (x, padding): a strided conv with a kernel larger than 1 gets `{name}_pad`,
      a ZeroPadding2D of (kernel - 1) * rate in all (the odd pixel at the end),
      and "valid"; stride 1 with an odd kernel gets "same" (symmetric already);
      a strided 1x1 conv needs none ("valid").
    """
    if strides > 1 and kernel_size > 1:
        total = (kernel_size - 1) * dilation_rate
        x = keras.layers.ZeroPadding2D(
            ((total // 2, total - total // 2),) * 2, name=f"{name}_pad")(x)
        return x, "valid"
    return x, "same" if strides == 1 else "valid"


def conv_bn(x, filters: int, kernel_size: int, config: ModelConfig, name: str,
            strides: int = 1, dilation_rate: int = 1, relu: bool = True):
    """Conv (no bias) + BN (+ ReLU), padding symmetric for any stride.

    Layers: `{name}_pad` (strided convs with kernel > 1 only), `{name}_conv`,
    `{name}_bn`, `{name}_relu`; with `config.fold_bn`, `{name}_conv` has a
    bias and there is no `{name}_bn`.
    """
    x, padding = symmetric_padding(x, kernel_size, strides, dilation_rate, name)
    # With config.fold_bn the BN's scale and shift live in the conv's kernel and bias.
    # AtrousConv2D for every conv, dilated or not: Keras' .weights.h5 paths
    # derive from layer classes, which must not depend on the output stride.
    x = AtrousConv2D(
        filters, kernel_size, strides=strides, dilation_rate=dilation_rate,
        padding=padding, use_bias=config.fold_bn, kernel_initializer="he_normal",
        name=f"{name}_conv")(x)
    if not config.fold_bn:
        x = batch_norm(x, config, f"{name}_bn")
    if relu:
        x = keras.layers.ReLU(name=f"{name}_relu")(x)
    return x


def bottleneck(x, filters: int, strides: int, dilation_rate: int,
               config: ModelConfig, name: str):
    """ResNet v1 bottleneck unit: 1x1 -> 3x3 (atrous) -> 1x1 (4x), + shortcut.

    The shortcut is a 1x1 projection when the channels or the resolution
    change, the identity otherwise (as research/deeplab's resnet_v1).

    Args:
      x: float [B, H, W, C_in].
      filters: Width of the 1x1 and 3x3 convs; the unit outputs 4x filters.
      strides: 1 or 2; on the first 1x1 conv if config.stride_in_1x1, else on
        the 3x3 conv.
      dilation_rate: Atrous rate of the 3x3 conv.
      config: Model config (BN settings, stride placement).
      name: Layer-name prefix, e.g. "conv4_block3".

    Returns:
      float [B, ceil(H / strides), ceil(W / strides), 4 * filters].
    """
    out_channels = 4 * filters
    if x.shape[-1] != out_channels or strides != 1:
        shortcut = conv_bn(x, out_channels, 1, config, f"{name}_0",
                           strides=strides, relu=False)
    else:
        shortcut = x
    stride_1x1, stride_3x3 = (strides, 1) if config.stride_in_1x1 else (1, strides)
    y = conv_bn(x, filters, 1, config, f"{name}_1", strides=stride_1x1)
    y = conv_bn(y, filters, 3, config, f"{name}_2", strides=stride_3x3,
                dilation_rate=dilation_rate)
    y = conv_bn(y, out_channels, 1, config, f"{name}_3", relu=False)
    y = ResidualAdd(name=f"{name}_add")([shortcut, y])
    return keras.layers.ReLU(name=f"{name}_out")(y)


def stem(x, config: ModelConfig):
    """Stride-4 root: a 7x7/2 conv ("v0") or three 3x3 convs ("v1"), then max pool."""
    width = config.base_width
    if config.stem == "v0":
        x = conv_bn(x, width, 7, config, "conv1", strides=2)
    else:
        x = conv_bn(x, width, 3, config, "conv1_1", strides=2)
        x = conv_bn(x, width, 3, config, "conv1_2")
        x = conv_bn(x, 2 * width, 3, config, "conv1_3")
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
    num_stages = len(config.blocks) + config.num_cascade_blocks
    units = list(config.blocks) + [config.blocks[-1]] * config.num_cascade_blocks
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
        multi_grid = config.multi_grid if i >= len(config.blocks) - 1 else (1,) * units[i]
        rates = [rate * m for m in multi_grid]
        if not config.dilate_first_unit:
            rates[0] = previous_rate * multi_grid[0]
        plan.append(dict(
            name=f"conv{i + 2}", endpoint=f"c{i + 2}",
            filters=config.base_width * 2 ** min(i, len(STAGE_STRIDES) - 1),
            units=units[i], stride=stride, rates=tuple(rates)))
    return plan


def build_resnet(config: ModelConfig, input_shape=(None, None, 3),
                 name: str = BACKBONE_NAME) -> keras.Model:
    """Builds the dilated ResNet v1 backbone.

    Args:
      config: Model config (depth, width, stem, output stride, multi-grid...).
      input_shape: Shape of one image; H and W may be None.
      name: Model name; the segmentation model finds its backbone by it.

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
    x = stem(x, config)
    endpoints = {}
    for stage in stage_plan(config):
        for u, rate in enumerate(stage["rates"]):
            x = bottleneck(
                x, stage["filters"], stage["stride"] if u == 0 else 1, rate,
                config, name=f"{stage['name']}_block{u + 1}")
        endpoints[stage["endpoint"]] = x
    return keras.Model(images, endpoints, name=name)

"""Blocks every backbone and head is made of: how BatchNorm runs, symmetric
padding, conv + BN (+ ReLU), depthwise conv + BN, separable conv.

How the BatchNorms of a graph run is not part of what a checkpoint is: the
same weights train with synchronised statistics on 8 replicas, fine-tune with
frozen statistics, and serve folded into their convs. So it is not a
`ModelConfig` field: the builders take a `BatchNorm` argument (deeplab2 passes
its BN layer to the encoder builder the same way), and what a run saves
(experiment.json) stays what defines its variables.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import keras

from deeplabv3_tf.model.layers import AtrousConv2D, FusedBatchNormalization

if TYPE_CHECKING:  # annotations only: config.py imports the backbones
    from deeplabv3_tf.model.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class BatchNorm:
    """How a graph's BatchNorm layers run.

    Attributes:
      synchronized: Statistics over the global batch of every replica
        (`tools/train.py` turns it on with more than one replica).
      frozen: Inference mode with fixed parameters, in training too (the
        paper's fine-tuning stage at output stride 8, `train.freeze_bn`).
      folded: No BatchNorm layers: each conv before one has a bias instead
        (`model.fold.fold_batch_norm` fills it). Inference only.
    """

    synchronized: bool = False
    frozen: bool = False
    folded: bool = False


@dataclasses.dataclass(frozen=True)
class Norm:
    """A `BatchNorm` choice bound to a graph's decay and epsilon: what blocks call."""

    momentum: float
    epsilon: float
    choice: BatchNorm = BatchNorm()

    @classmethod
    def of(cls, config: ModelConfig, choice: BatchNorm = BatchNorm(),
           epsilon: float | None = None) -> "Norm":
        """The config's decay and epsilon (or `epsilon`) with `choice`."""
        return cls(config.bn_momentum, config.bn_epsilon if epsilon is None else epsilon, choice)

    @property
    def folded(self) -> bool:
        return self.choice.folded

    def __call__(self, x, name: str):
        """BatchNormalization `name` on x (nothing when folded)."""
        if self.choice.folded:
            return x
        layer = FusedBatchNormalization(momentum=self.momentum, epsilon=self.epsilon,
                                        synchronized=self.choice.synchronized, name=name)
        if self.choice.frozen:
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


def conv_bn(x, filters: int, kernel_size: int, norm: Norm, name: str,
            strides: int = 1, dilation_rate: int = 1, relu: bool = True):
    """Conv (no bias) + BN (+ ReLU), padding symmetric for any stride.

    Layers: `{name}_pad` (strided convs with kernel > 1 only), `{name}_conv`,
    `{name}_bn`, `{name}_relu`; with a folded `norm`, `{name}_conv` has a
    bias and there is no `{name}_bn`.
    """
    x, padding = symmetric_padding(x, kernel_size, strides, dilation_rate, name)
    # Folded, the BN's scale and shift live in the conv's kernel and bias.
    # AtrousConv2D for every conv, dilated or not: Keras' .weights.h5 paths
    # derive from layer classes, which must not depend on the output stride.
    x = AtrousConv2D(
        filters, kernel_size, strides=strides, dilation_rate=dilation_rate,
        padding=padding, use_bias=norm.folded, kernel_initializer="he_normal",
        name=f"{name}_conv")(x)
    x = norm(x, f"{name}_bn")
    if relu:
        x = keras.layers.ReLU(name=f"{name}_relu")(x)
    return x


def depthwise_conv_bn(x, kernel_size: int, norm: Norm, name: str, strides: int = 1,
                      dilation_rate: int = 1):
    """Depthwise conv (no bias) + BN, padded as `conv_bn`: `{name}_pad` (strided
    only), `{name}_conv`, `{name}_bn`; folded, the conv has a bias and there is no BN."""
    x, padding = symmetric_padding(x, kernel_size, strides, dilation_rate, name)
    x = keras.layers.DepthwiseConv2D(
        kernel_size, strides=strides, padding=padding, dilation_rate=dilation_rate,
        use_bias=norm.folded, depthwise_initializer="he_normal", name=f"{name}_conv")(x)
    return norm(x, f"{name}_bn")


def separable_conv_bn(x, filters: int, kernel_size: int, norm: Norm, name: str,
                      dilation_rate: int = 1):
    """A depthwise-separable conv as research/deeplab's `split_separable_conv2d`:
    depthwise kxk + BN + ReLU (`{name}_depthwise_*`), then pointwise 1x1 + BN +
    ReLU (`{name}_pointwise_*`)."""
    x = depthwise_conv_bn(x, kernel_size, norm, f"{name}_depthwise",
                          dilation_rate=dilation_rate)
    x = keras.layers.ReLU(name=f"{name}_depthwise_relu")(x)
    return conv_bn(x, filters, 1, norm, f"{name}_pointwise")

"""Analytic cost of a model: parameters and multiply-accumulates.

MACs count every conv kernel tap (atrous taps that fall into padding
included; a depthwise conv's taps read one channel each) and every dense weight, for one image at a fixed size. Bias adds,
BatchNorm, activations, pooling and resizing are not counted: they are a
rounding error next to the convolutions.
"""

from __future__ import annotations

import math

import keras


def _layers(model: keras.Model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _layers(layer)
        else:
            yield layer


def _inside_taps(size: int, kernel: int, rate: int) -> int:
    """Sum over output positions of the kernel taps that land inside the input,
    for a stride-1 "same" conv along one axis."""
    half = (kernel - 1) // 2
    return sum(max(0, size - abs((t - half) * rate)) for t in range(kernel))


def count_macs(model: keras.Model, inside_only: bool = False) -> int:
    """Multiply-accumulates of one forward pass of a model with static shapes.

    Args:
      model: A functional model built for a fixed input size (for example
        `build_deeplabv3(config, input_shape=(513, 513, 3))`), so that every
        layer's output shape is known.
      inside_only: Leave out the taps of stride-1 "same" convs that fall into
        the zero padding. With large atrous rates on small feature maps that
        is most of them (ASPP's rate-18 3x3 conv on 33x33 features: 60%);
        oneDNN and cuDNN skip them, so this is the work actually done.
        Default: every tap, the usual count (torchvision and the paper's
        references count this way).

    Returns:
      MACs for batch 1.
    """
    total = 0
    for layer in _layers(model):
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)):
            out_shape = layer.output.shape
            if None in out_shape[1:3]:
                raise ValueError(
                    f"Layer {layer.name} has output shape {out_shape}; build "
                    "the model with a fixed input_shape to count MACs.")
            if isinstance(layer, keras.layers.DepthwiseConv2D):
                # [k, k, C, multiplier]: each output channel reads one input channel.
                kh, kw, channels, multiplier = layer.kernel.shape
                cin, cout = 1, channels * multiplier
            else:
                kh, kw, cin, cout = layer.kernel.shape
            if inside_only and layer.padding == "same" and max(layer.strides) == 1:
                rh, rw = layer.dilation_rate
                total += (_inside_taps(out_shape[1], kh, rh) * _inside_taps(out_shape[2], kw, rw)
                          * cin * cout)
            else:
                total += out_shape[1] * out_shape[2] * kh * kw * cin * cout
        elif isinstance(layer, keras.layers.Dense):
            total += math.prod(layer.kernel.shape)
    return total


def count_params(model: keras.Model, trainable_only: bool = True) -> int:
    """Number of (trainable) scalar parameters."""
    weights = model.trainable_weights if trainable_only else model.weights
    return sum(math.prod(w.shape) for w in weights)

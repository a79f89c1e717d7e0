"""Analytic cost of a model: parameters and multiply-accumulates.

MACs count every conv kernel tap (atrous taps that fall into padding
included) and every dense weight, for one image at a fixed size. Bias adds,
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


def count_macs(model: keras.Model) -> int:
    """Multiply-accumulates of one forward pass of a model with static shapes.

    Args:
      model: A functional model built for a fixed input size (for example
        `build_deeplabv3(config, input_shape=(513, 513, 3))`), so that every
        layer's output shape is known.

    Returns:
      MACs for batch 1.
    """
    total = 0
    for layer in _layers(model):
        if isinstance(layer, keras.layers.Conv2D):
            out_shape = layer.output.shape
            if None in out_shape[1:3]:
                raise ValueError(
                    f"Layer {layer.name} has output shape {out_shape}; build "
                    "the model with a fixed input_shape to count MACs.")
            kh, kw, cin, cout = layer.kernel.shape
            total += out_shape[1] * out_shape[2] * kh * kw * cin * cout
        elif isinstance(layer, keras.layers.Dense):
            total += math.prod(layer.kernel.shape)
    return total


def count_params(model: keras.Model, trainable_only: bool = True) -> int:
    """Number of (trainable) scalar parameters."""
    weights = model.trainable_weights if trainable_only else model.weights
    return sum(math.prod(w.shape) for w in weights)

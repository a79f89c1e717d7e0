"""The inference graph: BatchNorm folded into the convs, float32 or bfloat16.

In inference mode a BatchNorm is an affine map per channel,
y = gamma * (x - mean) / sqrt(var + eps) + beta, so the conv before it can
absorb it: kernel' = kernel * s, bias' = beta - mean * s with
s = gamma / sqrt(var + eps) (s multiplies the output-channel axis: the last of
a conv kernel [k, k, C_in, C_out], the third of a depthwise one [k, k, C, 1]).
The folded graph runs one conv (+ bias + ReLU,
which oneDNN fuses) per conv + BN + ReLU of the trained graph. In float32 on
CPU, grappler fuses the trained graph's FusedBatchNorm into the conv too, so
the two run at the same speed; in bfloat16 the folded graph also avoids the
BatchNorm's float32 round trip.

bfloat16: the same graph under the "bfloat16" policy: convs in bfloat16 (on
CPUs with AVX512_BF16 or AMX) with bfloat16 weights, the folded float32 values
rounded once. Under "mixed_bfloat16" (float32 variables) every call cast each
kernel and bias again: 12 ms of a 200 ms R101 OS16 call, and twice the weight
bytes in memory and in the export. The logits conv (weights included), the
logits resize and the ASPP pooling resize stay float32, as in training.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

from deeplabv3_tf.core.precision import INFERENCE_PRECISIONS, check_precision
from deeplabv3_tf.model.blocks import BatchNorm
from deeplabv3_tf.model.config import ModelConfig
from deeplabv3_tf.model.deeplabv3 import build_deeplabv3
from deeplabv3_tf.model.transfer import flat_layers


def fold_batch_norm(model: keras.Model, config: ModelConfig, precision: str = "float32",
                    input_shape=(None, None, 3)) -> keras.Model:
    """A copy of a DeepLabv3 model for inference, with every BN folded into its conv.

    Args:
      model: A DeepLabv3 model built from `config` (its auxiliary head, if any,
        is left out).
      config: The model's config.
      precision: "float32" or "bfloat16" (compute dtype of the convs).
      input_shape: Shape of one image of the new model.

    Returns:
      A `keras.Model` with the same input and output as `model` in inference
      mode: float32 logits [B, H, W, num_classes].

    Raises:
      ValueError: an unknown precision, one this CPU cannot compute in
        (`precision.check_precision`), or a layer of `model` the folded graph
        has no place for.
    """
    if precision not in INFERENCE_PRECISIONS:
        raise ValueError(f"precision={precision!r} is not one of {INFERENCE_PRECISIONS}.")
    check_precision(precision)
    folded_config = dataclasses.replace(config, aux_head=False)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        folded = build_deeplabv3(folded_config, input_shape=input_shape,
                                 name=f"{model.name}_folded",
                                 batch_norm=BatchNorm(folded=True))
    finally:
        keras.config.set_dtype_policy(previous)

    source = flat_layers(model)
    used = set()
    for path, layer in flat_layers(folded).items():
        if path not in source:
            raise ValueError(f"Layer {path!r} of the folded graph is not in {model.name!r}.")
        used.add(path)
        weights = [np.asarray(w) for w in source[path].get_weights()]
        bn_path = path[: -len("_conv")] + "_bn" if path.endswith("_conv") else None
        if bn_path in source:
            used.add(bn_path)
            bn = source[bn_path]
            gamma, beta, mean, variance = (np.asarray(v, np.float64) for v in (
                bn.gamma, bn.beta, bn.moving_mean, bn.moving_variance))
            scale = gamma / np.sqrt(variance + bn.epsilon)
            if isinstance(layer, keras.layers.DepthwiseConv2D):
                # A depthwise kernel is [k, k, C, 1]: channel c's output is input c's.
                scale_axis = scale[:, None]
            else:
                scale_axis = scale  # [k, k, C_in, C_out]: the last axis
            kernel = np.asarray(weights[0], np.float64) * scale_axis
            bias = beta - mean * scale
            if len(weights) == 2:  # a conv that had its own bias
                bias = bias + np.asarray(weights[1], np.float64) * scale
            weights = [kernel.astype(np.float32), bias.astype(np.float32)]
        layer.set_weights(weights)
    left = sorted(p for p in source if p not in used and not p.split("/")[-1].startswith("aux"))
    if left:
        raise ValueError(f"Layers of {model.name!r} not carried into the folded graph: {left}.")
    return folded

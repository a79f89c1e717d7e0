"""ImageNet initialisation from keras.applications ResNet weight files.

The published `resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5` (and the
ResNet101/152 files) were written by Keras 2: the root (or its `model_weights`
group, for whole-model files) lists layers in the `layer_names` attribute, and
each layer group lists its arrays in a `weight_names` attribute, e.g.
`conv1_conv/kernel:0`, `conv1_conv/bias:0`. This module reads that layout with
h5py alone, layer by layer, because the backbone uses the same layer names
(see `backbones/resnet.py`).

Those models give every conv a bias and follow it by BatchNorm. The backbone's
convs have none: BN(x + b) with moving mean m equals BN(x) with moving mean
m - b, and in training the batch mean absorbs b, so the bias is folded into the
following BN's moving mean, exactly.
"""

from __future__ import annotations

import os

import h5py
import keras
import numpy as np

from deeplabv3_tf.model.backbones import BACKBONE_NAME

# Top-classifier layers of keras.applications files, not part of a backbone.
_CLASSIFIER_LAYERS = ("predictions", "probs", "fc1000")


def read_keras2_h5(path: str) -> dict[str, dict[str, np.ndarray]]:
    """Reads a Keras-2 HDF5 weight file into {layer: {weight: array}}.

    Weight keys drop the layer prefix and the ":0" suffix ("kernel", "bias",
    "gamma", "beta", "moving_mean", "moving_variance").

    Raises:
      FileNotFoundError: `path` does not exist.
      ValueError: the file is not in the Keras-2 layout.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"ImageNet weight file not found: {path}")
    weights = {}
    with h5py.File(path, "r") as f:
        root = f["model_weights"] if "model_weights" in f else f
        if "layer_names" not in root.attrs:
            raise ValueError(
                f"{path} is not a Keras-2 weight file: it has no 'layer_names' "
                "attribute (expected the keras.applications .h5 layout).")
        for layer_name in _as_str(root.attrs["layer_names"]):
            group = root[layer_name]
            names = _as_str(group.attrs.get("weight_names", []))
            if not names:
                continue
            weights[layer_name] = {
                n.split("/")[-1].split(":")[0]: np.asarray(group[n])
                for n in names}
    return weights


def _as_str(values) -> list[str]:
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]


def load_imagenet_weights(model: keras.Model, path: str) -> int:
    """Loads keras.applications ResNet ImageNet weights into our backbone.

    Args:
      model: A model from `build_deeplabv3` (its nested backbone is filled) or
        from `build_resnet`. Its config must be
        `keras_applications_compatible(...)`: 7x7 stem, stride on the first
        1x1 conv, caffe input normalisation, base width 64. Any output stride,
        multi-grid or cascade setting works (cascaded blocks keep their
        initialisation: ImageNet models have no such blocks).
      path: Local path of the `.h5` file (e.g. from `~/.keras/models/`).

    Returns:
      The number of backbone layers whose weights were set.

    Raises:
      ValueError: the model and the file do not fit (wrong normalisation or
        stride placement, a layer missing from the file, a shape mismatch, or
        file layers the model has no place for, e.g. ResNet101 weights into a
        ResNet50), with the layer and file named.
    """
    backbone = _find_backbone(model)
    _check_compatible(backbone, path)
    file_weights = read_keras2_h5(path)
    loaded, used = 0, set()
    for layer in backbone.layers:
        if not layer.weights:
            continue
        if layer.name.startswith(("conv6_", "conv7_", "conv8_")):
            continue  # Cascaded blocks: no ImageNet counterpart.
        if layer.name not in file_weights:
            raise ValueError(
                f"Layer {layer.name!r} of the backbone has no weights in {path}.")
        source = file_weights[layer.name]
        used.add(layer.name)
        if isinstance(layer, keras.layers.Conv2D):
            values = [source["kernel"]]
        elif isinstance(layer, keras.layers.BatchNormalization):
            conv_name = layer.name[: -len("_bn")] + "_conv"
            bias = file_weights.get(conv_name, {}).get("bias", 0.0)
            values = [source["gamma"], source["beta"],
                      source["moving_mean"] - bias, source["moving_variance"]]
        else:
            raise ValueError(f"Unexpected weighted layer {layer.name!r}.")
        expected = [tuple(w.shape) for w in layer.weights]
        got = [tuple(v.shape) for v in values]
        if expected != got:
            raise ValueError(
                f"Layer {layer.name!r}: {path} holds shapes {got}, the backbone "
                f"expects {expected}.")
        layer.set_weights(values)
        loaded += 1
    unused = sorted(set(file_weights) - used - set(_CLASSIFIER_LAYERS))
    if unused:
        raise ValueError(
            f"{path} holds {len(unused)} layer(s) the backbone has no place for "
            f"(first: {unused[:3]}); is it a ResNet of another depth?")
    return loaded


def _find_backbone(model: keras.Model) -> keras.Model:
    try:
        return model.get_layer(BACKBONE_NAME)
    except ValueError:
        return model


def _check_compatible(backbone: keras.Model, path: str) -> None:
    mode = backbone.get_layer("normalize").mode
    if mode != "caffe":
        raise ValueError(
            f"{path} holds weights trained on caffe-style inputs (BGR, mean "
            f"subtracted) but the model normalises its input as {mode!r}; "
            "build it with keras_applications_compatible(config).")
    # conv3 always strides (output stride >= 8), so it shows the placement.
    if backbone.get_layer("conv3_block1_1_conv").strides != (2, 2):
        raise ValueError(
            f"{path} holds weights of ResNets that stride in the first 1x1 conv; "
            "the model strides in the 3x3 conv. Build it with "
            "keras_applications_compatible(config) (stride_in_1x1=True).")

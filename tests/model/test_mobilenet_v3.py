"""MobileNetV3-Large as the DeepLabv3 backbone: torchvision's sizes, strides, names and cost."""

import dataclasses

import keras
import numpy as np
import pytest

from deeplabv3_tf.model.config import ModelConfig, torchvision_backbone, torchvision_deeplabv3
from deeplabv3_tf.model import build_deeplabv3, build_mobilenet_v3
from deeplabv3_tf.model.classifier import build_classifier
from deeplabv3_tf.model.cost import count_macs, count_params
from deeplabv3_tf.model.backbones.mobilenet_v3 import block_plan, make_divisible
from tests.helpers import tiny_mobilenet_config

MOBILENET = ModelConfig(backbone="mobilenet_v3_large")


def test_sizes_equal_torchvisions():
    """torchvision reports 11,029,328 parameters for deeplabv3_mobilenet_v3_large (with
    its auxiliary head), 10.452 GMACs at 520x520, and 5,483,032 for mobilenet_v3_large."""
    config = torchvision_deeplabv3(dataclasses.replace(MOBILENET, aux_head=True))
    model = build_deeplabv3(config, input_shape=(520, 520, 3))
    assert count_params(model) == 11_029_328
    assert round(count_macs(model) / 1e9, 3) == 10.452
    classifier = build_classifier(torchvision_backbone(dataclasses.replace(
        MOBILENET, num_classes=1000, output_stride=32)))
    assert count_params(classifier) == 5_483_032
    # The published ASPP: rates 12, 24, 36 at output stride 16 (and so 24, 48, 72 at 8).
    assert config.effective_aspp_rates == (12, 24, 36)
    assert dataclasses.replace(config, output_stride=8).effective_aspp_rates == (24, 48, 72)


@pytest.mark.parametrize("output_stride,rates", [
    (32, {"c1": 1, "c2": 1, "c3": 1, "c4": 1, "c5": 1}),
    (16, {"c1": 1, "c2": 1, "c3": 1, "c4": 1, "c5": 2}),
    (8, {"c1": 1, "c2": 1, "c3": 1, "c4": 2, "c5": 4})])
def test_endpoints_strides_and_dilation(output_stride, rates):
    config = tiny_mobilenet_config(output_stride=output_stride)
    backbone = build_mobilenet_v3(config)
    out = backbone(np.zeros((1, 97, 131, 3), np.float32))
    sides = {"c1": 2, "c2": 4, "c3": 8, "c3_block1": 8, "c4": 16, "c5": 32}
    for name, stride in sides.items():
        stride = min(stride, output_stride)
        assert tuple(out[name].shape[1:3]) == (-(-97 // stride), -(-131 // stride)), name
    # Width 0.25: 8, 8, 16 (40 / 4 -> 16 by make_divisible), 32, 240 channels.
    assert [out[k].shape[-1] for k in ("c1", "c2", "c3", "c4", "c5")] == [8, 8, 16, 32, 240]
    for block in block_plan(config):
        layer = backbone.get_layer(f"{block['name']}_dw_conv")
        assert layer.dilation_rate == (rates[block["stage"]],) * 2, block["name"]
        # The first block of a dilated stage keeps stride 1 and takes the stage's rate.
        assert layer.strides[0] == (2 if block["name"].endswith("block1") and
                                    block["stage"] != "c1" and rates[block["stage"]] == 1
                                    else 1)


def test_layer_names_and_parts():
    backbone = build_mobilenet_v3(MOBILENET)
    names = {layer.name for layer in backbone.layers}
    # Block 1 does not expand; blocks with squeeze-and-excitation have its layers.
    assert "conv1_block1_expand_conv" not in names and "conv1_block1_dw_conv" in names
    assert {"conv3_block1_se_reduce", "conv3_block1_se_expand", "conv5_block3_se_gate",
            "conv5_last_conv", "conv4_block6_add"} <= names
    assert "conv4_block1_se_reduce" not in names and "conv4_block1_add" not in names
    dw = backbone.get_layer("conv3_block1_dw_conv")
    assert isinstance(dw, keras.layers.DepthwiseConv2D) and dw.kernel.shape == (5, 5, 72, 1)
    assert backbone.get_layer("conv3_block1_se_reduce").kernel.shape == (1, 1, 72, 24)
    # MobileNetV3's BatchNorm epsilon in the backbone, the config's in the head.
    assert backbone.get_layer("conv2_block1_dw_bn").epsilon == 1e-3
    assert build_deeplabv3(MOBILENET).get_layer("aspp_0_bn").epsilon == MOBILENET.bn_epsilon


def test_make_divisible_as_torchvision():
    assert [make_divisible(v) for v in (16, 72 // 4, 120 // 4, 960 * 0.25, 10, 4)] == [
        16, 24, 32, 240, 16, 8]


def test_settings_that_do_not_apply_are_refused():
    with pytest.raises(ValueError, match="width_multiplier=0.5 is a MobileNetV3 setting"):
        ModelConfig(width_multiplier=0.5)
    with pytest.raises(ValueError, match="num_cascade_blocks"):
        ModelConfig(backbone="mobilenet_v3_large", num_cascade_blocks=3)
    with pytest.raises(ValueError, match="backbone='mobilenet_v2' is not one of"):
        ModelConfig(backbone="mobilenet_v2")


def test_trains_and_runs_at_every_output_stride():
    """Gradients reach every variable (SE and depthwise included); weights move
    between output strides (the graph changes, not the variables)."""
    import tensorflow as tf

    config = tiny_mobilenet_config(aux_head=True)
    model = build_deeplabv3(config)
    images = np.random.default_rng(0).uniform(0, 255, (2, 65, 77, 3)).astype(np.float32)
    with tf.GradientTape() as tape:
        out = model(images, training=True)
        loss = tf.reduce_mean(out["logits"] ** 2) + tf.reduce_mean(out["aux_logits"] ** 2)
    grads = tape.gradient(loss, model.trainable_variables)
    assert all(g is not None and np.abs(g.numpy()).max() > 0 for g in grads)
    at8 = build_deeplabv3(dataclasses.replace(config, output_stride=8))
    at8.set_weights(model.get_weights())
    assert at8(images, training=False)["logits"].shape == (2, 65, 77, 5)

import dataclasses
import math

import keras
import numpy as np
import pytest

from deeplabv3_tf.model.config import ModelConfig
from deeplabv3_tf.model.blocks import BatchNorm
from deeplabv3_tf.model.backbones.resnet import BLOCKS_PER_DEPTH, build_resnet, stage_plan
from tests.helpers import assert_close, tiny_config


def _ceil_div(n, d):
    return -(-n // d)


@pytest.mark.parametrize("output_stride", [8, 16, 32])
@pytest.mark.parametrize("size", [(97, 131), (96, 130)])
def test_tiny_endpoint_strides_when_run(output_stride, size):
    backbone = build_resnet(tiny_config(output_stride=output_stride))
    images = np.random.default_rng(0).uniform(0, 255, (2, *size, 3))
    endpoints = backbone(images.astype("float32"))
    for stage, nominal in (("c2", 4), ("c3", 8), ("c4", 16), ("c5", 32)):
        stride = min(nominal, output_stride)
        assert endpoints[stage].shape[1:3] == (
            _ceil_div(size[0], stride), _ceil_div(size[1], stride)), stage
    assert endpoints["c5"].shape[-1] == 32 * 8


@pytest.mark.parametrize("depth", [50, 101])
@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_real_depth_c5_stride(depth, output_stride):
    config = ModelConfig(depth=depth, output_stride=output_stride)
    backbone = build_resnet(config, input_shape=(513, 513, 3))
    assert backbone.output["c5"].shape == (
        None, _ceil_div(513, output_stride), _ceil_div(513, output_stride), 2048)
    units = sum(BLOCKS_PER_DEPTH[config.depth])
    conv_layers = [l for l in backbone.layers if isinstance(l, keras.layers.Conv2D)]
    # Stem + 3 convs per unit + 4 projection shortcuts.
    assert len(conv_layers) == 1 + 3 * units + 4


def test_real_depth_runs_at_output_stride_8():
    backbone = build_resnet(ModelConfig(depth=50, output_stride=8))
    c5 = backbone(np.zeros((1, 65, 67, 3), "float32"))["c5"]
    assert c5.shape == (1, 9, 9, 2048)


def test_multi_grid_rates_follow_paper():
    # Paper §3.2.1: multi_grid (1, 2, 4) at output stride 16 gives (2, 4, 8).
    plan = {s["name"]: s for s in stage_plan(ModelConfig(output_stride=16))}
    assert plan["conv5"]["rates"] == (2, 4, 8)
    assert plan["conv4"]["rates"] == (1,) * 23
    assert [plan[n]["stride"] for n in ("conv2", "conv3", "conv4", "conv5")] == [1, 2, 2, 1]
    plan8 = {s["name"]: s for s in stage_plan(ModelConfig(output_stride=8))}
    assert plan8["conv4"]["rates"] == (2,) * 23
    assert plan8["conv5"]["rates"] == (4, 8, 16)
    plan32 = {s["name"]: s for s in stage_plan(ModelConfig(output_stride=32))}
    assert plan32["conv5"]["rates"] == (1, 2, 4)


def test_torchvision_dilation_schedule_keeps_the_previous_rate_in_first_units():
    # replace_stride_with_dilation=[False, True, True] (torchvision's DeepLabv3 at OS8).
    config = ModelConfig(output_stride=8, multi_grid=(1, 1, 1), dilate_first_unit=False)
    plan = {s["name"]: s for s in stage_plan(config)}
    assert plan["conv4"]["rates"] == (1,) + (2,) * 22
    assert plan["conv5"]["rates"] == (2, 4, 4)
    plan16 = {s["name"]: s for s in stage_plan(dataclasses.replace(config, output_stride=16))}
    assert plan16["conv4"]["rates"] == (1,) * 23 and plan16["conv5"]["rates"] == (1, 2, 2)


def test_built_layers_use_planned_dilation():
    backbone = build_resnet(ModelConfig(depth=50, output_stride=16))
    rates = [backbone.get_layer(f"conv5_block{u}_2_conv").dilation_rate
             for u in (1, 2, 3)]
    assert rates == [(2, 2), (4, 4), (8, 8)]
    assert backbone.get_layer("conv5_block1_0_conv").strides == (1, 1)
    assert backbone.get_layer("conv4_block1_2_conv").strides == (2, 2)
    assert backbone.get_layer("conv4_block1_1_conv").strides == (1, 1)


def test_stride_in_1x1_moves_the_stride():
    backbone = build_resnet(tiny_config(stride_in_1x1=True))
    assert backbone.get_layer("conv3_block1_1_conv").strides == (2, 2)
    assert backbone.get_layer("conv3_block1_2_conv").strides == (1, 1)
    out = backbone(np.zeros((1, 97, 131, 3), "float32"))
    assert out["c5"].shape[1:3] == (7, 9)


def test_cascade_blocks_double_rates():
    config = tiny_config(num_cascade_blocks=3, output_stride=16, multi_grid=(2,))
    plan = stage_plan(config)
    assert [s["name"] for s in plan][-3:] == ["conv6", "conv7", "conv8"]
    # Paper §3.2: block4..block7 at output stride 16 use rates 2, 4, 8, 16,
    # each times the multi-grid unit rate.
    assert [s["rates"] for s in plan[3:]] == [(4,), (8,), (16,), (32,)]
    endpoints = build_resnet(config)(np.zeros((1, 65, 66, 3), "float32"))
    assert sorted(endpoints) == ["c2", "c3", "c4", "c5", "c6", "c7", "c8"]
    assert endpoints["c8"].shape == (1, 5, 5, 256)


def test_v1_stem_layers():
    backbone = build_resnet(tiny_config(stem="v1"))
    names = {l.name for l in backbone.layers}
    assert {"conv1_1_conv", "conv1_2_conv", "conv1_3_conv"} <= names
    assert "conv1_conv" not in names
    assert backbone.get_layer("conv1_3_conv").filters == 16
    c2 = backbone(np.zeros((1, 33, 35, 3), "float32"))["c2"]
    assert c2.shape == (1, 9, 9, 32)


@pytest.mark.numerics
def test_strided_features_do_not_depend_on_size_parity():
    # With symmetric padding, feature (i, j) always sits on input pixel
    # (s*i, s*j): dropping the last row and column of an odd-sized image keeps
    # every feature whose receptive field does not reach that edge.
    backbone = build_resnet(tiny_config())
    to_c3 = keras.Model(backbone.input, backbone.get_layer("conv3_block1_out").output)
    image = np.random.default_rng(1).uniform(0, 255, (1, 97, 131, 3)).astype("float32")
    odd = to_c3(image).numpy()
    even = to_c3(image[:, :96, :130]).numpy()
    assert odd.shape[1:3] == (13, 17) and even.shape[1:3] == (12, 17)
    # c3's receptive field spans well under 48 input pixels.
    assert_close(even[:, :6, :10], odd[:, :6, :10])


def test_layer_names_are_deterministic():
    names_a = [l.name for l in build_resnet(tiny_config()).layers]
    names_b = [l.name for l in build_resnet(tiny_config()).layers]
    assert names_a == names_b
    assert names_a[:3] == ["images", "normalize", "conv1_pad"]
    assert "conv5_block1_0_conv" in names_a and "conv4_block1_out" in names_a


def test_bn_settings_and_freeze():
    backbone = build_resnet(tiny_config(bn_momentum=0.9997, bn_epsilon=1e-3))
    bns = [l for l in backbone.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert bns and all(l.momentum == 0.9997 and l.epsilon == 1e-3 for l in bns)
    assert all(l.trainable for l in bns)
    frozen = build_resnet(tiny_config(), batch_norm=BatchNorm(frozen=True))
    frozen_bns = [l for l in frozen.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert not any(l.trainable for l in frozen_bns)
    convs = [l for l in frozen.layers if isinstance(l, keras.layers.Conv2D)]
    assert len(frozen.trainable_weights) == len(convs)
    before = [w.numpy().copy() for w in frozen_bns[0].weights]
    frozen(np.random.default_rng(0).uniform(0, 255, (2, 33, 33, 3)).astype("float32"),
           training=True)
    for b, w in zip(before, frozen_bns[0].weights):
        np.testing.assert_array_equal(b, w.numpy())


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="multi_grid"):
        ModelConfig(depth=14)  # (1, 2, 4) but the last block has 1 unit.
    with pytest.raises(ValueError, match="output_stride=12"):
        ModelConfig(output_stride=12)
    with pytest.raises(ValueError, match="depth=34"):
        ModelConfig(depth=34)
    with pytest.raises(ValueError, match="normalization"):
        ModelConfig(normalization="bgr")


def test_config_round_trips_through_dict():
    config = tiny_config(aspp_rates=(3, 6, 9), num_cascade_blocks=3)
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="Unknown"):
        ModelConfig.from_dict({**config.to_dict(), "colour": 1})
    assert math.isclose(ModelConfig().bn_momentum, 0.9997)

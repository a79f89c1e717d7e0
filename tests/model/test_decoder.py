"""DeepLabv3+'s decoder: shapes and strides, gradients, folding, MACs, configs, transfer."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from deeplabv3_tf.model import build_deeplabv3
from deeplabv3_tf.model.backbones import build_backbone, low_level_endpoint
from deeplabv3_tf.model.config import ModelConfig
from deeplabv3_tf.model.cost import count_macs
from deeplabv3_tf.model.transfer import not_carried, transfer_weights
from tests.helpers import tiny_config, tiny_mobilenet_config

PLUS = dict(decoder="deeplabv3plus", decoder_low_level_filters=8, decoder_filters=16)
MAKERS = {"resnet": tiny_config, "mobilenet": tiny_mobilenet_config}


def _images(batch, height, width, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (batch, height, width, 3)).astype("float32")


@pytest.mark.parametrize("backbone", sorted(MAKERS))
@pytest.mark.parametrize("output_stride", [8, 16])
@pytest.mark.parametrize("separable", [False, True])
@pytest.mark.parametrize("size", [(97, 131), (50, 33)])
def test_shapes_and_strides_at_odd_sizes(backbone, output_stride, separable, size):
    config = MAKERS[backbone](output_stride=output_stride, decoder_separable=separable, **PLUS)
    model = build_deeplabv3(config)
    probe = keras.Model(model.input, {
        "logits": model.output,
        "encoder": model.get_layer("aspp_project_relu").output,
        "decoder": model.get_layer("decoder_1_relu" if not separable
                                   else "decoder_1_pointwise_relu").output})
    out = probe(_images(2, *size))
    h, w = size
    assert out["logits"].shape == (2, h, w, 5) and out["logits"].dtype == "float32"
    assert out["encoder"].shape[1:3] == (-(-h // output_stride), -(-w // output_stride))
    # The decoder (and the logits before their resize) at stride 4 whatever the output stride.
    assert out["decoder"].shape == (2, -(-h // 4), -(-w // 4), 16)
    assert np.all(np.isfinite(out["logits"].numpy()))


def test_low_level_endpoints_are_the_referenced_ones():
    # ResNet: stage 2's output (paper: "Conv2 before striding"); MobileNetV3-Large:
    # the depthwise activation of stage 2's last block, 72 channels at width 1.0
    # (research/deeplab's layer_4/depthwise_output).
    resnet = tiny_config()
    endpoints = build_backbone(resnet)(_images(1, 65, 65))
    assert low_level_endpoint(resnet) == "c2" and endpoints["c2"].shape == (1, 17, 17, 32)
    mobilenet = tiny_mobilenet_config(width_multiplier=1.0)
    backbone = build_backbone(mobilenet)
    feature = backbone(_images(1, 65, 65))[low_level_endpoint(mobilenet)]
    assert feature.shape == (1, 17, 17, 72)
    assert backbone.get_layer("conv2_block2_dw_act").output is backbone.output["c2_depthwise"]


@pytest.mark.parametrize("backbone", sorted(MAKERS))
@pytest.mark.parametrize("separable", [False, True])
def test_every_trainable_variable_gets_a_gradient(backbone, separable):
    model = build_deeplabv3(MAKERS[backbone](decoder_separable=separable, **PLUS))
    labels = np.random.default_rng(1).integers(0, 5, (2, 65, 67))
    with tf.GradientTape() as tape:
        logits = model(_images(2, 65, 67), training=True)
        loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
            labels, logits, from_logits=True))
    grads = tape.gradient(loss, model.trainable_variables)
    missing = [v.path for v, g in zip(model.trainable_variables, grads)
               if g is None or not np.any(g.numpy())]
    assert not missing
    names = {v.path.split("/")[0] for v in model.trainable_variables}
    prefix = "decoder_0_depthwise_conv" if separable else "decoder_0_conv"
    assert {"decoder_project_conv", prefix, "logits"} <= names


def test_decoder_macs_at_513_are_the_analytic_count():
    # R101 at 513x513, OS16: the decoder runs at 129x129 (stride 4): 1x1 256->48,
    # 3x3 (256 + 48)->256, 3x3 256->256; the logits (256->21) move from 33x33 to 129x129.
    v3 = build_deeplabv3(ModelConfig(), input_shape=(513, 513, 3))
    plus = build_deeplabv3(ModelConfig(decoder="deeplabv3plus"), input_shape=(513, 513, 3))
    low, high = 129 * 129, 33 * 33
    expected = (low * (256 * 48 + 9 * 304 * 256 + 9 * 256 * 256)
                + 21 * 256 * (low - high))
    assert count_macs(plus) - count_macs(v3) == expected
    separable = build_deeplabv3(ModelConfig(decoder="deeplabv3plus", decoder_separable=True),
                                input_shape=(513, 513, 3))
    expected_separable = (low * (256 * 48 + 9 * 304 + 304 * 256 + 9 * 256 + 256 * 256)
                          + 21 * 256 * (low - high))
    assert count_macs(separable) - count_macs(v3) == expected_separable


def test_config_refuses_what_the_decoder_cannot_take():
    with pytest.raises(ValueError, match="decoder='unet' is not one of"):
        tiny_config(decoder="unet")
    with pytest.raises(ValueError, match="head_filters=32 .* set head_filters=0"):
        tiny_config(head_filters=32, **PLUS)
    with pytest.raises(ValueError, match="decoder_filters=0"):
        tiny_config(**dict(PLUS, decoder_filters=0))
    # Old experiment.json files (no decoder fields) load as DeepLabv3.
    values = tiny_config().to_dict()
    for field in ("decoder", "decoder_filters", "decoder_low_level_filters", "decoder_separable"):
        values.pop(field)
    assert ModelConfig.from_dict(values).decoder == "none"


@pytest.mark.parametrize("backbone", sorted(MAKERS))
def test_transfer_from_deeplabv3_carries_encoder_and_leaves_decoder_and_logits(backbone):
    source_config = MAKERS[backbone]()
    target_config = MAKERS[backbone](**PLUS)
    keras.utils.set_random_seed(1)
    source = build_deeplabv3(source_config)
    keras.utils.set_random_seed(2)
    target = build_deeplabv3(target_config)
    logits_before = [w.copy() for w in target.get_layer("logits").get_weights()]
    messages = []
    transfer_weights(source, target, log=messages.append,
                     leave_out=not_carried(source_config, target_config))
    # Same shapes ([1, 1, 16, 5] both) yet left out: they read other features.
    assert any("'logits'" in m for m in messages)
    for before, after in zip(logits_before, target.get_layer("logits").get_weights()):
        np.testing.assert_array_equal(before, after)
    images = _images(2, 57, 71)
    encoder = [keras.Model(m.input, m.get_layer("aspp_project_relu").output)
               for m in (source, target)]
    np.testing.assert_array_equal(encoder[0](images, training=False).numpy(),
                                  encoder[1](images, training=False).numpy())
    assert not_carried(source_config, source_config) == ()


def test_auxiliary_head_beside_the_decoder():
    # voc_mobilenetv3_plus_os16 keeps torchvision's auxiliary head: a second output for
    # the training loss, absent from the inference graph.
    from deeplabv3_tf.model.deeplabv3 import AUX_LOGITS, LOGITS, main_output

    config = tiny_mobilenet_config(aux_head=True, **PLUS)
    model = build_deeplabv3(config)
    images = _images(1, 61, 45)
    outputs = model(images, training=False)
    assert outputs[LOGITS].shape == outputs[AUX_LOGITS].shape == (1, 61, 45, 5)
    inference = build_deeplabv3(config, include_aux=False)
    assert not any(layer.name.startswith("aux") for layer in inference.layers)
    np.testing.assert_array_equal(main_output(model)(images).numpy(), outputs[LOGITS].numpy())

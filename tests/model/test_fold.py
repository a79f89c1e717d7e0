"""The inference-speed layers compute what the plain Keras layers compute.

AtrousConv2D (native dilated conv, subsampled strided 1x1) against
keras.layers.Conv2D; FusedBatchNormalization against
keras.layers.BatchNormalization; the BN-folded float32 and bfloat16 graphs
against the trained graph.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from deeplabv3_tf.model import build_deeplabv3, layers
from deeplabv3_tf.model.cost import count_macs
from deeplabv3_tf.model.fold import fold_batch_norm
from deeplabv3_tf.model.layers import AtrousConv2D, FusedBatchNormalization
from tests.helpers import tiny_config


def _value_and_grads(layer, x, **call):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, **call)
        # A loss whose gradient differs per channel and position.
        loss = tf.reduce_sum(tf.cast(y, tf.float32) ** 2 * tf.range(y.shape[-1], dtype=tf.float32))
    grads = tape.gradient(loss, [x] + layer.trainable_weights)
    return y.numpy(), [g.numpy() for g in grads]


@pytest.mark.parametrize("kernel,strides,rate,padding", [
    (3, 1, 1, "same"), (3, 1, 2, "same"), (3, 1, 5, "same"), (1, 2, 1, "valid"),
    (3, 2, 1, "valid")])
@pytest.mark.parametrize("native,training", [(True, False), (True, True), (False, False)])
def test_atrous_conv_equals_keras_conv(kernel, strides, rate, padding, native, training,
                                       monkeypatch):
    if not native:  # TensorFlow without oneDNN: Keras' own lowering
        monkeypatch.setattr(layers, "native_dilated_conv_supported", lambda dtype: False)
    x = np.random.default_rng(0).normal(size=(2, 13, 11, 6)).astype(np.float32)
    args = dict(filters=5, kernel_size=kernel, strides=strides, dilation_rate=rate,
                padding=padding)
    reference, ours = keras.layers.Conv2D(**args), AtrousConv2D(**args)
    reference.build(x.shape)
    ours.build(x.shape)
    ours.set_weights(reference.get_weights())
    y_ref, g_ref = _value_and_grads(reference, x)
    # training=True: 1x1 convs take their gradients as matmuls.
    y, g = _value_and_grads(ours, x, training=training)
    assert y.shape == y_ref.shape
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(g, g_ref):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_fused_batch_norm_equals_keras_batch_norm(policy):
    rng = np.random.default_rng(1)
    x = rng.normal(1.5, 2.0, (2, 9, 11, 8)).astype(np.float32)
    reference = keras.layers.BatchNormalization(momentum=0.9, dtype=policy)
    ours = FusedBatchNormalization(momentum=0.9, dtype=policy)
    for layer in (reference, ours):
        layer.build(x.shape)
        layer.set_weights([rng.uniform(0.5, 1.5, 8), rng.normal(0, 1, 8),
                           rng.normal(0, 1, 8), rng.uniform(0.5, 2, 8)] if layer is reference
                          else reference.get_weights())
    atol = 1e-5 if policy == "float32" else 3e-2
    y_ref, g_ref = _value_and_grads(reference, x, training=True)
    y, g = _value_and_grads(ours, x, training=True)
    assert y.dtype == y_ref.dtype
    np.testing.assert_allclose(y.astype(np.float32), y_ref.astype(np.float32), atol=atol)
    for a, b in zip(g, g_ref):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=atol * 10)
    # Moving statistics updated the same way (biased batch variance, as Keras).
    np.testing.assert_allclose(ours.moving_mean.numpy(), reference.moving_mean.numpy(), atol=1e-6)
    np.testing.assert_allclose(ours.moving_variance.numpy(), reference.moving_variance.numpy(),
                               rtol=1e-5)
    np.testing.assert_allclose(ours(x).numpy().astype(np.float32),
                               reference(x).numpy().astype(np.float32), atol=atol)


def _randomised_model(config):
    model = build_deeplabv3(config)
    rng = np.random.default_rng(2)
    for layer in model.get_layer("backbone").layers + model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, n), rng.normal(0, 0.2, n),
                               rng.normal(0, 0.3, n), rng.uniform(0.5, 2.0, n)])
    return model


def test_folded_graph_equals_trained_graph():
    config = tiny_config()
    model = _randomised_model(config)
    folded = fold_batch_norm(model, config)
    names = [l.name for l in folded.get_layer("backbone").layers]
    assert not [n for n in names if n.endswith("_bn")]
    assert folded.get_layer("backbone").get_layer("conv1_conv").use_bias
    images = np.random.default_rng(3).uniform(0, 255, (2, 97, 131, 3)).astype(np.float32)
    expected = model(images, training=False).numpy()
    actual = folded(images).numpy()
    assert np.abs(expected).std() > 1.0
    np.testing.assert_allclose(actual, expected, atol=1e-5 * np.abs(expected).max())


def test_bfloat16_folded_graph_is_close_to_float32():
    config = tiny_config()
    model = _randomised_model(config)
    folded = fold_batch_norm(model, config, "bfloat16")
    conv = folded.get_layer("backbone").get_layer("conv2_block1_2_conv")
    assert conv.compute_dtype == "bfloat16" and conv.kernel.dtype == "float32"
    assert folded.get_layer("logits").compute_dtype == "float32"
    images = np.random.default_rng(4).uniform(0, 255, (2, 97, 131, 3)).astype(np.float32)
    expected = model(images, training=False).numpy()
    actual = folded(images).numpy()
    assert actual.dtype == np.float32
    # bfloat16 keeps 8 bits of mantissa: ~1% of the logits' range.
    assert np.abs(actual - expected).max() < 0.05 * np.abs(expected).max()
    with pytest.raises(ValueError, match="precision"):
        fold_batch_norm(model, config, "float16")


def test_inside_only_macs_leave_out_padding_taps():
    model = build_deeplabv3(tiny_config(output_stride=8, aspp_rates=(1, 30, 60)),
                            input_shape=(65, 65, 3))
    every, inside = count_macs(model), count_macs(model, inside_only=True)
    # 9x9 features: rate 30 and 60 taps all fall outside but the centre one.
    aspp = 9 * 9 * 256 * 16  # positions x c5 channels x ASPP filters
    assert every - inside >= 2 * 8 * aspp
    assert inside < every


def test_native_dilated_conv_probe():
    # oneDNN (this build) has float32 and bfloat16 dilated gradients; float16 on
    # CPU goes to TensorFlow's own kernels, which have none.
    assert layers.native_dilated_conv_supported("float32")
    if not tf.config.list_physical_devices("GPU"):
        assert not layers.native_dilated_conv_supported("float16")

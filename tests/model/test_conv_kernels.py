"""The atrous conv computed tap by tap equals the native dilated conv.

Forward, input gradient and filter gradient of `conv_kernels.atrous_conv` in
both implementations against `tf.nn.conv2d(..., dilations=rate)` and its own
gradients, on odd and even sizes, rates from 2 to larger than the feature map,
with shapes known while tracing and unknown (the exported signatures).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from deeplabv3_tf.model import conv_kernels
from deeplabv3_tf.model.conv_kernels import atrous_conv, atrous_conv_implementation
from deeplabv3_tf.model.layers import AtrousConv2D
from tests.helpers import assert_close, skip_without_kernels

SIZES = [(7, 9), (8, 8), (5, 6)]  # odd, even, mixed; rate 12 exceeds all of them
RATES = [(2, 2), (3, 2), (12, 12)]


def _reference(x, kernel, rate, linear=False):
    """The native dilated conv and its autodiff gradients of a per-channel weighted loss."""
    x, kernel = tf.constant(x), tf.constant(kernel)
    with tf.GradientTape() as tape:
        tape.watch([x, kernel])
        y = tf.nn.conv2d(x, kernel, 1, "SAME", dilations=list(rate))
        loss = _loss(y, linear)
    return (y.numpy(), *(g.numpy() for g in tape.gradient(loss, [x, kernel])))


def _loss(y, linear=False):
    """A loss whose gradient differs per channel and position; `linear`: one whose
    gradient does not depend on y (so that round-off in y does not reach it)."""
    y = tf.cast(y, tf.float32)
    weights = tf.range(1, y.shape[-1] + 1, dtype=tf.float32)
    if linear:
        return tf.reduce_sum(y * tf.cos(tf.cumsum(tf.ones_like(y), axis=2)) * weights)
    return tf.reduce_sum(y * tf.sin(y) * weights)


def _ours(x, kernel, rate, implementation, training, dynamic, linear=False):
    spec = [tf.TensorSpec([None, None, None, x.shape[-1]] if dynamic else x.shape, x.dtype),
            tf.TensorSpec(kernel.shape, kernel.dtype)]

    @tf.function(input_signature=spec)
    def run(x, kernel):
        with tf.GradientTape() as tape:
            tape.watch([x, kernel])
            y = atrous_conv(x, kernel, rate, implementation, training)
            loss = _loss(y, linear)
        return (y, *tape.gradient(loss, [x, kernel]))

    return [t.numpy() for t in run(tf.constant(x), tf.constant(kernel))]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("implementation,training", [("taps", False), ("taps", True),
                                                     ("native", True)])
@pytest.mark.parametrize("dynamic", [False, True])
def test_atrous_conv_equals_native_conv(size, rate, implementation, training, dynamic):
    rng = np.random.default_rng(sum(size) + rate[0])
    x = rng.normal(size=(2, *size, 5)).astype(np.float32)
    kernel = rng.normal(size=(3, 3, 5, 4)).astype(np.float32)
    expected = _reference(x, kernel, rate)
    got = _ours(x, kernel, rate, implementation, training, dynamic)
    names = ("outputs", "input gradient", "filter gradient")
    # training=False has no custom gradient: autodiff of the taps' matmuls is checked too.
    for name, a, b in zip(names, got, expected):
        assert a.shape == b.shape, name
        assert_close(a, b, rel=1e-5, err_msg=f"{name}, {implementation}, rate {rate}")


@pytest.mark.parametrize("training", [False, True])
def test_bfloat16_taps_round_like_the_native_conv(training):
    """bfloat16 inputs: the taps and the native conv both stay within bfloat16
    round-off of the float32 result of the same (rounded) inputs."""
    skip_without_kernels("bfloat16")
    rng = np.random.default_rng(3)
    x = tf.cast(rng.normal(size=(1, 9, 10, 16)).astype(np.float32), tf.bfloat16)
    kernel = tf.cast(rng.normal(size=(3, 3, 16, 8)).astype(np.float32), tf.bfloat16)
    rate = (2, 3)
    exact = _reference(tf.cast(x, tf.float32).numpy(), tf.cast(kernel, tf.float32).numpy(), rate,
                       linear=True)
    for implementation in ("taps", "native"):
        got = _ours(x, kernel, rate, implementation, training, dynamic=False, linear=True)
        for a, b in zip(got, exact):
            assert a.dtype == tf.bfloat16.as_numpy_dtype
            # 8 significant bits, and the sum of up to 9 rounded taps.
            assert_close(a.astype(np.float32), b, rel=5e-2)


def test_taps_leave_out_what_only_sees_padding():
    """At a rate >= the feature map only the centre tap is computed: its matmul alone."""
    x = tf.TensorSpec([1, 5, 6, 4], tf.float32)
    kernel = tf.TensorSpec([3, 3, 4, 2], tf.float32)
    for rate, matmuls in (((6, 6), 1), ((2, 2), 9), ((6, 2), 3)):
        graph = tf.function(lambda x, k: atrous_conv(x, k, rate, "taps")).get_concrete_function(
            x, kernel).graph
        assert sum(op.type == "MatMul" for op in graph.get_operations()) == matmuls, rate


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
@pytest.mark.parametrize("implementation", ["taps", "native"])
def test_atrous_layer_takes_the_implementation_asked_for(policy, implementation, monkeypatch):
    """AtrousConv2D with DEEPLABV3_ATROUS_CONV set computes Keras' conv, in
    training (gradients too) and inference; taps show as matmuls in the graph."""
    skip_without_kernels(policy)
    monkeypatch.setenv(conv_kernels.ENVIRONMENT_VARIABLE, implementation)
    rng = np.random.default_rng(4)
    x = tf.constant(rng.normal(size=(2, 11, 10, 6)).astype(np.float32))
    args = dict(filters=5, kernel_size=3, dilation_rate=4, padding="same", dtype=policy)
    reference, ours = keras.layers.Conv2D(**args), AtrousConv2D(**args)
    for layer in (reference, ours):
        layer.build(x.shape)
    ours.set_weights(reference.get_weights())
    graph = tf.function(lambda t: ours(t)).get_concrete_function(x).graph
    assert any(op.type == "MatMul" for op in graph.get_operations()) == (implementation == "taps")
    rel = 1e-5 if policy == "float32" else 5e-2
    for training in (False, True):
        results = []
        for layer in (reference, ours):
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = _loss(layer(x, training=training))
            results.append([g.numpy().astype(np.float32)
                            for g in tape.gradient(loss, [x, *layer.trainable_weights])])
            results[-1].append(float(loss))
        for a, b in zip(*results):
            assert_close(np.asarray(a), np.asarray(b), rel=rel)


def test_implementation_choice(monkeypatch):
    monkeypatch.delenv(conv_kernels.ENVIRONMENT_VARIABLE, raising=False)
    assert atrous_conv_implementation() == "native"
    monkeypatch.setenv(conv_kernels.ENVIRONMENT_VARIABLE, "Taps")
    assert atrous_conv_implementation() == "taps"
    monkeypatch.setenv(conv_kernels.ENVIRONMENT_VARIABLE, "fast")
    with pytest.raises(ValueError, match="DEEPLABV3_ATROUS_CONV='fast'"):
        atrous_conv_implementation()


@pytest.mark.parametrize("dynamic", [False, True], ids=["known", "unknown"])
@pytest.mark.parametrize("strides", [(2, 2), (3, 2), (1, 1)])
def test_subsample_equals_strided_slice(strides, dynamic):
    # Odd, even and mixed sizes; values exact (a copy), gradients exact (a scatter).
    rng = np.random.default_rng(4)
    sh, sw = strides
    for size in [(7, 9), (8, 8), (5, 6)]:
        x = rng.normal(size=(2, *size, 3)).astype(np.float32)
        upstream = rng.normal(size=(2, -(-size[0] // sh), -(-size[1] // sw), 3))
        upstream = tf.constant(upstream, tf.float32)
        spec = tf.TensorSpec([None, None, None, 3] if dynamic else x.shape, tf.float32)

        def value_and_gradient(function):
            @tf.function(input_signature=[spec])
            def run(inputs):
                with tf.GradientTape() as tape:
                    tape.watch(inputs)
                    y = function(inputs)
                    loss = tf.reduce_sum(y * upstream)
                return y, tape.gradient(loss, inputs)
            return [t.numpy() for t in run(tf.constant(x))]

        expected = value_and_gradient(lambda t: t[:, ::sh, ::sw, :])
        actual = value_and_gradient(lambda t: conv_kernels.subsample(t, strides))
        np.testing.assert_array_equal(actual[0], expected[0])
        np.testing.assert_array_equal(actual[1], expected[1])

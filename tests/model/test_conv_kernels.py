"""The atrous conv computed tap by tap equals the native dilated conv.

Forward, input gradient and filter gradient of `conv_kernels.atrous_conv` in
both implementations against a reference that needs no dilated kernel (the
kernel with rate - 1 zeros between its taps, in an ordinary conv, and that
conv's gradients), on odd and even sizes, rates from 2 to larger than the
feature map, with shapes known while tracing and unknown (the exported
signatures). Values agree within the round-off bound of the sums they are
(`assert_within_sum_bound`), on any CPU's kernels.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from deeplabv3_tf.model import conv_kernels
from deeplabv3_tf.model.conv_kernels import atrous_conv, atrous_conv_implementation
from deeplabv3_tf.model.layers import AtrousConv2D
from deeplabv3_tf.model.layers import native_dilated_conv_supported
from deeplabv3_tf.core.precision import compute_dtype
from tests.helpers import assert_within_bound, assert_within_sum_bound, skip_without_kernels

SIZES = [(7, 9), (8, 8), (5, 6)]  # odd, even, mixed; rate 12 exceeds all of them
RATES = [(2, 2), (3, 2), (12, 12)]

pytestmark = pytest.mark.numerics


def _dilated(kernel, rate):
    """[kh, kw, C, O] -> [(kh - 1) rh + 1, (kw - 1) rw + 1, C, O], zeros between taps."""
    kh, kw, channels, filters = kernel.shape
    rows = tf.repeat(tf.range(kh) * rate[0], kw)
    columns = tf.tile(tf.range(kw) * rate[1], [kh])
    shape = [(kh - 1) * rate[0] + 1, (kw - 1) * rate[1] + 1, channels, filters]
    taps = tf.reshape(kernel, [kh * kw, channels, filters])
    return tf.scatter_nd(tf.stack([rows, columns], 1), taps, shape)


def _reference(x, kernel, rate, weights=None):
    """The atrous conv as an ordinary conv of the dilated kernel, and its gradients
    (of `_loss`, or of sum(y * weights)), in float32 whatever the inputs' dtype."""
    x, kernel = tf.cast(x, tf.float32), tf.cast(kernel, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch([x, kernel])
        y = tf.nn.conv2d(x, _dilated(kernel, rate), 1, "SAME")
        loss = _loss(y) if weights is None else tf.reduce_sum(y * weights)
    return (y.numpy(), *(g.numpy() for g in tape.gradient(loss, [x, kernel])))


def _magnitudes(x, kernel, rate):
    """sum|terms| of every output and gradient value: the same sums of the
    operands' absolute values (the loss's gradient is its weights)."""
    y = tf.nn.conv2d(tf.constant(x), _dilated(tf.constant(kernel), rate), 1, "SAME")
    return _reference(np.abs(x), np.abs(kernel), rate, weights=tf.abs(_loss_weights(y)))


def _skip_without_native(dtype="float32"):
    if not native_dilated_conv_supported(dtype):
        pytest.skip(f"no native dilated {dtype} conv gradient in this TensorFlow's CPU kernels "
                    "(Eigen's, without oneDNN)")


def _loss_weights(y):
    """float32 weights shaped like y, differing per column and channel."""
    columns = tf.cos(tf.cumsum(tf.ones_like(y, tf.float32), axis=2))
    return columns * tf.range(1, y.shape[-1] + 1, dtype=tf.float32)


def _loss(y):
    """A loss linear in y, whose gradient (`_loss_weights`) differs per channel and
    position and does not depend on y: round-off in y does not reach it."""
    return tf.reduce_sum(tf.cast(y, tf.float32) * _loss_weights(y))


def _ours(x, kernel, rate, implementation, training, dynamic):
    spec = [tf.TensorSpec([None, None, None, x.shape[-1]] if dynamic else x.shape, x.dtype),
            tf.TensorSpec(kernel.shape, kernel.dtype)]

    @tf.function(input_signature=spec)
    def run(x, kernel):
        with tf.GradientTape() as tape:
            tape.watch([x, kernel])
            y = atrous_conv(x, kernel, rate, implementation, training)
            loss = _loss(y)
        return (y, *tape.gradient(loss, [x, kernel]))

    return [t.numpy() for t in run(tf.constant(x), tf.constant(kernel))]


# bfloat16: u = 2**-8. Each conv or matmul accumulates its products in float32 and
# rounds its result once; the taps add up to 9 such results in bfloat16, and the
# loss's gradient is rounded to bfloat16 once: at most 11 roundings of values no
# larger than sum|terms|.
BFLOAT16_BOUND = 11 * 2.0 ** -8


def _check(got, x, kernel, rate, err_msg, bfloat16=False):
    """Output, input gradient and filter gradient against the reference, within
    the round-off bound of each value's sum (terms: 9 taps x input channels,
    9 taps x output channels, one per input position)."""
    x32, kernel32 = (np.asarray(tf.cast(t, tf.float32)) for t in (x, kernel))
    expected, magnitudes = _reference(x32, kernel32, rate), _magnitudes(x32, kernel32, rate)
    terms = (9 * kernel.shape[2], 9 * kernel.shape[3], int(np.prod(x.shape[:3])))
    names = ("outputs", "input gradient", "filter gradient")
    for name, a, b, m, n in zip(names, got, expected, magnitudes, terms):
        assert a.shape == b.shape, name
        if bfloat16:
            assert a.dtype == tf.bfloat16.as_numpy_dtype, name
            assert_within_bound(a.astype(np.float64), b, BFLOAT16_BOUND * m, f"{name}, {err_msg}")
        else:
            assert_within_sum_bound(a, b, m, n, err_msg=f"{name}, {err_msg}")


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("implementation,training", [("taps", False), ("taps", True),
                                                     ("native", True)])
@pytest.mark.parametrize("dynamic", [False, True])
def test_atrous_conv_equals_native_conv(size, rate, implementation, training, dynamic):
    if implementation == "native":
        _skip_without_native()
    rng = np.random.default_rng(sum(size) + rate[0])
    x = rng.normal(size=(2, *size, 5)).astype(np.float32)
    kernel = rng.normal(size=(3, 3, 5, 4)).astype(np.float32)
    got = _ours(x, kernel, rate, implementation, training, dynamic)
    # training=False has no custom gradient: autodiff of the taps' matmuls is checked too.
    _check(got, x, kernel, rate, f"{implementation}, rate {rate}")


@pytest.mark.parametrize("implementation", ["taps", "native"])
@pytest.mark.parametrize("training", [False, True])
def test_bfloat16_taps_round_like_the_native_conv(training, implementation):
    """bfloat16 inputs: the taps and the native conv both stay within bfloat16
    round-off of the float32 result of the same (rounded) inputs."""
    skip_without_kernels("bfloat16")
    if implementation == "native":
        _skip_without_native("bfloat16")
    rng = np.random.default_rng(3)
    x = tf.cast(rng.normal(size=(1, 9, 10, 16)).astype(np.float32), tf.bfloat16)
    kernel = tf.cast(rng.normal(size=(3, 3, 16, 8)).astype(np.float32), tf.bfloat16)
    rate = (2, 3)
    got = _ours(x, kernel, rate, implementation, training, dynamic=False)
    _check(got, x, kernel, rate, implementation, bfloat16=True)


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
    if implementation == "native":
        _skip_without_native(compute_dtype(policy))
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
    bfloat16 = policy == "mixed_bfloat16"
    kernel, bias = (np.asarray(tf.cast(tf.cast(w, ours.compute_dtype), tf.float32))
                    for w in ours.get_weights())
    x32 = np.asarray(tf.cast(tf.cast(x, ours.compute_dtype), tf.float32))
    rate = (4, 4)
    # The loss is linear (`_loss`): its gradient, the same for
    # both layers, is a per-position, per-channel weight; a bias adds one term
    # to each output, and its gradient sums the weights over B x H x W.
    exact = list(_reference(x32, kernel, rate))
    exact[0] = exact[0] + bias
    magnitudes = list(_magnitudes(x32, kernel, rate))
    magnitudes[0] = magnitudes[0] + np.abs(bias)
    weights = tf.reduce_sum(tf.abs(_loss_weights(tf.zeros(exact[0].shape))), axis=(0, 1, 2))
    for training in (False, True):
        results = []
        for layer in (reference, ours):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = layer(x, training=training)
                loss = _loss(y)
            results.append([np.asarray(tf.cast(t, tf.float32)) for t in (
                y, *tape.gradient(loss, [x, *layer.trainable_weights]))])
        for i, (a, b) in enumerate(zip(*results)):
            name = ("outputs", "input gradient", "filter gradient", "bias gradient")[i]
            if i == 3:  # a sum of the loss's weights: the same in both, to round-off
                assert_within_sum_bound(a, b, weights, 2 * 11 * 10, err_msg=name)
            elif bfloat16:
                for c in (a, b):
                    assert_within_bound(c, exact[i], (BFLOAT16_BOUND + 2.0 ** -8) * magnitudes[i],
                                        f"{name}, training={training}")
            else:
                terms = (9 * 6 + 1, 9 * 5, 2 * 11 * 10)[i]
                assert_within_sum_bound(a, b, magnitudes[i], terms,
                                        err_msg=f"{name}, training={training}")


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

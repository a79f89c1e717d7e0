"""The inference-speed layers compute what the plain Keras layers compute.

AtrousConv2D (native dilated conv, subsampled strided 1x1) against
keras.layers.Conv2D; FusedBatchNormalization against
keras.layers.BatchNormalization; the BN-folded float32 and bfloat16 graphs
against the trained graph.
"""

import functools

import keras
import numpy as np
import pytest
import tensorflow as tf

from deeplabv3_tf.model import build_deeplabv3, layers
from deeplabv3_tf.model.cost import count_macs
from deeplabv3_tf.model.fold import fold_batch_norm
from deeplabv3_tf.model.layers import AtrousConv2D, FusedBatchNormalization
from tests.helpers import (assert_close, assert_within_bound, skip_without_kernels, tiny_config,
                           tiny_mobilenet_config)

pytestmark = pytest.mark.numerics


def _value_and_grads(layer, x, **call):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, **call)
        # A loss whose gradient differs per channel and position.
        loss = tf.reduce_sum(tf.cast(y, tf.float32) ** 2 * tf.range(y.shape[-1], dtype=tf.float32))
    grads = tape.gradient(loss, [x] + layer.trainable_weights)
    return y.numpy(), [g.numpy() for g in grads]


# Round-off relative to the largest value: float32 ~1e-7 per op; bfloat16 keeps
# 8 significant bits, float16 11 (inputs and kernels are rounded before the
# sum, which oneDNN and Eigen accumulate in float32 or in the dtype itself).
REL = {"float32": 1e-5, "mixed_bfloat16": 2e-2, "mixed_float16": 4e-3}
GRAD_REL = {"float32": 1e-4, "mixed_bfloat16": 5e-2, "mixed_float16": 2e-2}


def _op_types(layer, x, training):
    graph = tf.function(lambda t: layer(t, training=training)).get_concrete_function(
        tf.TensorSpec(x.shape, tf.float32)).graph
    types = {op.type for op in graph.get_operations()}
    for function in graph.as_graph_def().library.function:
        types |= {node.op for node in function.node_def}
    return types


@pytest.mark.parametrize("kernel,strides,rate,padding", [
    (3, 1, 1, "same"), (3, 1, 2, "same"), (3, 1, 5, "same"), (1, 2, 1, "valid"),
    (3, 2, 1, "valid")])
@pytest.mark.parametrize("path,training", [("probed", False), ("probed", True), ("keras", False)])
@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16", "mixed_float16"])
def test_atrous_conv_equals_keras_conv(kernel, strides, rate, padding, path, training, policy,
                                       monkeypatch):
    """Whichever path the layer takes in a dtype, it computes Keras' conv.

    "probed": the path `native_dilated_conv_supported` reports for this dtype on
    this machine (native where oneDNN has a dilated backward pass in it:
    float32 and bfloat16, and float16 on CPUs with AVX512_FP16); "keras": the
    fallback to Keras' lowering, forced (TensorFlow without oneDNN takes it).
    """
    skip_without_kernels(policy)
    compute = policy.rsplit("_", 1)[-1]
    if path == "keras":
        monkeypatch.setattr(layers, "native_dilated_conv_supported", lambda dtype: False)
    native = rate > 1 and layers.native_dilated_conv_supported(compute)
    x = np.random.default_rng(0).normal(size=(2, 13, 11, 6)).astype(np.float32)
    args = dict(filters=5, kernel_size=kernel, strides=strides, dilation_rate=rate,
                padding=padding, dtype=policy)
    reference, ours = keras.layers.Conv2D(**args), AtrousConv2D(**args)
    reference.build(x.shape)
    ours.build(x.shape)
    ours.set_weights(reference.get_weights())
    if rate > 1:
        # The path taken is the one the probe reports: Keras' lowering goes
        # through SpaceToBatchND, the native op does not.
        assert ("SpaceToBatchND" not in _op_types(ours, x, training)) == native
    y_ref, g_ref = _value_and_grads(reference, x)
    # training=True: 1x1 convs take their gradients as matmuls, atrous convs tap by tap.
    y, g = _value_and_grads(ours, x, training=training)
    assert y.shape == y_ref.shape and y.dtype == y_ref.dtype == compute
    assert_close(y.astype(np.float32), y_ref.astype(np.float32), rel=REL[policy])
    assert len(g) == len(g_ref) == 3  # input, kernel, bias
    for a, b in zip(g, g_ref):
        assert_close(a.astype(np.float32), b.astype(np.float32), rel=GRAD_REL[policy])


def _batch_norm_exact(x, gamma, beta, upstream, epsilon):
    """Training-mode BatchNorm in float64, and a first-order bound on the float32
    round-off of any computation of it.

    y = gamma x^ + beta, x^ = (x - m) / s, s = sqrt(v + eps), m and v (biased) the
    means over the N = B H W positions of a channel; the gradients of
    sum(y * upstream): dx = gamma / s (r - mean(r) - x^ mean(r x^)), dgamma =
    sum(r x^), dbeta = sum(r). Each N-term mean is off by at most gamma_N times
    the mean of its terms' magnitudes (`assert_within_sum_bound`); the variance
    by gamma_N 2 E[x^2] (either formula), so s by gamma_N E[x^2] / v relatively:
    far more than the result's own size where E[x^2] >> v, as in the input
    gradient, a difference of terms much larger than itself. The bounds add up
    those errors through the formulas, plus one rounding (u) per operation.

    Returns:
      ([y, dx, dgamma, dbeta], [their bounds]), float64.
    """
    x, upstream = x.astype(np.float64), upstream.astype(np.float64)
    n = x.shape[0] * x.shape[1] * x.shape[2]
    u = 2.0 ** -24
    g_n = n * u / (1 - n * u)
    axes = (0, 1, 2)
    m, v = x.mean(axes), x.var(axes)
    s = np.sqrt(v + epsilon)
    xh = (x - m) / s
    y = gamma * xh + beta
    r = upstream
    mean_r, mean_rxh = r.mean(axes), (r * xh).mean(axes)
    dx = gamma / s * (r - mean_r - xh * mean_rxh)
    exact = [y, dx, (r * xh).sum(axes), r.sum(axes)]

    relative_s = g_n * (x ** 2).mean(axes) / v + 2 * u
    d_xh = g_n * np.abs(x).mean(axes) / s + np.abs(xh) * relative_s + 2 * u * np.abs(xh)
    d_y = np.abs(gamma) * d_xh + 2 * u * (np.abs(gamma * xh) + np.abs(beta))
    d_mean_rxh = g_n * np.abs(r * xh).mean(axes) + (np.abs(r) * d_xh).mean(axes)
    d_dx = (np.abs(gamma / s) * (g_n * np.abs(r).mean(axes) + d_xh * np.abs(mean_rxh)
                                 + np.abs(xh) * d_mean_rxh)
            + np.abs(dx) * relative_s
            + 4 * u * np.abs(gamma / s) * (np.abs(r) + np.abs(mean_r) + np.abs(xh * mean_rxh)))
    d_dgamma = g_n * np.abs(r * xh).sum(axes) + (np.abs(r) * d_xh).sum(axes)
    d_dbeta = g_n * np.abs(r).sum(axes)
    return exact, [d_y, d_dx, d_dgamma, d_dbeta]


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_fused_batch_norm_equals_keras_batch_norm(policy):
    """Both layers within float32 round-off of the exact BatchNorm (float64), in
    training: outputs, gradients (of a loss linear in y, so that the gradient
    reaching the layer is the same for both), moving statistics."""
    skip_without_kernels(policy)
    rng = np.random.default_rng(1)
    x = rng.normal(1.5, 2.0, (2, 9, 11, 8)).astype(np.float32)
    upstream = rng.normal(0, 1, x.shape).astype(np.float32)
    reference = keras.layers.BatchNormalization(momentum=0.9, dtype=policy)
    ours = FusedBatchNormalization(momentum=0.9, dtype=policy)
    for layer in (reference, ours):
        layer.build(x.shape)
        layer.set_weights([rng.uniform(0.5, 1.5, 8), rng.normal(0, 1, 8),
                           rng.normal(0, 1, 8), rng.uniform(0.5, 2, 8)] if layer is reference
                          else reference.get_weights())
    gamma, beta, moving_mean, moving_variance = (w.astype(np.float64)
                                                 for w in reference.get_weights())
    bfloat16 = policy == "mixed_bfloat16"
    # The layers compute on their input rounded to bfloat16 (then in float32); their
    # output is rounded once more, as is the gradient that reaches them.
    x_in = np.asarray(tf.cast(tf.cast(x, tf.bfloat16), tf.float32)) if bfloat16 else x
    exact, bounds = _batch_norm_exact(x_in, gamma, beta, upstream, reference.epsilon)
    if bfloat16:
        u = 2.0 ** -8
        s = np.sqrt(x_in.astype(np.float64).var((0, 1, 2)) + reference.epsilon)
        bounds[0] = bounds[0] + u * np.abs(exact[0])
        xh = (x_in - x_in.mean((0, 1, 2))) / s
        r = np.abs(upstream.astype(np.float64))
        bounds[1] = bounds[1] + u * (np.abs(exact[1]) + np.abs(gamma / s) * (
            r + r.mean((0, 1, 2)) + np.abs(xh) * (r * np.abs(xh)).mean((0, 1, 2))))
        bounds[2] = bounds[2] + u * (r * np.abs(xh)).sum((0, 1, 2))
        bounds[3] = bounds[3] + u * np.abs(upstream).sum((0, 1, 2))
    names = ("outputs", "input gradient", "gamma gradient", "beta gradient")
    for layer in (reference, ours):
        with tf.GradientTape() as tape:
            inputs = tf.constant(x)
            tape.watch(inputs)
            y = layer(inputs, training=True)
            loss = tf.reduce_sum(tf.cast(y, tf.float32) * upstream)
        got = [y, *tape.gradient(loss, [inputs, layer.gamma, layer.beta])]
        assert y.dtype == ("bfloat16" if bfloat16 else "float32")
        for name, value, expected, bound in zip(names, got, exact, bounds):
            assert_within_bound(tf.cast(value, tf.float32), expected, bound,
                                f"{type(layer).__name__} {name}")
    # Moving statistics updated the same way (biased batch variance, as Keras):
    # 0.9 old + 0.1 batch, the batch statistics within their bounds above.
    n = x.size // 8
    g_n = n * 2.0 ** -24 / (1 - n * 2.0 ** -24)
    x64 = x_in.astype(np.float64)
    expected_mean = 0.9 * moving_mean + 0.1 * x64.mean((0, 1, 2))
    expected_variance = 0.9 * moving_variance + 0.1 * x64.var((0, 1, 2))
    for layer in (reference, ours):
        np.testing.assert_array_less(np.abs(layer.moving_mean.numpy() - expected_mean),
                                     g_n * np.abs(x64).mean((0, 1, 2)) + 1e-7 * np.abs(
                                         expected_mean) + 1e-12)
        np.testing.assert_array_less(np.abs(layer.moving_variance.numpy() - expected_variance),
                                     0.2 * g_n * (x64 ** 2).mean((0, 1, 2)) + 1e-7 * np.abs(
                                         expected_variance))
    # Inference mode: the moving statistics, the same affine map per channel.
    assert_close(ours(x).numpy().astype(np.float32), reference(x).numpy().astype(np.float32),
                 rel=2.0 ** -8 if bfloat16 else 1e-6)


def _randomised_model(config):
    """Random BN scales and shifts; moving statistics those of a batch of images
    (then perturbed), so that activations stay O(1) through the network."""
    keras.utils.set_random_seed(2)
    model = build_deeplabv3(config)
    rng = np.random.default_rng(2)
    norms = [layer for layer in model.get_layer("backbone").layers + model.layers
             if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in norms:
        n = layer.gamma.shape[0]
        layer.gamma.assign(rng.uniform(0.5, 1.5, n))
        layer.beta.assign(rng.normal(0, 0.2, n))
        layer.momentum = 0.0  # the next training-mode call sets the batch's statistics
    model(rng.uniform(0, 255, (4, 97, 131, 3)).astype(np.float32), training=True)
    for layer in norms:
        n = layer.gamma.shape[0]
        layer.moving_mean.assign(layer.moving_mean + rng.normal(0, 0.1, n))
        layer.moving_variance.assign(layer.moving_variance * rng.uniform(0.8, 1.25, n))
    return model


PLUS = dict(decoder="deeplabv3plus", decoder_low_level_filters=8, decoder_filters=16)


@pytest.mark.parametrize("make_config", [
    tiny_config, tiny_mobilenet_config,
    functools.partial(tiny_config, **PLUS),
    functools.partial(tiny_mobilenet_config, decoder_separable=True, **PLUS)],
    ids=["resnet", "mobilenet", "resnet_decoder", "mobilenet_separable_decoder"])
def test_folded_graph_equals_trained_graph(make_config):
    # MobileNetV3 and the separable decoder: depthwise kernels [k, k, C, 1] take the
    # BN scale on their third axis.
    config = make_config()
    model = _randomised_model(config)
    folded = fold_batch_norm(model, config)
    names = [l.name for l in folded.get_layer("backbone").layers + folded.layers]
    assert not [n for n in names if n.endswith("_bn")]
    assert folded.get_layer("backbone").get_layer("conv1_conv").use_bias
    images = np.random.default_rng(3).uniform(0, 255, (2, 97, 131, 3)).astype(np.float32)
    expected = model(images, training=False).numpy()
    actual = folded(images).numpy()
    # Logits that vary across the image: every layer's folding shows in them.
    # (0.07 and 0.04 of the largest here; uncalibrated BN statistics gave 0.005.)
    assert expected.std(axis=(1, 2)).mean() > 0.02 * np.abs(expected).max()
    # Folding reorders float32 round-off through every layer: 0.25e-5 to 1.05e-5 of the
    # largest logit over random initialisations; one BN folded 1 % off gives 4e-3 to 1e-2.
    np.testing.assert_allclose(actual, expected, atol=1e-4 * np.abs(expected).max())


def test_bfloat16_folded_graph_is_close_to_float32():
    skip_without_kernels("bfloat16")
    config = tiny_config()
    model = _randomised_model(config)
    folded = fold_batch_norm(model, config, "bfloat16")
    conv = folded.get_layer("backbone").get_layer("conv2_block1_2_conv")
    assert conv.compute_dtype == "bfloat16" and conv.kernel.dtype == "bfloat16"
    logits = folded.get_layer("logits")
    assert logits.compute_dtype == "float32" and logits.kernel.dtype == "float32"
    # The bfloat16 weights are the float32 fold rounded once (what a per-call cast gave).
    folded32 = fold_batch_norm(model, config, "float32")
    conv32 = folded32.get_layer("backbone").get_layer("conv2_block1_2_conv")
    for weight, weight32 in zip(conv.weights, conv32.weights):
        np.testing.assert_array_equal(
            np.asarray(weight).astype(np.float32),
            tf.cast(tf.cast(weight32, tf.bfloat16), tf.float32).numpy())
    images = np.random.default_rng(4).uniform(0, 255, (2, 97, 131, 3)).astype(np.float32)
    expected = model(images, training=False).numpy()
    actual = folded(images).numpy()
    assert actual.dtype == np.float32
    # bfloat16 keeps 8 bits of mantissa, rounded again at every layer: 2-6 % of the
    # largest logit here (one ulp is 0.8 %), depending on the kernels the CPU runs.
    assert np.abs(actual - expected).max() < 0.1 * np.abs(expected).max()
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


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_native_dilated_conv_probe_says_what_the_gradient_does(dtype):
    """The probe's answer (cached per dtype) is what a dilated conv's gradient
    through the public API does here: computed, or refused. Which dtypes have
    the native kernels depends on the build and the CPU (float16 on CPU: only
    where oneDNN has AVX512_FP16 kernels), so no answer is asserted."""
    rng = np.random.default_rng(5)
    x = tf.cast(rng.normal(size=(1, 9, 9, 2)), dtype)
    kernel = tf.cast(rng.normal(size=(3, 3, 2, 2)), dtype)
    try:
        with tf.GradientTape() as tape:
            tape.watch([x, kernel])
            y = tf.nn.conv2d(x, kernel, 1, "SAME", dilations=2)
            loss = tf.reduce_sum(tf.cast(y, tf.float32) ** 2)
        grads = tape.gradient(loss, [x, kernel])
        works = all(g is not None for g in grads)
    except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError,
            tf.errors.NotFoundError, tf.errors.AbortedError):
        works = False
    assert layers.native_dilated_conv_supported(dtype) is works
    assert layers.native_dilated_conv_supported(dtype) is works  # cached, same answer


@pytest.mark.parametrize("make_config", [tiny_config, tiny_mobilenet_config])
def test_residual_adds_are_addn_ops_in_graphs_of_unknown_size(make_config):
    """Every residual add is one AddN where the image size is unknown (grappler fuses
    it into the conv before it without proving shapes equal), and computes Keras' Add."""
    config = make_config()
    model = fold_batch_norm(build_deeplabv3(config), config)
    adds = [layer for layer in model.get_layer("backbone").layers
            if isinstance(layer, keras.layers.Add)]
    assert adds and all(isinstance(layer, layers.ResidualAdd) for layer in adds)
    graph = tf.function(lambda x: model(x, training=False)).get_concrete_function(
        tf.TensorSpec([None, None, None, 3], tf.float32)).graph
    assert sum(op.type == "AddN" for op in graph.get_operations()) == len(adds)
    # At a known size grappler fuses Keras' AddV2 itself (and LiteRT has no int8 ADD_N).
    graph = tf.function(lambda x: model(x, training=False)).get_concrete_function(
        tf.TensorSpec([1, 65, 65, 3], tf.float32)).graph
    assert not any(op.type == "AddN" for op in graph.get_operations())
    a, b = (np.random.default_rng(i).normal(size=(2, 5, 7, 3)).astype(np.float32)
            for i in (0, 1))
    np.testing.assert_array_equal(layers.ResidualAdd()([a, b]).numpy(),
                                  keras.layers.Add()([a, b]).numpy())

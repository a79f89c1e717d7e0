import keras
import numpy as np
import pytest
import tensorflow as tf

from deeplabv3_tf.model.config import ModelConfig
from deeplabv3_tf.model import build_deeplabv3
from deeplabv3_tf.model.cost import count_macs, count_params
from tests.helpers import assert_close, skip_without_kernels, tiny_config


def _images(batch, height, width, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, (batch, height, width, 3)).astype("float32")


@pytest.mark.parametrize("size", [(97, 131), (96, 130), (33, 40)])
@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_logits_match_input_size(size, output_stride):
    model = build_deeplabv3(tiny_config(output_stride=output_stride))
    logits = model(_images(2, *size))
    assert logits.shape == (2, *size, 5)
    assert logits.dtype == "float32"
    assert np.all(np.isfinite(logits.numpy()))


def test_full_size_input_513():
    model = build_deeplabv3(tiny_config(output_stride=8))
    assert model(_images(1, 513, 513)).shape == (1, 513, 513, 5)


@pytest.mark.numerics
def test_runs_in_tf_function_with_unknown_size():
    model = build_deeplabv3(tiny_config())
    predict = tf.function(
        lambda x: model(x, training=False),
        input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    for size in [(97, 131), (64, 48)]:
        images = _images(1, *size)
        # The traced graph may run other kernels than eager calls (grappler fuses ops).
        assert_close(predict(images).numpy(), model(images).numpy())


def test_deeplabv3_r101_trainable_parameter_count():
    # torchvision's deeplabv3_resnet101 minus its auxiliary head and its extra
    # 3x3 conv after ASPP.
    model = build_deeplabv3(ModelConfig(num_classes=21, depth=101, stem="v0",
                                        output_stride=16))
    assert count_params(model) == 58_040_661


def test_macs_of_r101_at_513():
    model16 = build_deeplabv3(ModelConfig(), input_shape=(513, 513, 3))
    model8 = build_deeplabv3(ModelConfig(output_stride=8), input_shape=(513, 513, 3))
    assert round(count_macs(model16) / 1e9, 2) == 71.06
    assert round(count_macs(model8) / 1e9, 2) == 246.18
    model16_1x1 = build_deeplabv3(ModelConfig(stride_in_1x1=True),
                                  input_shape=(513, 513, 3))
    assert round(count_macs(model16_1x1) / 1e9, 2) == 70.24


def test_every_trainable_variable_gets_a_gradient():
    model = build_deeplabv3(tiny_config(dropout_rate=0.1))
    images = _images(2, 65, 67)
    labels = np.random.default_rng(1).integers(0, 5, (2, 65, 67))
    with tf.GradientTape() as tape:
        logits = model(images, training=True)
        loss = keras.losses.sparse_categorical_crossentropy(
            labels, logits, from_logits=True)
        loss = tf.reduce_mean(loss)
    grads = tape.gradient(loss, model.trainable_variables)
    missing = [v.path for v, g in zip(model.trainable_variables, grads)
               if g is None or not np.any(g.numpy())]
    assert not missing
    assert len(model.trainable_variables) > 50


@pytest.mark.numerics
@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_keeps_logits_and_pool_resize_float32(policy, dtype_policy):
    skip_without_kernels(policy)
    dtype_policy(policy)
    model = build_deeplabv3(tiny_config())
    compute = policy.split("_")[1]
    assert model.get_layer("aspp_project_conv").compute_dtype == compute
    assert model.get_layer("aspp_pool_resize").compute_dtype == "float32"
    assert model.get_layer("logits").compute_dtype == "float32"
    assert all(v.dtype == "float32" for v in model.weights)
    probe = keras.Model(model.input, [model.get_layer("aspp_pool_resize").output,
                                      model.output])
    pooled, logits = probe(_images(1, 61, 75))
    assert pooled.dtype == "float32" and logits.dtype == "float32"
    assert logits.shape == (1, 61, 75, 5)
    assert np.all(np.isfinite(logits.numpy()))


@pytest.mark.numerics
def test_image_pooling_branch_is_the_global_mean(tmp_path):
    model = build_deeplabv3(tiny_config())
    probe = keras.Model(model.input, [model.get_layer("aspp_pool_mean").output,
                                      model.get_layer("aspp_pool_resize").output])
    images = _images(1, 97, 131)
    c5 = model.get_layer("backbone")(images)["c5"]
    pooled, resized = probe(images)
    assert_close(pooled.numpy()[0, 0, 0], c5.numpy()[0].mean(axis=(0, 1)))
    assert resized.shape[1:3] == c5.shape[1:3]
    # Every position holds the same image-level feature.
    np.testing.assert_allclose(resized.numpy(), np.broadcast_to(
        resized.numpy()[:, :1, :1], resized.shape), rtol=1e-6)


def test_aspp_rates_scale_with_output_stride():
    assert ModelConfig(output_stride=16).effective_aspp_rates == (6, 12, 18)
    assert ModelConfig(output_stride=8).effective_aspp_rates == (12, 24, 36)
    assert ModelConfig(output_stride=8, aspp_rates=(1, 2, 3)).effective_aspp_rates == (1, 2, 3)
    model = build_deeplabv3(tiny_config(output_stride=8))
    assert [model.get_layer(f"aspp_{i}_conv").dilation_rate[0] for i in (1, 2, 3)] == [12, 24, 36]


@pytest.mark.numerics
def test_save_and_reload_give_identical_outputs(tmp_path):
    model = build_deeplabv3(tiny_config())
    # Move BN statistics away from their initial values.
    model(_images(4, 49, 51), training=True)
    path = tmp_path / "model.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path)
    images = _images(2, 97, 131, seed=3)
    # Same weights, same graph: equal to round-off (kernels need not be bitwise
    # repeatable); a weight that did not come back would differ by far more.
    assert_close(reloaded(images).numpy(), model(images).numpy(), rel=1e-6)
    assert [l.name for l in reloaded.layers] == [l.name for l in model.layers]


def test_output_stride_16_weights_run_at_output_stride_8(tmp_path):
    config16 = tiny_config(output_stride=16, multi_grid=(2,))
    model16 = build_deeplabv3(config16)
    model16(_images(4, 49, 51), training=True)
    path = str(tmp_path / "os16.weights.h5")
    model16.save_weights(path)

    model8 = build_deeplabv3(ModelConfig.from_dict({**config16.to_dict(), "output_stride": 8}))
    model8.load_weights(path)
    for w16, w8 in zip(model16.weights, model8.weights):
        assert w16.path == w8.path
        np.testing.assert_array_equal(w16.numpy(), w8.numpy())
    assert model8.get_layer("aspp_1_conv").dilation_rate == (12, 12)
    assert model8.get_layer("backbone").get_layer("conv5_block1_2_conv").dilation_rate == (8, 8)
    images = _images(1, 97, 131)
    logits8, logits16 = model8(images).numpy(), model16(images).numpy()
    assert logits8.shape == logits16.shape == (1, 97, 131, 5)
    # Same weights, a different graph: the outputs are related but not equal.
    assert not np.allclose(logits8, logits16)


def test_cascade_variant_without_aspp():
    model = build_deeplabv3(tiny_config(num_cascade_blocks=3, use_aspp=False))
    names = {l.name for l in model.layers}
    assert not any(n.startswith("aspp") for n in names)
    assert model.get_layer("logits").input.shape[-1] == 256  # c8 channels
    assert model(_images(1, 97, 131)).shape == (1, 97, 131, 5)
    backbone_names = {l.name for l in model.get_layer("backbone").layers}
    assert "conv8_block1_2_conv" in backbone_names


def test_head_layer_names():
    names = [l.name for l in build_deeplabv3(tiny_config()).layers]
    for expected in ["images", "backbone", "aspp_0_conv", "aspp_3_conv", "aspp_pool_mean",
                     "aspp_pool_resize", "aspp_concat", "aspp_project_relu", "dropout",
                     "logits", "logits_resize"]:
        assert expected in names
    assert names[-1] == "logits_resize"


def test_torchvision_head_and_aux_head_layers():
    from deeplabv3_tf.model.deeplabv3 import AUX_LOGITS, LOGITS, main_output

    config = tiny_config(head_filters=12, aux_head=True, dropout_rate=0.5)
    model = build_deeplabv3(config)
    outputs = model(np.zeros((2, 97, 131, 3), np.float32))
    assert outputs[LOGITS].shape == outputs[AUX_LOGITS].shape == (2, 97, 131, 5)
    assert model.get_layer("head_conv").kernel.shape == (3, 3, 16, 12)
    assert model.get_layer("logits").kernel.shape == (1, 1, 12, 5)
    # FCNHead: a quarter of c4's channels (16 * base_width = 128 -> 32).
    assert model.get_layer("aux_conv").kernel.shape == (3, 3, 128, 32)
    assert model.get_layer("aux_dropout").rate == 0.1
    inference = main_output(model)
    assert inference(np.zeros((1, 33, 33, 3), np.float32)).shape == (1, 33, 33, 5)
    assert "aux_conv" not in [l.name for l in build_deeplabv3(config, include_aux=False).layers]
    with pytest.raises(ValueError, match="aux_head=True"):
        build_deeplabv3(tiny_config(), include_aux=True)


def test_imagenet_normalization_is_torchvisions():
    from deeplabv3_tf.model.layers import InputNormalization

    pixels = np.array([[[[0.0, 127.0, 255.0]]]], np.float32)
    expected = (pixels / 255.0 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    np.testing.assert_allclose(InputNormalization("imagenet")(pixels).numpy(), expected,
                               rtol=1e-6)

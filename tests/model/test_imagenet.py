"""ImageNet initialisation: keras.applications weights in the Keras-2 .h5 layout."""

import dataclasses

import h5py
import keras
import numpy as np
import pytest

from deeplabv3_tf.model.config import ModelConfig, keras_applications_compatible
from deeplabv3_tf.model import build_deeplabv3, build_resnet
from deeplabv3_tf.model.weights.imagenet import load_imagenet_weights, read_keras2_h5
from tests.helpers import assert_close, tiny_config


def randomize(model: keras.Model, seed: int = 0) -> None:
    """Gives every weight a non-trivial value: He-scaled kernels, conv biases,
    and BN statistics far from (0, 1), so a wrong mapping cannot hide."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kernel, *bias = layer.get_weights()
            fan_in = np.prod(kernel.shape[:3])
            kernel = rng.normal(0, np.sqrt(1.0 / fan_in), kernel.shape)
            layer.set_weights([kernel] + [rng.normal(0, 0.2, b.shape) for b in bias])
        elif isinstance(layer, keras.layers.BatchNormalization):
            shape = layer.gamma.shape
            layer.set_weights([rng.uniform(0.5, 1.5, shape), rng.normal(0, 0.2, shape),
                               rng.normal(0, 0.3, shape), rng.uniform(0.5, 2.0, shape)])


def write_keras2_h5(model: keras.Model, path) -> None:
    """Writes `model`'s weights as Keras 2's save_weights did (the layout of
    the published keras.applications files)."""
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [l.name.encode("utf8") for l in model.layers]
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.2.4"
        for layer in model.layers:
            group = f.create_group(layer.name)
            names = [f"{layer.name}/{w.name}:0".encode("utf8") for w in layer.weights]
            group.attrs["weight_names"] = names
            for name, weight in zip(names, layer.weights):
                group.create_dataset(name.decode(), data=weight.numpy())


@pytest.fixture(scope="module")
def resnet101_h5(tmp_path_factory):
    reference = keras.applications.ResNet101(weights=None, include_top=False)
    randomize(reference)
    path = tmp_path_factory.mktemp("weights") / "resnet101_notop.h5"
    write_keras2_h5(reference, path)
    return reference, str(path)


@pytest.mark.parametrize("size", [pytest.param((97, 131), marks=pytest.mark.numerics),
                                  (96, 130)])
def test_loaded_backbone_matches_keras_applications(resnet101_h5, size):
    reference, path = resnet101_h5
    # Multi-grid (1, 1, 1): the plain ResNet, whose c5 keras.applications gives.
    config = keras_applications_compatible(
        ModelConfig(depth=101, output_stride=32, multi_grid=(1, 1, 1)))
    backbone = build_resnet(config)
    assert load_imagenet_weights(backbone, path) == len(
        [l for l in backbone.layers if l.weights])
    images = np.random.default_rng(1).uniform(0, 255, (2, *size, 3)).astype("float32")
    expected = reference(keras.applications.resnet.preprocess_input(images.copy())).numpy()
    got = backbone(images)["c5"].numpy()
    assert got.shape == expected.shape
    scale = np.abs(expected).max()
    assert scale > 1e-2
    np.testing.assert_allclose(got / scale, expected / scale, atol=2e-5)


def test_same_weights_load_and_run_dilated(resnet101_h5):
    _, path = resnet101_h5
    config = keras_applications_compatible(ModelConfig(depth=101, output_stride=16))
    model = build_deeplabv3(config)
    load_imagenet_weights(model, path)
    backbone = model.get_layer("backbone")
    assert backbone.get_layer("conv5_block3_2_conv").dilation_rate == (8, 8)
    file_weights = read_keras2_h5(path)
    np.testing.assert_array_equal(backbone.get_layer("conv5_block3_2_conv").kernel.numpy(),
                                  file_weights["conv5_block3_2_conv"]["kernel"])
    # The conv bias is folded into the following BN's moving mean.
    np.testing.assert_allclose(
        backbone.get_layer("conv1_bn").moving_mean.numpy(),
        file_weights["conv1_bn"]["moving_mean"] - file_weights["conv1_conv"]["bias"],
        rtol=1e-6)
    logits = model(np.zeros((1, 97, 131, 3), "float32"))
    assert logits.shape == (1, 97, 131, 21) and np.all(np.isfinite(logits.numpy()))


def _tiny_h5(tmp_path, **overrides):
    source = build_resnet(keras_applications_compatible(tiny_config(**overrides)))
    path = tmp_path / "tiny.h5"
    write_keras2_h5(source, path)
    return source, str(path)


@pytest.mark.numerics
def test_tiny_round_trip_is_exact(tmp_path):
    source, path = _tiny_h5(tmp_path)
    randomize(source, seed=4)
    write_keras2_h5(source, path)
    target = build_resnet(keras_applications_compatible(tiny_config()))
    load_imagenet_weights(target, path)
    images = np.random.default_rng(2).uniform(0, 255, (1, 35, 37, 3)).astype("float32")
    assert_close(target(images)["c5"].numpy(), source(images)["c5"].numpy())


def test_rejects_mismatched_models(tmp_path):
    _, path = _tiny_h5(tmp_path)
    config = keras_applications_compatible(tiny_config())
    with pytest.raises(ValueError, match="caffe"):
        load_imagenet_weights(
            build_resnet(dataclasses.replace(config, normalization="imagenet")), path)
    with pytest.raises(ValueError, match="3x3 conv"):
        load_imagenet_weights(
            build_resnet(dataclasses.replace(config, stride_in_1x1=False)), path)
    with pytest.raises(ValueError, match="conv1_1_conv"):
        load_imagenet_weights(build_resnet(dataclasses.replace(config, stem="v1")), path)
    deeper = dataclasses.replace(config, depth=26, multi_grid=(1, 1))
    with pytest.raises(ValueError, match="conv2_block2"):
        load_imagenet_weights(build_resnet(deeper), path)
    with pytest.raises(ValueError, match="shapes"):
        load_imagenet_weights(
            build_resnet(dataclasses.replace(config, base_width=16)), path)


def test_rejects_file_of_another_depth(tmp_path):
    source = build_resnet(keras_applications_compatible(
        tiny_config(depth=26, multi_grid=(1, 1))))
    path = tmp_path / "deeper.h5"
    write_keras2_h5(source, path)
    with pytest.raises(ValueError, match="another depth"):
        load_imagenet_weights(build_resnet(keras_applications_compatible(tiny_config())),
                              str(path))


def test_missing_and_foreign_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.h5"):
        read_keras2_h5(str(tmp_path / "nowhere.h5"))
    path = tmp_path / "plain.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    with pytest.raises(ValueError, match="plain.h5"):
        read_keras2_h5(str(path))

"""A DeepLabv3+ run through every path a DeepLabv3 run takes: started from a
DeepLabv3 run, evaluated (trimap included), exported (every signature, the pixel
budget, sliding windows), converted to LiteRT float and int8."""

import json

import numpy as np
import pytest
import tensorflow as tf

from deeplabv3_tf.evaluation.evaluate import evaluate_run
from deeplabv3_tf.evaluation.inference import Windows, predict_labels, predict_probabilities
from deeplabv3_tf.runs import load_trained_model
from deeplabv3_tf.serving.export import ExportOptions, export_saved_model
from deeplabv3_tf.serving.litert import LiteRTOptions, export_litert, tensor_types
from tests.helpers import FOLDED_LOGIT_REL, encode, probability_bound
from tests.test_litert import AGREEMENT, INT8_MIOU_MARGIN

SCALES = (0.75, 1.25)


def _images(batch, height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (batch, height, width, 3), dtype=np.uint8)


def _agree(a, b, minimum=0.999):
    assert a.shape == b.shape
    assert np.mean(a == b) >= minimum


@pytest.fixture(scope="module")
def exported(trained_plus_run, tmp_path_factory):
    path = export_saved_model(trained_plus_run["run_dir"], str(tmp_path_factory.mktemp("export")),
                              ExportOptions(scales=SCALES, with_probabilities=True,
                                            max_pixels=150 * 150,
                                            max_request_pixels=8 * 150 * 150),
                              log=lambda _: None)
    model, experiment, _ = load_trained_model(trained_plus_run["run_dir"])
    return {"loaded": tf.saved_model.load(path), "model": model, "experiment": experiment}


def test_run_started_from_the_deeplabv3_run(trained_plus_run):
    log = "\n".join(trained_plus_run["log"])
    assert "'logits'" in log and "other features" in log
    _, experiment, _ = load_trained_model(trained_plus_run["run_dir"])
    assert experiment.model.decoder == "deeplabv3plus"


@pytest.mark.numerics
@pytest.mark.parametrize("size", [(97, 131), (96, 130)])
def test_export_equals_in_memory_model(exported, size):
    images = _images(2, *size)
    loaded, model = exported["loaded"], exported["model"]
    out = loaded.signatures["serving_default"](images=tf.constant(images))
    logits = model(images.astype(np.float32), training=False)
    expected = tf.nn.softmax(logits).numpy()
    # The export runs the BatchNorm-folded graph, decoder included.
    bound = probability_bound(FOLDED_LOGIT_REL * np.abs(logits).max())
    np.testing.assert_allclose(out["probabilities"].numpy(), expected, rtol=0, atol=bound)
    _agree(out["semantic"].numpy(), expected.argmax(-1))
    multiscale = loaded.signatures["multiscale_flip"](images=tf.constant(images[:1]))
    expected = predict_probabilities(model, images[:1].astype(np.float32), SCALES, flip=True)
    _agree(multiscale["semantic"].numpy(), expected.numpy().argmax(-1))
    encoded = loaded.signatures["encoded_image"](images=tf.constant([encode(images[0])]))
    _agree(encoded["semantic"].numpy()[0], logits.numpy()[0].argmax(-1))


def test_pixel_budget_refuses_an_oversized_image(exported):
    big = _images(1, 151, 150)
    with pytest.raises(tf.errors.InvalidArgumentError, match="over the budget of 22500 pixels"):
        exported["loaded"].signatures["encoded_image"](images=tf.constant([encode(big[0])]))


def test_windowed_export_equals_in_memory_windows(trained_plus_run, tmp_path):
    windows = Windows((48, 64), (32, 40), batch=2)
    path = export_saved_model(trained_plus_run["run_dir"], str(tmp_path),
                              ExportOptions(window=windows), log=lambda _: None)
    model, _, _ = load_trained_model(trained_plus_run["run_dir"])
    images = _images(1, 97, 131, seed=3)
    served = tf.saved_model.load(path).signatures["serving_default"](
        images=tf.constant(images))["semantic"].numpy()
    _agree(served, predict_labels(model, images.astype(np.float32), windows=windows).numpy())


def test_evaluation_reports_trimap_and_protocol(trained_plus_run, tmp_path):
    results = evaluate_run(trained_plus_run["run_dir"], str(tmp_path), progress=False,
                           log=lambda _: None)
    assert list(results) == ["os16", "os8", "os8_ms_flip"]
    with open(tmp_path / "results.json") as f:
        summary = json.load(f)
    for setting in summary.values():
        assert set(setting["trimap"]) == {"3", "5", "10"}
        assert setting["trimap"]["3"]["pixels"] < setting["trimap"]["10"]["pixels"]


@pytest.mark.numerics
@pytest.mark.parametrize("quantization", ["none", "int8"])
def test_litert_float_and_int8(trained_plus_run, trained_run, tmp_path, quantization):
    path = str(tmp_path / f"{quantization}.tflite")
    info = export_litert(trained_plus_run["run_dir"], path, LiteRTOptions(
        quantization=quantization, input_size=(65, 81), calibration_images=8), check_images=6,
        log=lambda _: None)
    check = info["check"]
    if quantization == "int8":
        assert check["miou"] >= check["float_miou"] - INT8_MIOU_MARGIN, check
        with open(path, "rb") as f:
            assert set(tensor_types(f.read())) <= {"int8", "uint8", "int16", "int32", "int64"}
    else:
        assert check["agreement"] >= AGREEMENT[quantization], check

"""LiteRT export: each quantisation against the float model, integer-only int8, the tool."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from deeplabv3_tf.runs import load_trained_model
from deeplabv3_tf.serving.litert import (
    LiteRTModel, LiteRTOptions, convert, export_litert, interpreter, tensor_types)
from deeplabv3_tf.model.fold import fold_batch_norm
from tests.helpers import ROOT, assert_close

SIZE = (65, 81)
# Pixel agreement with the float model, on the generated val images.
AGREEMENT = {"none": 0.999, "float16": 0.995, "dynamic_int8": 0.98}
# int8: mIoU within this many (2 points) of the float model's. Measured on the AMD EPYC: 0.1
# below on a 60-step tiny run, 0.3 above on the main job's model (README). Calibration picks
# the quantisation ranges from round-off that differs between CPUs, so the margin is wider
# than what was seen.
INT8_MIOU_MARGIN = 0.02


@pytest.mark.numerics
@pytest.mark.parametrize("quantization", ["none", "float16", "dynamic_int8", "int8"])
def test_each_quantization_against_the_float_model(trained_run, tmp_path, quantization):
    path = str(tmp_path / f"{quantization}.tflite")
    info = export_litert(trained_run["run_dir"], path, LiteRTOptions(
        quantization=quantization, input_size=SIZE, calibration_images=8), check_images=6,
        log=lambda _: None)
    check = info["check"]
    assert check["images"] == 6
    if quantization == "int8":
        assert check["miou"] >= check["float_miou"] - INT8_MIOU_MARGIN, check
    else:
        assert check["agreement"] >= AGREEMENT[quantization], check
    with open(path[:-len(".tflite")] + ".json") as f:
        written = json.load(f)
    assert written["input"]["shape"] == [1, *SIZE, 3] and written["input"]["dtype"] == "uint8"
    assert written["dataset"]["class_names"][15] == "person"
    assert written["bytes"] == os.path.getsize(path)
    with open(path, "rb") as f:
        content = f.read()
    runner = interpreter(content)
    [image] = runner.get_input_details()
    assert image["dtype"] == np.uint8
    [ids] = runner.get_output_details()
    assert ids["dtype"] == np.uint8 and list(ids["shape"]) == [1, *SIZE]
    if quantization == "int8":
        # An integer-only accelerator runs it: no float tensor anywhere, and raw pixels in.
        assert set(tensor_types(content)) <= {"int8", "uint8", "int16", "int32", "int64"}
        assert image["quantization"] == (1.0, 0)
    else:
        assert "float32" in tensor_types(content)


@pytest.mark.numerics
def test_converted_graph_is_the_inference_graph(trained_run):
    """BatchNorm with its moving statistics, dropout off: a graph converted in training
    mode (keras-team/keras-hub#2495) gives other probabilities."""
    model, experiment, _ = load_trained_model(trained_run["run_dir"])
    content = convert(fold_batch_norm(model, experiment.model, "float32"), LiteRTOptions(
        input_size=SIZE, with_probabilities=True))
    runner = LiteRTModel(content)
    pixels = np.random.default_rng(0).integers(0, 255, (1, *SIZE, 3), dtype=np.uint8)
    runner.runner.set_tensor(runner.input["index"], pixels)
    runner.runner.invoke()
    got = runner._output("probabilities")
    x = pixels.astype(np.float32)
    inference = tf.nn.softmax(model(x, training=False)).numpy()[0]
    training = tf.nn.softmax(model(x, training=True)).numpy()[0]
    assert_close(got, inference, rel=1e-4)
    assert np.abs(training - inference).max() > 100 * np.abs(got - inference).max()
    # Images of another size are resized in and the ids back out.
    mask = runner(np.random.default_rng(1).integers(0, 255, (40, 120, 3), dtype=np.uint8))
    assert mask.shape == (40, 120) and mask.dtype == np.uint8


def test_tool_writes_files_and_names_bad_values(trained_run, tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "tools/export_litert.py", *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=600)

    out = run(f"--model_dir={trained_run['run_dir']}", f"--output_dir={tmp_path}",
              "--quantization=float16", "--input_size=49", "--check_images=2")
    assert out.returncode == 0, out.stderr[-2000:]
    assert sorted(os.listdir(tmp_path)) == ["tiny_voc_float16_49x49.json",
                                            "tiny_voc_float16_49x49.tflite"]
    assert "of pixels as the float model" in out.stdout
    bad = run(f"--model_dir={trained_run['run_dir']}", f"--output_dir={tmp_path}",
              "--quantization=int4")
    assert bad.returncode == 1 and "quantization='int4'" in bad.stderr


def test_imported_mobilenet_run_quantizes_on_given_records(trained_run, tmp_path):
    """A run with no records of its own (as tools/import_weights.py writes) of the
    MobileNetV3 model: int8 (hard-swish, squeeze-excite, dilated depthwise convs)
    integer-only, calibrated and checked on records given to it."""
    import dataclasses

    from deeplabv3_tf.runs import save_experiment
    from deeplabv3_tf.configs.recipes import tiny_voc_mobilenetv3
    from deeplabv3_tf.model import build_deeplabv3

    base = tiny_voc_mobilenetv3()
    experiment = dataclasses.replace(base, data=dataclasses.replace(
        base.data, train_records="", val_records=""))
    run = str(tmp_path / "imported")
    save_experiment(experiment, run)
    tf.train.Checkpoint(model=build_deeplabv3(experiment.model)).save(os.path.join(run, "ckpt"))
    options = LiteRTOptions(quantization="int8", input_size=SIZE, calibration_images=4)
    with pytest.raises(ValueError, match="--calibration_records"):
        export_litert(run, str(tmp_path / "a.tflite"), options, log=lambda _: None)
    path = str(tmp_path / "mobilenet_int8.tflite")
    info = export_litert(run, path, options, check_images=2,
                         calibration_records=f"{trained_run['records_dir']}/train-*",
                         check_records=trained_run["val_records"], log=lambda _: None)
    assert info["check"]["images"] == 2
    with open(path, "rb") as f:
        assert set(tensor_types(f.read())) <= {"int8", "uint8", "int16", "int32", "int64"}

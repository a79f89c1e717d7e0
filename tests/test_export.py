"""The SavedModel, reloaded, against the in-memory model; serving formats; warm-up."""

import base64
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from deeplabv3_tf.serving.export import WARMUP_FILE, ExportOptions, export_saved_model
from deeplabv3_tf.evaluation.inference import predict_probabilities
from deeplabv3_tf.runs import load_trained_model
from tests.helpers import FOLDED_LOGIT_REL, encode, probability_bound, skip_without_kernels

SCALES = (0.75, 1.0, 1.25)


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    export_dir = tmp_path_factory.mktemp("export")
    path = export_saved_model(trained_run["run_dir"], str(export_dir),
                              ExportOptions(scales=SCALES, with_probabilities=True),
                              log=lambda _: None)
    model, experiment, _ = load_trained_model(trained_run["run_dir"])
    return {"path": path, "export_dir": str(export_dir), "loaded": tf.saved_model.load(path),
            "model": model, "experiment": experiment}


def _images(batch, height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (batch, height, width, 3), dtype=np.uint8)


def _agree(a, b, minimum=0.999):
    """Argmax maps from two numerically different graphs agree almost everywhere."""
    assert a.shape == b.shape
    assert np.mean(a == b) >= minimum


@pytest.mark.numerics
@pytest.mark.parametrize("size", [(97, 131), (96, 130)])
def test_serving_default_matches_in_memory_model(exported, size):
    images = _images(2, *size)
    out = exported["loaded"].signatures["serving_default"](images=tf.constant(images))
    logits = exported["model"](images.astype(np.float32), training=False)
    expected = tf.nn.softmax(logits).numpy()
    assert out["semantic"].dtype == tf.int32 and out["semantic"].shape == (2, *size)
    # The export runs the BatchNorm-folded graph.
    bound = probability_bound(FOLDED_LOGIT_REL * np.abs(logits).max())
    np.testing.assert_allclose(out["probabilities"].numpy(), expected, rtol=0, atol=bound)
    _agree(out["semantic"].numpy(), expected.argmax(-1))


@pytest.mark.numerics
@pytest.mark.parametrize("size", [(97, 131), (96, 130)])
def test_multiscale_flip_matches_in_memory_model(exported, size):
    images = _images(1, *size, seed=1)
    out = exported["loaded"].signatures["multiscale_flip"](images=tf.constant(images))
    expected = predict_probabilities(exported["model"], images.astype(np.float32), SCALES,
                                     flip=True).numpy()
    largest = max(float(np.abs(exported["model"](tf.image.resize(
        images.astype(np.float32), [round(size[0] * s), round(size[1] * s)]),
        training=False)).max()) for s in SCALES)
    bound = probability_bound(FOLDED_LOGIT_REL * largest)
    np.testing.assert_allclose(out["probabilities"].numpy(), expected, rtol=0, atol=bound)
    _agree(out["semantic"].numpy(), expected.argmax(-1))
    single = exported["loaded"].signatures["serving_default"](images=tf.constant(images))
    assert not np.allclose(single["probabilities"].numpy(), out["probabilities"].numpy())


def test_windowed_export_matches_in_memory_windows(trained_run, tmp_path):
    from deeplabv3_tf.evaluation.inference import Windows, predict_labels

    windows = Windows((48, 64), (32, 40), batch=2)
    path = export_saved_model(trained_run["run_dir"], str(tmp_path), ExportOptions(
        window=windows, scales=(0.75, 1.25)), log=lambda _: None)
    loaded = tf.saved_model.load(path)
    metadata = loaded.signatures["metadata"](unused=tf.constant(0))
    assert metadata["window"].numpy().tolist() == [48, 64]
    assert metadata["window_stride"].numpy().tolist() == [32, 40]
    assert int(metadata["max_pixels"]) == 4096 * 4096
    model, _, _ = load_trained_model(trained_run["run_dir"])
    images = _images(1, 97, 131, seed=3)  # 3 rows x 3 columns of windows
    served = loaded.signatures["serving_default"](images=tf.constant(images))["semantic"].numpy()
    expected = predict_labels(model, images.astype(np.float32), windows=windows).numpy()
    _agree(served, expected)
    whole = predict_labels(model, images.astype(np.float32)).numpy()
    assert not np.array_equal(expected, whole)  # windows made a difference to compare
    encoded = loaded.signatures["encoded_image"](images=tf.constant([encode(images[0])]))
    _agree(encoded["semantic"].numpy(), expected)
    multiscale = loaded.signatures["multiscale_flip"](images=tf.constant(images))
    expected = predict_labels(model, images.astype(np.float32), (0.75, 1.25), True,
                              windows).numpy()
    _agree(multiscale["semantic"].numpy(), expected)


def _expected_masks(exported, images):
    return [exported["model"](image[None].astype(np.float32), training=False).numpy()
            .argmax(-1)[0] for image in images]


def _check_encoded_outputs(out, images, expected):
    sizes = [image.shape[:2] for image in images]
    height, width = max(s[0] for s in sizes), max(s[1] for s in sizes)
    assert out["semantic"].shape == (len(images), height, width)
    assert out["height"].numpy().tolist() == [s[0] for s in sizes]
    assert out["width"].numpy().tolist() == [s[1] for s in sizes]
    for i, (h, w) in enumerate(sizes):
        semantic = out["semantic"][i].numpy()
        _agree(semantic[:h, :w], expected[i])
        assert (semantic[h:] == 255).all() and (semantic[:, w:] == 255).all()
        png = np.asarray(Image.open(io.BytesIO(out["semantic_png_bytes"][i].numpy())))
        assert png.shape == (h, w)
        np.testing.assert_array_equal(png, semantic[:h, :w])


def test_encoded_image_batch_of_different_sizes(exported):
    images = [_images(1, 97, 131, seed=2)[0], _images(1, 64, 150, seed=3)[0],
              _images(1, 80, 40, seed=4)[0]]
    encoded = [encode(images[0]), encode(images[1]), encode(images[2])]
    out = exported["loaded"].signatures["encoded_image"](images=tf.constant(encoded))
    _check_encoded_outputs(out, images, _expected_masks(exported, images))


def test_tf_example_signature(exported):
    images = [_images(1, 61, 77, seed=5)[0], _images(1, 90, 50, seed=6)[0]]
    examples = [tf.train.Example(features=tf.train.Features(feature={
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encode(i)]))})
    ).SerializeToString() for i in images]
    out = exported["loaded"].signatures["tf_example"](examples=tf.constant(examples))
    _check_encoded_outputs(out, images, _expected_masks(exported, images))


def test_rest_json_body_goes_through_encoded_image(exported):
    images = [_images(1, 70, 90, seed=7)[0], _images(1, 50, 60, seed=8)[0]]
    body = json.dumps({"signature_name": "encoded_image", "instances": [
        {"b64": base64.b64encode(encode(image)).decode()} for image in images]})
    # Decoded as TF Serving's REST API does: row format, one input, {"b64": ...} -> bytes.
    request = json.loads(body)
    signature = exported["loaded"].signatures[request["signature_name"]]
    (input_name,) = signature.structured_input_signature[1].keys()
    values = [base64.b64decode(instance["b64"]) for instance in request["instances"]]
    out = signature(**{input_name: tf.constant(values)})
    _check_encoded_outputs(out, images, _expected_masks(exported, images))
    # Outputs that TF Serving would base64-encode are exactly the *_bytes ones.
    assert [k for k, v in out.items() if v.dtype == tf.string] == ["semantic_png_bytes"]


def test_image_modes_are_converted_and_garbage_is_invalid_argument(exported):
    signature = exported["loaded"].signatures["encoded_image"]
    rgb = _images(1, 40, 50, seed=9)[0]
    grey = encode(np.asarray(Image.fromarray(rgb).convert("L")))
    rgba = encode(np.asarray(Image.fromarray(rgb).convert("RGBA")))
    deep = io.BytesIO()
    Image.fromarray((np.asarray(Image.fromarray(rgb).convert("L")).astype(np.uint16) * 257)
                    ).save(deep, format="PNG")
    jpeg = io.BytesIO()
    Image.fromarray(rgb).save(jpeg, format="JPEG")
    out = signature(images=tf.constant([grey, rgba, deep.getvalue(), jpeg.getvalue()]))
    assert out["height"].numpy().tolist() == [40] * 4
    with pytest.raises(tf.errors.InvalidArgumentError):
        signature(images=tf.constant([b"this is not an image"]))


def test_metadata_and_assets(exported):
    metadata = exported["loaded"].signatures["metadata"](unused=tf.constant(0))
    names = [n.decode() for n in metadata["class_names"].numpy()]
    assert names == list(exported["experiment"].data.class_names)
    assert metadata["palette"].shape == (21, 3)
    assert metadata["palette"].numpy()[15].tolist() == [192, 128, 128]
    assert int(metadata["output_stride"]) == int(metadata["training_output_stride"]) == 16
    np.testing.assert_allclose(metadata["scales"].numpy(), SCALES)
    with open(os.path.join(exported["path"], "assets", "class_names.txt")) as f:
        assert f.read().split() == names


def test_warmup_requests_parse_and_run(exported):
    from tensorflow_serving.apis import prediction_log_pb2

    logs = [prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in
            tf.data.TFRecordDataset(os.path.join(exported["path"], WARMUP_FILE))]
    signatures = [log.predict_log.request.model_spec.signature_name for log in logs]
    assert signatures == ["serving_default", "multiscale_flip", "encoded_image", "tf_example"]
    for log in logs:
        request = log.predict_log.request
        signature = exported["loaded"].signatures[request.model_spec.signature_name]
        inputs = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
        assert "semantic" in signature(**inputs)


def test_saved_model_cli_lists_signatures(exported):
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    shown = subprocess.run([cli, "show", "--dir", exported["path"], "--all"],
                           capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr[-2000:]
    text = shown.stdout
    for name in ("serving_default", "multiscale_flip", "encoded_image", "tf_example", "metadata",
                 "semantic_png_bytes", "probabilities"):
        assert f"'{name}'" in text or f"[{name}]" in text, name
    serving = text.split("signature_def['serving_default']")[1].split("signature_def[")[0]
    assert "dtype: DT_UINT8" in serving and "shape: (-1, -1, -1, -1)" in serving
    assert "dtype: DT_INT32" in serving and "shape: (-1, -1, -1)" in serving
    encoded = text.split("signature_def['encoded_image']")[1].split("signature_def[")[0]
    assert "dtype: DT_STRING" in encoded and "shape: (-1)" in encoded


def test_no_xla_compiled_functions(exported):
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(exported["path"], "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    functions = proto.meta_graphs[0].graph_def.library.function
    assert functions
    assert not [f.signature.name for f in functions
                if f.attr.get("_XlaMustCompile") is not None and f.attr["_XlaMustCompile"].b]


def test_versions_output_stride_and_max_side(trained_run, exported):
    export_dir = exported["export_dir"]
    path = export_saved_model(trained_run["run_dir"], export_dir,
                              ExportOptions(output_stride=8, max_side=64), log=lambda _: None)
    assert os.path.basename(path) == "2"
    assert sorted(d for d in os.listdir(export_dir) if not d.startswith(".")) == ["1", "2"]
    loaded = tf.saved_model.load(path)
    metadata = loaded.signatures["metadata"](unused=tf.constant(0))
    assert int(metadata["output_stride"]) == 8 and int(metadata["max_side"]) == 64
    image = _images(1, 97, 131, seed=10)
    out = loaded.signatures["serving_default"](images=tf.constant(image))
    assert out["semantic"].shape == (1, 97, 131)
    model, _, _ = load_trained_model(trained_run["run_dir"], output_stride=8)
    small = tf.image.resize(image.astype(np.float32), (47, 64))  # round(97 * 64 / 131)
    expected = tf.image.resize(tf.nn.softmax(model(small, training=False)), (97, 131))
    _agree(out["semantic"].numpy(), expected.numpy().argmax(-1), minimum=0.995)
    with pytest.raises(FileExistsError):
        export_saved_model(trained_run["run_dir"], export_dir, version=1, log=lambda _: None)


@pytest.mark.numerics
def test_bfloat16_export_agrees_with_float32_on_val_images(trained_run, tmp_path):
    """--precision bfloat16: masks of the generated val images agree with float32."""
    with pytest.raises(ValueError, match="precision"):
        ExportOptions(precision="float16")
    skip_without_kernels("bfloat16")
    path = export_saved_model(trained_run["run_dir"], str(tmp_path),
                              ExportOptions(precision="bfloat16"), log=lambda _: None)
    loaded = tf.saved_model.load(path)
    assert loaded.signatures["metadata"](unused=tf.constant(0))["precision"].numpy() == b"bfloat16"
    model, _, _ = load_trained_model(trained_run["run_dir"])
    jpegs = [open(os.path.join(trained_run["voc_dir"], "JPEGImages", f"{i}.jpg"), "rb").read()
             for i in trained_run["val_ids"]]
    served = loaded.signatures["encoded_image"](images=tf.constant(jpegs))
    agree = total = 0
    for k, data in enumerate(jpegs):
        image = tf.io.decode_jpeg(data)
        h, w = image.shape[:2]
        expected = model(tf.cast(image, tf.float32)[None], training=False).numpy().argmax(-1)[0]
        agree += np.sum(served["semantic"].numpy()[k, :h, :w] == expected)
        total += h * w
    assert agree / total >= 0.995

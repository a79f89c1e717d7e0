"""What a served model answers to every kind of request, good, malformed or too large.

Through the reloaded SavedModel (as Python clients and tests call it) and, for
the main cases, as TF Serving runs it: a tf.compat.v1 Session on the loaded
MetaGraph, fed and fetched by the SignatureDef's tensor names.
"""

import io
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from deeplabv3_tf.serving.export import CONFIG_FILE, ExportOptions, export_saved_model
from deeplabv3_tf.data.synthetic import png_of_size
from tests.helpers import ROOT, encode

# Small budgets, so that "over budget" costs nothing to build: 100x100 per image,
# 2.5 such images per request.
MAX_PIXELS = 100 * 100
MAX_REQUEST_PIXELS = 25_000


def _rgb(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)


def _gif(frames, height, width):
    images = [Image.fromarray(np.full((height, width, 3), 40 * i % 255, np.uint8))
              for i in range(frames)]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:])
    return buffer.getvalue()


def _example(encoded=None):
    feature = {} if encoded is None else {"image/encoded": tf.train.Feature(
        bytes_list=tf.train.BytesList(value=[encoded]))}
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


@pytest.fixture(scope="module")
def served(trained_run, tmp_path_factory):
    export_dir = str(tmp_path_factory.mktemp("budget"))
    path = export_saved_model(trained_run["run_dir"], export_dir, ExportOptions(
        max_pixels=MAX_PIXELS, max_request_pixels=MAX_REQUEST_PIXELS), log=lambda _: None)
    # The generated val scene (objects the model was trained on, 70-100 pixels a
    # side: within the budget) whose mask holds the most classes.
    signatures = tf.saved_model.load(path).signatures
    scenes = []
    for example_id in trained_run["val_ids"]:
        with open(os.path.join(trained_run["voc_dir"], "JPEGImages", f"{example_id}.jpg"),
                  "rb") as f:
            data = f.read()
        mask = signatures["encoded_image"](images=tf.constant([data]))["semantic"]
        scenes.append((len(np.unique(mask)), example_id, tf.io.decode_jpeg(data).numpy()))
    classes, _, scene = max(scenes, key=lambda s: s[:2])
    return {"path": path, "signatures": signatures, "scene": scene, "scene_classes": classes}


def _classes(mask) -> int:
    """How many classes a mask holds: comparisons of masks with one say little."""
    return len(np.unique(np.asarray(mask)))


def _same_masks(a, b):
    """Masks of the same pixels: equal but where round-off decides a near tie
    (another graph, runtime or kernel order may add up floats differently)."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape
    assert np.mean(a == b) >= 0.999


def _invalid(signature, match, **inputs):
    with pytest.raises(tf.errors.InvalidArgumentError, match=match):
        signature(**{k: tf.constant(v) for k, v in inputs.items()})


# Encoded images --------------------------------------------------------------

@pytest.mark.parametrize("data,message", [
    (b"", "image 0: empty \\(0 bytes\\)"),
    (b"this is not an image at all", "image 0: not a JPEG, PNG, GIF, BMP or WebP image"),
    (encode(_rgb(40, 50), "JPEG")[:12], "image 0: the header is truncated or malformed"),
    (encode(_rgb(40, 50))[:20], "image 0: the header is truncated or malformed"),
    (_gif(1, 20, 20)[:11], "image 0: the header is truncated or malformed"),
    (b"\xff\x0a\xfa\x00", "image 0: JPEG XL is not accepted"),
])
def test_bad_bytes_are_invalid_argument_in_the_requests_terms(served, data, message):
    _invalid(served["signatures"]["encoded_image"], message, images=[data])


@pytest.mark.parametrize("format", ["JPEG", "PNG"])
def test_cut_off_image_body_is_invalid_argument(served, format):
    data = encode(_rgb(60, 80, seed=1), format)
    _invalid(served["signatures"]["encoded_image"], f"Invalid {format} data",
             images=[data[: len(data) // 2]])


def test_the_bad_image_of_a_request_is_named(served):
    good = encode(_rgb(30, 40))
    _invalid(served["signatures"]["encoded_image"], "image 2: not a JPEG",
             images=[good, good, b"GIF but not really"])


def test_image_over_budget_is_refused_before_decoding(served):
    data = png_of_size(101, 100)
    _invalid(served["signatures"]["encoded_image"],
             "image 0: 100x101 = 10100 pixels, over the budget of 10000 pixels "
             "per image", images=[data])
    out = served["signatures"]["encoded_image"](images=tf.constant([png_of_size(100, 100)]))
    assert out["semantic"].shape == (1, 100, 100)


def test_gif_frames_count_against_the_budget(served):
    signature = served["signatures"]["encoded_image"]
    _invalid(signature, "image 0: 30x40 x 9 frames = 10800 pixels, over", images=[_gif(9, 30, 40)])
    out = signature(images=tf.constant([_gif(8, 30, 40)]))  # 9600 pixels: the first frame
    assert out["height"].numpy().tolist() == [30] and out["width"].numpy().tolist() == [40]


def test_every_accepted_format_is_answered(served):
    image = served["scene"]
    h, w = image.shape[:2]
    formats = [encode(image, "JPEG"), encode(image, "PNG"), encode(image, "BMP"),
               encode(image, "WEBP"), encode(image, "WEBP", lossless=True), _gif(1, h, w),
               encode(np.asarray(Image.fromarray(image).convert("L")), "PNG"),
               encode(np.asarray(Image.fromarray(image).convert("RGBA")), "PNG"),
               encode(image[:1, :1], "PNG")]
    signature = served["signatures"]["encoded_image"]
    # One request each: nine of these images are over the request budget together.
    outs = [signature(images=tf.constant([data])) for data in formats]
    assert [int(o["height"][0]) for o in outs] == [h] * 8 + [1]
    assert [int(o["width"][0]) for o in outs] == [w] * 8 + [1]
    # The lossless encodings of the same pixels get the same mask.
    png = outs[1]["semantic"].numpy()
    assert _classes(png) == served["scene_classes"] > 1
    for k in (2, 4, 7):
        _same_masks(outs[k]["semantic"].numpy(), png)


def test_animated_webp_is_refused(served):
    frames = [Image.fromarray(np.full((30, 40, 3), 60 * i, np.uint8)) for i in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="WEBP", save_all=True, append_images=frames[1:])
    _invalid(served["signatures"]["encoded_image"], "image 0: animated WebP is not accepted",
             images=[buffer.getvalue()])


def test_request_over_budget_names_the_padded_answer(served):
    signature = served["signatures"]["encoded_image"]
    # Each image is within budget; padded to 100x100, three are 30000 pixels.
    wide, tall = encode(_rgb(10, 100)), encode(_rgb(100, 10))
    _invalid(signature, "the 3 images of the request are answered as one 3x100x100 array = 30000 "
             "pixels, over the budget of 25000 pixels per request",
             images=[wide, tall, wide])
    out = signature(images=tf.constant([wide, tall]))
    assert out["semantic"].shape == (2, 100, 100)


def test_empty_batches_answer_empty_outputs(served):
    signatures = served["signatures"]
    out = signatures["encoded_image"](images=tf.constant([], tf.string))
    assert out["semantic"].shape[0] == 0 and out["height"].shape == (0,)
    for name in ("serving_default", "multiscale_flip"):
        out = signatures[name](images=tf.zeros([0, 64, 64, 3], tf.uint8))
        assert out["semantic"].shape == (0, 64, 64) and out["semantic"].dtype == tf.int32


# tf.Example ------------------------------------------------------------------

def test_example_without_image_and_string_that_is_no_example(served):
    signature = served["signatures"]["tf_example"]
    _invalid(signature, "example 1: has no image/encoded",
             examples=[_example(encode(_rgb(20, 30))), _example()])
    _invalid(signature, "Could not parse example input", examples=[b"not a tf.Example"])
    _invalid(signature, "example 0: 100x101 = 10100 pixels, over",
             examples=[_example(png_of_size(101, 100))])


# Dense tensors ---------------------------------------------------------------

@pytest.mark.parametrize("shape", [(1, 0, 0, 3), (2, 64, 0, 3)])
def test_zero_size_images_are_invalid_argument(served, shape):
    _invalid(served["signatures"]["serving_default"], "an image needs at least one pixel",
             images=np.zeros(shape, np.uint8))


def test_channels_are_converted_or_refused(served):
    signature = served["signatures"]["serving_default"]
    rgb = served["scene"]
    grey = np.asarray(Image.fromarray(rgb).convert("L"))
    as_rgb = signature(images=tf.constant(np.repeat(grey[None, ..., None], 3, -1)))["semantic"]
    assert _classes(as_rgb) > 1
    for channels in (grey[..., None], np.stack([grey, np.full_like(grey, 7)], -1)):
        _same_masks(signature(images=tf.constant(channels[None]))["semantic"], as_rgb)
    rgba = np.concatenate([rgb, np.full_like(rgb[..., :1], 9)], -1)
    _same_masks(signature(images=tf.constant(rgba[None]))["semantic"],
                signature(images=tf.constant(rgb[None]))["semantic"])
    _invalid(signature, "images have 5 channels: send 1 \\(grey\\), 2 \\(grey \\+ alpha\\), "
             "3 \\(RGB\\) or 4 \\(RGBA\\)", images=np.zeros((1, 8, 8, 5), np.uint8))


def test_one_pixel_image_is_answered(served):
    out = served["signatures"]["serving_default"](images=tf.constant(_rgb(1, 1)[None]))
    assert out["semantic"].shape == (1, 1, 1)


def test_dense_budgets(served):
    signature = served["signatures"]["serving_default"]
    _invalid(signature, "images are 100x101 = 10100 pixels each, over the budget of "
             "10000 pixels per image", images=np.zeros((1, 100, 101, 3), np.uint8))
    _invalid(signature, "the request holds 3 images of 100x100 = 30000 pixels, over the "
             "budget of 25000 pixels per request", images=np.zeros((3, 100, 100, 3), np.uint8))
    assert signature(images=tf.zeros((2, 100, 100, 3), tf.uint8))["semantic"].shape == (2, 100, 100)


def test_multiscale_budget_counts_the_largest_scale(served):
    """The network sees each image at up to 1.75x its sides: 3.06x the pixels."""
    signature = served["signatures"]["multiscale_flip"]
    budget = int(MAX_PIXELS / 1.75**2)  # 3265
    _invalid(signature, f"images are 58x57 = 3306 pixels each, over the budget of {budget} "
             "pixels per image \\(the budget of the export over 1.75\\^2, for its largest scale\\)",
             images=np.zeros((1, 58, 57, 3), np.uint8))
    assert signature(images=tf.zeros((1, 57, 57, 3), tf.uint8))["semantic"].shape == (1, 57, 57)


def test_budget_is_recorded(served):
    metadata = served["signatures"]["metadata"](unused=tf.constant(0))
    assert int(metadata["max_pixels"]) == MAX_PIXELS
    assert int(metadata["max_request_pixels"]) == MAX_REQUEST_PIXELS
    assert not bool(metadata["server_batching"])
    import json
    with open(os.path.join(served["path"], CONFIG_FILE)) as f:
        config = json.load(f)
    assert config["options"]["max_pixels"] == MAX_PIXELS
    assert config["max_request_pixels"] == MAX_REQUEST_PIXELS


# As TF Serving runs it -------------------------------------------------------

class SessionModel:
    """The SavedModel as TF Serving runs it: a v1 Session on the loaded MetaGraph."""

    def __init__(self, path):
        self.graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=self.graph)
        with self.graph.as_default():
            meta = tf.compat.v1.saved_model.loader.load(self.session, ["serve"], path)
        self.signatures = meta.signature_def

    def run(self, name, **inputs):
        signature = self.signatures[name]
        feeds = {signature.inputs[k].name: v for k, v in inputs.items()}
        fetches = {k: v.name for k, v in signature.outputs.items()}
        return self.session.run(fetches, feeds)


@pytest.fixture(scope="module")
def session_model(served):
    model = SessionModel(served["path"])
    yield model
    model.session.close()


def test_session_answers_good_requests(session_model, served):
    image = served["scene"]
    out = session_model.run("encoded_image", images=np.array([encode(image)], object))
    expected = served["signatures"]["encoded_image"](images=tf.constant([encode(image)]))
    assert _classes(expected["semantic"]) > 1
    _same_masks(out["semantic"], expected["semantic"].numpy())
    dense = session_model.run("serving_default", images=np.concatenate(
        [image[None], np.full((1, *image.shape[:2], 1), 255, np.uint8)], -1))
    _same_masks(dense["semantic"], expected["semantic"].numpy())
    empty = session_model.run("serving_default", images=np.zeros((0, 64, 64, 3), np.uint8))
    assert empty["semantic"].shape == (0, 64, 64)


@pytest.mark.parametrize("name,inputs,match", [
    ("encoded_image", [png_of_size(101, 100)], "over the budget of 10000 pixels per image"),
    ("encoded_image", [b"not an image"], "image 0: not a JPEG"),
    ("encoded_image", [b""], "image 0: empty"),
    ("tf_example", [_example()], "example 0: has no image/encoded"),
    ("serving_default", np.zeros((1, 0, 0, 3), np.uint8), "at least one pixel"),
    ("serving_default", np.zeros((3, 100, 100, 3), np.uint8), "per request"),
    ("serving_default", np.zeros((1, 8, 8, 5), np.uint8), "5 channels"),
])
def test_session_refuses_with_invalid_argument(session_model, name, inputs, match):
    key = "examples" if name == "tf_example" else "images"
    value = np.array(inputs, object) if isinstance(inputs, list) else inputs
    with pytest.raises(tf.errors.InvalidArgumentError, match=match):
        session_model.run(name, **{key: value})


def test_warmup_requests_fit_a_small_budget(session_model, served):
    """TF Serving replays assets.extra/tf_serving_warmup_requests at load and does
    not load a model whose warm-up fails: with a budget of 100x100 they are shrunk."""
    from tensorflow_serving.apis import prediction_log_pb2

    from deeplabv3_tf.serving.export import WARMUP_FILE

    logs = [prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in
            tf.data.TFRecordDataset(os.path.join(served["path"], WARMUP_FILE))]
    assert len(logs) == 4
    for log in logs:
        request = log.predict_log.request
        inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
        out = session_model.run(request.model_spec.signature_name, **inputs)
        assert out["semantic"].size > 0


# Server-side batching --------------------------------------------------------

def test_server_batching_answers_each_merged_request_on_its_own(trained_run, served, tmp_path):
    path = export_saved_model(trained_run["run_dir"], str(tmp_path), ExportOptions(
        max_pixels=MAX_PIXELS, server_batching=True), log=lambda _: None)
    signatures = tf.saved_model.load(path).signatures
    small = encode(served["scene"])
    h, w = served["scene"].shape[:2]
    # As merged by TF Serving: one client's small image, another's too large and unknown.
    out = signatures["encoded_image"](images=tf.constant(
        [small, png_of_size(200, 200), b"junk", small]))
    errors = [e.decode() for e in out["error"].numpy()]
    assert errors[0] == errors[3] == ""
    assert errors[1].startswith("image 1: 200x200 = 40000 pixels, over")
    assert errors[2].startswith("image 2: not a JPEG")
    assert out["height"].numpy().tolist() == [h, 0, 0, h]
    alone = served["signatures"]["encoded_image"](images=tf.constant([small]))
    assert _classes(alone["semantic"]) > 1
    _same_masks(out["semantic"].numpy()[0, :h, :w], alone["semantic"].numpy()[0])
    # Dense requests padded past the budget by merging are shrunk, not refused.
    merged = signatures["serving_default"](images=tf.zeros((4, 150, 150, 3), tf.uint8))
    assert merged["semantic"].shape == (4, 150, 150)
    assert bool(signatures["metadata"](unused=tf.constant(0))["server_batching"])


# A large image from a small request ------------------------------------------

BIG_REQUEST = textwrap.dedent("""
    import sys, time
    import tensorflow as tf
    from deeplabv3_tf.data.synthetic import png_of_size

    def rss(field):
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith(field)) // 1024

    data = png_of_size(12000, 12000)
    signature = tf.saved_model.load(sys.argv[1]).signatures["encoded_image"]
    signature(images=tf.constant([png_of_size(64, 48)]))  # warm-up, as TF Serving does
    before = rss("VmRSS:")
    start = time.perf_counter()
    try:
        signature(images=tf.constant([data]))
        print("ANSWERED")
    except tf.errors.InvalidArgumentError as e:
        print("INVALID_ARGUMENT", time.perf_counter() - start, rss("VmHWM:") - before, len(data))
        print(e.message.splitlines()[-2] if "assertion" not in e.message else
              [l for l in e.message.splitlines() if "assertion" in l][0])
""")


def test_12000x12000_png_is_refused_fast_and_small(served):
    """A 12000x12000 PNG of ~420 KB: INVALID_ARGUMENT within a second, and the
    process's peak resident memory rises by less than 200 MB (the budget's check
    reads the header; decoding it would take 432 MB, segmenting it ~17 GB)."""
    result = subprocess.run([sys.executable, "-c", BIG_REQUEST, served["path"]],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    verdict, message = result.stdout.strip().splitlines()[-2:]
    kind, seconds, rise_mib, size = verdict.split()
    assert kind == "INVALID_ARGUMENT"
    assert int(size) < 600_000
    assert float(seconds) < 1.0
    assert int(rise_mib) < 200
    assert "12000x12000 = 144000000 pixels, over the budget of 10000" in message

"""Image sizes read from headers agree with what TensorFlow's decoders produce."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from deeplabv3_tf.serving import image_header
from deeplabv3_tf.serving.image_header import read_header
from deeplabv3_tf.evaluation.inference import upsampled_labels
from tests.helpers import encode


@tf.function(input_signature=[tf.TensorSpec([], tf.string)])
def _read(data):
    header = read_header(data)
    return header.format, header.height, header.width, header.frames, header.problem


def _header(data):
    code, height, width, frames, problem = (int(v) for v in _read(tf.constant(data)))
    return image_header.FORMAT_NAMES[code], height, width, frames, image_header.PROBLEMS[problem]


IMAGE = np.random.default_rng(0).integers(0, 255, (37, 53, 3), dtype=np.uint8)


@pytest.mark.parametrize("name,data", [
    ("JPEG", encode(IMAGE, "JPEG")),
    ("JPEG", encode(IMAGE, "JPEG", progressive=True, exif=b"Exif\x00\x00" + bytes(300))),
    ("PNG", encode(IMAGE, "PNG")),
    ("PNG", encode(IMAGE[..., 0], "PNG")),
    ("GIF", encode(IMAGE, "GIF")),
    ("BMP", encode(IMAGE, "BMP")),
    ("WebP", encode(IMAGE, "WEBP")),
    ("WebP", encode(IMAGE, "WEBP", lossless=True)),
    ("WebP", encode(IMAGE, "WEBP", exif=b"Exif\x00\x00abc")),  # VP8X
])
def test_header_size_is_the_decoded_size(name, data):
    decoded = tf.io.decode_image(data, channels=3, expand_animations=False)
    assert _header(data) == (name, *decoded.shape[:2], 1, "")


def test_top_down_bmp_has_a_negative_height_in_its_header():
    data = bytearray(encode(IMAGE, "BMP"))
    height = int.from_bytes(data[22:26], "little", signed=True)
    data[22:26] = (-height).to_bytes(4, "little", signed=True)
    assert _header(bytes(data))[1:3] == (37, 53)


def test_gif_frames_are_counted_with_local_colour_tables():
    # Frames of different colours get local colour tables: each shifts the walk.
    frames = [Image.fromarray(np.random.default_rng(i).integers(0, 255, (20, 30, 3), np.uint8))
              .convert("P", palette=Image.ADAPTIVE) for i in range(5)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    data = buffer.getvalue()
    assert _header(data) == ("GIF", 20, 30, 5, "")
    assert tf.io.decode_gif(data).shape[0] == 5
    # Cut inside the second frame: the first is still there, as for TensorFlow's decoder.
    assert _header(data[:len(data) // 3])[3] >= 1


@pytest.mark.parametrize("data,problem", [
    (b"", image_header.IS_EMPTY),
    (b"\x00\x01\x02 no magic", image_header.NOT_AN_IMAGE),
    (b"\xff\xd8\xff\xe0\x00\x10JFIF", image_header.TRUNCATED),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00", image_header.TRUNCATED),
    (b"GIF89a\x10\x00\x10\x00\x00\x00\x00\x3b", image_header.BAD_GIF),  # no frame at all
    (b"BM\x00", image_header.TRUNCATED),
    (b"RIFF\x00\x00\x00\x00WEBPVP8 ", image_header.TRUNCATED),
    (b"\xff\x0a\x00", image_header.REFUSED_FORMAT),
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", image_header.REFUSED_FORMAT),
])
def test_problems(data, problem):
    assert _header(data)[4] == image_header.PROBLEMS[problem]


def test_png_header_of_a_huge_image_is_read_without_decoding():
    from deeplabv3_tf.data.synthetic import png_of_size

    assert _header(png_of_size(12000, 9000)) == ("PNG", 9000, 12000, 1, "")


@pytest.mark.parametrize("batch,h,w,classes,out_h,out_w,block", [
    (2, 7, 9, 5, 61, 83, 500), (1, 13, 11, 21, 13, 11, 1 << 18), (1, 5, 5, 3, 1, 1, 10),
    (3, 4, 6, 4, 97, 131, 1000), (1, 1, 1, 3, 5, 7, 3)])
def test_upsampled_labels_equal_the_argmax_of_the_full_resize(batch, h, w, classes, out_h,
                                                              out_w, block):
    rng = np.random.default_rng(h * w)
    probabilities = tf.nn.softmax(rng.normal(size=(batch, h, w, classes)).astype(np.float32) * 3)
    expected = tf.argmax(tf.image.resize(probabilities, (out_h, out_w)), -1,
                         output_type=tf.int32).numpy()
    got = tf.function(lambda p, s: upsampled_labels(p, s, block))(
        probabilities, tf.constant([out_h, out_w])).numpy()
    assert got.shape == expected.shape == (batch, out_h, out_w)
    assert np.mean(got == expected) >= 0.999

"""Image sizes read from encoded bytes before decoding, as TensorFlow graph ops.

A served model must know what decoding an image will cost before it decodes
it: a 445 KB one-colour PNG can hold 12000x12000 pixels, and TensorFlow's GIF
decoder reads every frame of an animation even when it returns the first. So
the serving signatures read each image's header first (`read_header`) and
refuse what is over budget or unknown; only then is the image decoded.

Formats (those `tf.io.decode_image` accepts in TF 2.21, by their magic bytes):

  JPEG   FF D8 FF            size from the first frame header (SOFn)
  PNG    89 'PNG' 0D 0A 1A 0A  IHDR; one frame (TensorFlow decodes the first
                             frame of an APNG only)
  GIF    'GIF87a' / 'GIF89a'   logical screen size; every frame is counted
                             (TensorFlow decodes them all at the screen size)
  BMP    'BM'                BITMAPINFOHEADER (or the OS/2 core header)
  WebP   'RIFF' .... 'WEBP'   VP8, VP8L or VP8X chunk; animated WebP refused
                             (TensorFlow cannot decode it to RGB either)
  JPEG XL FF 0A or its container: refused; its size is bit-packed behind
                             variable-length fields, and it is not decoded blind

Everything is computed in the graph (the exported SavedModel carries it), so
TF Serving needs nothing else. Sizes are int64: a header may claim 2^31 x 2^31.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

# Format codes, in the order of `read_header`'s branches.
EMPTY, UNKNOWN, JPEG, PNG, GIF, BMP, WEBP, JPEG_XL = range(8)
FORMAT_NAMES = ("empty", "unknown", "JPEG", "PNG", "GIF", "BMP", "WebP", "JPEG XL")
ACCEPTED = "JPEG, PNG, GIF, BMP or WebP"

# Problems a header can have, with what the request is told (after "image i: ").
OK, NOT_AN_IMAGE, IS_EMPTY, TRUNCATED, NO_PIXELS, ANIMATED_WEBP, REFUSED_FORMAT, BAD_GIF = range(8)
PROBLEMS = (
    "",
    f"not a {ACCEPTED} image",
    "empty (0 bytes)",
    "the header is truncated or malformed",
    "the header gives no pixels",
    "animated WebP is not accepted (send one frame, as PNG or JPEG)",
    f"JPEG XL is not accepted: its size cannot be checked before decoding (send {ACCEPTED})",
    "the GIF's block structure is malformed, or has more blocks than are checked",
)

# A GIF is walked block by block to count its frames; a real GIF has about one
# block per 255 bytes. A file built of 1-byte blocks is refused past this many
# (it would otherwise cost seconds of a request's time).
MAX_GIF_BLOCKS = 100_000
# A JPEG's frame header comes after a few segments (tables, EXIF, ICC profile).
MAX_JPEG_SEGMENTS = 10_000
# Bytes read past the end of the data are zeros; no header field lies further in.
_PAD = 32


@dataclasses.dataclass
class ImageHeader:
    """What `read_header` returns, all scalar tensors.

    Attributes:
      format: int32, one of the format codes (EMPTY .. JPEG_XL).
      height, width: int64 pixels (0 where unknown).
      frames: int64, frames decoding would produce (GIF: every frame; else 1).
      problem: int32, one of OK .. BAD_GIF (`PROBLEMS` says it in words).
    """

    format: tf.Tensor
    height: tf.Tensor
    width: tf.Tensor
    frames: tf.Tensor
    problem: tf.Tensor


class _Bytes:
    """Byte access to a scalar string; reads past the end give 0."""

    def __init__(self, data):
        raw = tf.io.decode_raw(data, tf.uint8)
        self.length = tf.cast(tf.size(raw), tf.int64)
        self._bytes = tf.concat([raw, tf.zeros([_PAD], tf.uint8)], 0)

    def at(self, index):
        index = tf.clip_by_value(tf.cast(index, tf.int64), 0, self.length + _PAD - 1)
        return tf.cast(tf.gather(self._bytes, index), tf.int64)

    def equals(self, offset: int, expected: bytes):
        got = self._bytes[offset:offset + len(expected)]
        return tf.reduce_all(tf.equal(got, tf.constant(list(expected), tf.uint8)))

    def little(self, offset, count: int):
        value = tf.constant(0, tf.int64)
        for k in range(count):
            value += self.at(offset + k) * (256 ** k)
        return value

    def big(self, offset, count: int):
        value = tf.constant(0, tf.int64)
        for k in range(count):
            value = value * 256 + self.at(offset + k)
        return value


def _select(condition, a, b, dtype=tf.int64):
    """tf.where for scalars given as tensors or Python ints, in one dtype."""
    return tf.where(condition, tf.cast(a, dtype), tf.cast(b, dtype))


def _result(height, width, frames, problem):
    return (tf.cast(height, tf.int64), tf.cast(width, tf.int64), tf.cast(frames, tf.int64),
            tf.cast(problem, tf.int32))


def _checked(b: _Bytes, needed: int, height, width, frames=1, problem=OK):
    """The size, or TRUNCATED if the data is shorter than the header."""
    short = b.length < needed
    return _result(_select(short, 0, height), _select(short, 0, width),
                   _select(short, 0, frames), _select(short, TRUNCATED, problem, tf.int32))


def _jpeg(b: _Bytes):
    """Size from the first frame header (SOFn), walking the marker segments.

    libjpeg's own header reader (`tf.io.extract_jpeg_shape`) raises on a cut
    header with messages such as "Improper call to JPEG library in state 201";
    walking the segments here lets a bad header be told in the request's terms.
    """
    n = b.length

    def cond(pos, height, width, done, bad, steps):
        return ~done & (steps < MAX_JPEG_SEGMENTS)

    def body(pos, height, width, done, bad, steps):
        marker = b.at(pos + 1)
        is_frame = ((marker >= 0xC0) & (marker <= 0xCF) & tf.not_equal(marker, 0xC4)
                    & tf.not_equal(marker, 0xC8) & tf.not_equal(marker, 0xCC))
        fill = tf.equal(marker, 0xFF)
        standalone = tf.equal(marker, 0x01) | ((marker >= 0xD0) & (marker <= 0xD7))
        # Start of image again, end of image or start of scan before any frame header.
        no_frame = tf.equal(marker, 0xD8) | tf.equal(marker, 0xD9) | tf.equal(marker, 0xDA)
        not_marker = tf.not_equal(b.at(pos), 0xFF)
        step = _select(fill, 1, _select(standalone, 2, 2 + b.big(pos + 2, 2)))
        found = ~not_marker & is_frame & (pos + 9 <= n)
        new_bad = not_marker | no_frame | (is_frame & ~found) | (pos + step >= n)
        return (pos + step, _select(found, b.big(pos + 5, 2), height),
                _select(found, b.big(pos + 7, 2), width), found | new_bad, ~found & new_bad,
                steps + 1)

    zero = tf.constant(0, tf.int64)
    _, height, width, done, bad, _ = tf.while_loop(
        cond, body, (tf.constant(2, tf.int64), zero, zero, tf.constant(False),
                     tf.constant(False), zero), parallel_iterations=1)
    bad = bad | ~done
    return _result(height, width, 1, _select(bad, TRUNCATED, OK, tf.int32))


def _png(b: _Bytes):
    ihdr = b.equals(12, b"IHDR")
    return _checked(b, 24, b.big(20, 4), b.big(16, 4), 1, _select(ihdr, OK, TRUNCATED, tf.int32))


def _bmp(b: _Bytes):
    header_size = b.little(14, 4)
    core = tf.equal(header_size, 12)  # OS/2 BITMAPCOREHEADER: 16-bit sizes

    def signed32(value):
        return _select(value >= 2 ** 31, value - 2 ** 32, value)

    width = _select(core, b.little(18, 2), tf.abs(signed32(b.little(18, 4))))
    height = _select(core, b.little(20, 2), tf.abs(signed32(b.little(22, 4))))
    return _checked(b, 26, height, width)


def _webp(b: _Bytes):
    lossy, lossless, extended = b.equals(12, b"VP8 "), b.equals(12, b"VP8L"), b.equals(12, b"VP8X")
    # VP8: key frame start code 9D 01 2A, then 14-bit width and height.
    vp8_ok = lossy & b.equals(23, b"\x9d\x01\x2a")
    vp8 = (b.little(28, 2) % 16384, b.little(26, 2) % 16384)
    # VP8L: signature 0x2F, then 14 bits width - 1, 14 bits height - 1.
    bits = b.little(21, 4)
    vp8l_ok = lossless & tf.equal(b.at(20), 0x2F)
    vp8l = ((bits // 16384) % 16384 + 1, bits % 16384 + 1)
    # VP8X: flags (animation = 0x02), 24-bit canvas width - 1 and height - 1.
    animated = extended & tf.equal((b.at(20) // 2) % 2, 1)
    vp8x = (b.little(27, 3) + 1, b.little(24, 3) + 1)
    height = _select(lossy, vp8[0], _select(lossless, vp8l[0], vp8x[0]))
    width = _select(lossy, vp8[1], _select(lossless, vp8l[1], vp8x[1]))
    problem = _select(animated, ANIMATED_WEBP, _select(
        vp8_ok | vp8l_ok | (extended & ~animated), OK, TRUNCATED, tf.int32), tf.int32)
    return _checked(b, 30, height, width, 1, problem)


def _gif(b: _Bytes):
    """Screen size and the number of frames, by walking the block structure."""
    width, height = b.little(6, 2), b.little(8, 2)
    flags = b.at(10)
    n = b.length

    def colour_table(packed):
        # 3 * 2^(size + 1) bytes where the table flag (0x80) is set.
        return _select(packed >= 128, 3 * tf.bitwise.left_shift(
            tf.constant(2, tf.int64), packed % 8), 0)

    def skip_sub_blocks(pos, steps):
        # Data sub-blocks: a size byte, then that many bytes; size 0 ends them.
        def sub_cond(p, k):
            return (p < n) & tf.not_equal(b.at(p), 0) & (k < MAX_GIF_BLOCKS)

        def sub_body(p, k):
            return p + b.at(p) + 1, k + 1

        pos, steps = tf.while_loop(sub_cond, sub_body, (pos, steps), parallel_iterations=1)
        return pos + 1, steps

    def cond(pos, frames, done, bad, steps):
        return ~done & (steps < MAX_GIF_BLOCKS)

    def body(pos, frames, done, bad, steps):
        # Between blocks: trailer 0x3B, extension 0x21 (label, then sub-blocks),
        # image 0x2C (10-byte descriptor, local colour table, LZW code size, sub-blocks).
        byte = b.at(pos)
        is_trailer, is_ext, is_image = (tf.equal(byte, 0x3B), tf.equal(byte, 0x21),
                                        tf.equal(byte, 0x2C))
        data_pos = _select(is_ext, pos + 2, pos + 10 + colour_table(b.at(pos + 9)) + 1)
        new_pos, steps = skip_sub_blocks(data_pos, steps + 1)
        frames += tf.cast(is_image, tf.int64)
        unknown = ~(is_trailer | is_ext | is_image)
        # A byte that starts no block, or the end of the data: TensorFlow's
        # decoder keeps the frames read so far if there is one.
        over = unknown | (~is_trailer & (new_pos > n))
        return (new_pos, frames, is_trailer | over, bad | (over & tf.equal(frames, 0)), steps)

    zero = tf.constant(0, tf.int64)
    start = 13 + colour_table(flags)
    _, frames, done, bad, _ = tf.while_loop(
        cond, body, (start, zero, start >= n, tf.constant(False), zero),
        parallel_iterations=1)
    bad = bad | ~done | tf.equal(frames, 0)
    return _checked(b, 13, height, width, frames, _select(bad, BAD_GIF, OK, tf.int32))


def read_header(data) -> ImageHeader:
    """Format, size and frame count of one encoded image, without decoding it.

    Args:
      data: string scalar, an encoded image.

    Returns:
      An ImageHeader. Data that is empty, of no accepted format, or whose
      header is cut short or malformed has a `problem` other than OK. Nothing
      here raises: data that passes can still fail to decode (a cut-off body).
    """
    b = _Bytes(data)
    magic = [
        (JPEG, b.equals(0, b"\xff\xd8\xff")),
        (PNG, b.equals(0, b"\x89PNG\r\n\x1a\n")),
        (GIF, b.equals(0, b"GIF87a") | b.equals(0, b"GIF89a")),
        (BMP, b.equals(0, b"BM")),
        (WEBP, b.equals(0, b"RIFF") & b.equals(8, b"WEBP")),
        (JPEG_XL, b.equals(0, b"\xff\x0a") | b.equals(0, b"\x00\x00\x00\x0cJXL \r\n\x87\n")),
    ]
    code = _select(tf.equal(b.length, 0), EMPTY, UNKNOWN, tf.int32)
    for value, matches in reversed(magic):
        code = _select(matches, value, code, tf.int32)
    nothing = lambda problem: lambda: _result(0, 0, 0, problem)  # noqa: E731
    height, width, frames, problem = tf.switch_case(code, [
        nothing(IS_EMPTY), nothing(NOT_AN_IMAGE), lambda: _jpeg(b), lambda: _png(b),
        lambda: _gif(b), lambda: _bmp(b), lambda: _webp(b), nothing(REFUSED_FORMAT)])
    problem = _select(tf.equal(problem, OK) & tf.equal(height * width, 0), NO_PIXELS, problem,
                      tf.int32)
    return ImageHeader(code, height, width, frames, problem)

"""Reading and validating source images and masks on the host (Pillow, NumPy).

Every problem raises `InvalidExampleError` with a message that starts with
the offending file, so that a build over 100K files says which one is bad.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import tensorflow as tf
from PIL import Image

from deeplabv3_tf.data.dataset import IGNORE_LABEL


class InvalidExampleError(ValueError):
    """One example cannot be written; the message names the file and the problem."""


@dataclasses.dataclass(frozen=True)
class EncodedImage:
    """An RGB 8-bit image ready for a record: bytes, "jpeg"/"png", size."""

    data: bytes
    format: str
    height: int
    width: int


def read_bytes(path: str) -> bytes:
    """A file's bytes; a missing or unreadable file is an InvalidExampleError naming it."""
    try:
        # tf.io.gfile: gs:// (and s3://, where its file system is installed) sources too.
        with tf.io.gfile.GFile(path, "rb") as f:
            return f.read()
    except tf.errors.NotFoundError:
        raise InvalidExampleError(f"{path}: file not found") from None
    except (tf.errors.OpError, OSError) as e:
        reason = e.message if isinstance(e, tf.errors.OpError) else e.strerror
        raise InvalidExampleError(f"{path}: cannot be read ({reason})") from None


def _open_image(path: str, data: bytes) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
        image.load()  # Decodes fully: a truncated file fails here.
    except Image.UnidentifiedImageError:
        # Pillow's own message names an in-memory buffer (and its address), not the file.
        raise InvalidExampleError(
            f"{path}: not a readable image (not in any image format Pillow reads)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise InvalidExampleError(f"{path}: not a readable image ({e})") from None
    return image


def read_image(path: str, data: bytes | None = None) -> EncodedImage:
    """Reads an image and returns RGB 8-bit JPEG or PNG bytes.

    RGB JPEGs and RGB PNGs keep their original bytes (no recompression).
    Greyscale, palette, RGBA, CMYK and 16-bit images are converted to RGB and
    re-encoded: JPEG sources as JPEG (quality 95), others as PNG.

    Args:
      path: The image file (named in errors).
      data: Its bytes, where the caller has read them already.

    Raises:
      InvalidExampleError: missing, unreadable or truncated file.
    """
    if data is None:
        data = read_bytes(path)
    image = _open_image(path, data)
    source_format = image.format
    width, height = image.size
    if source_format in ("JPEG", "PNG") and image.mode == "RGB":
        return EncodedImage(data, source_format.lower(), height, width)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") else max(float(array.max()), 1.0)
        image = Image.fromarray(np.clip(array / peak * 255 + 0.5, 0, 255).astype(np.uint8))
    rgb = image.convert("RGB")
    buffer = io.BytesIO()
    if source_format == "JPEG":
        rgb.save(buffer, format="JPEG", quality=95)
        return EncodedImage(buffer.getvalue(), "jpeg", height, width)
    rgb.save(buffer, format="PNG")
    return EncodedImage(buffer.getvalue(), "png", height, width)


def read_index_mask(path: str) -> np.ndarray:
    """Reads a mask whose pixel values are class ids (palette, L or 16-bit PNG).

    A palette PNG gives its indices, not its colours (what
    `np.array(Image.open(p))` gives, unlike `tf.io.decode_png(channels=1)`,
    which returns luminance).

    Returns:
      int32 [H, W].

    Raises:
      InvalidExampleError: missing or unreadable file, or a colour mask.
    """
    image = _open_image(path, read_bytes(path))
    if image.mode in ("RGB", "RGBA", "CMYK", "YCbCr", "LA", "PA"):
        raise InvalidExampleError(
            f"{path}: a colour ({image.mode}) mask where an index mask (palette "
            "or single-channel PNG of class ids) is expected; pass a palette "
            "file to map its colours to classes")
    return np.asarray(image).astype(np.int32)


def read_color_mask(path: str, palette: dict[tuple[int, int, int], int]) -> np.ndarray:
    """Reads a colour mask and maps each colour to its class through `palette`.

    Args:
      path: PNG (RGB, RGBA or palette) mask.
      palette: {(r, g, b): class id}; class id may be IGNORE_LABEL.

    Returns:
      int32 [H, W].

    Raises:
      InvalidExampleError: a colour that is not in the palette (the message
        gives the colour and one pixel where it occurs).
    """
    image = _open_image(path, read_bytes(path))
    rgb = np.asarray(image.convert("RGB")).astype(np.int32)
    codes = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    keys = np.array([(r << 16) | (g << 8) | b for r, g, b in palette], np.int64)
    values = np.array(list(palette.values()), np.int32)
    order = np.argsort(keys)
    keys, values = keys[order], values[order]
    index = np.clip(np.searchsorted(keys, codes), 0, len(keys) - 1)
    unknown = keys[index] != codes
    if unknown.any():
        y, x = np.argwhere(unknown)[0]
        colour = tuple(int(c) for c in rgb[y, x])
        raise InvalidExampleError(
            f"{path}: colour {colour} (first at row {y}, column {x}) is not in "
            "the palette")
    return values[index]


def check_label(label: np.ndarray, path: str, num_classes: int,
                image_size: tuple[int, int] | None = None,
                image_path: str | None = None,
                ignore_label: int = IGNORE_LABEL) -> None:
    """Checks a label map's values (0..C-1 or the ignore label) and size.

    Raises:
      InvalidExampleError: naming the mask file and the first bad values, or
        both files and their sizes when they differ.
    """
    if image_size is not None and tuple(label.shape[:2]) != tuple(image_size):
        raise InvalidExampleError(
            f"{path}: mask is {label.shape[1]}x{label.shape[0]} (WxH) but image "
            f"{image_path} is {image_size[1]}x{image_size[0]}")
    values = np.unique(label)
    bad = values[((values >= num_classes) | (values < 0)) & (values != ignore_label)]
    if bad.size:
        raise InvalidExampleError(
            f"{path}: mask values {bad[:10].tolist()} are outside "
            f"{{0..{num_classes - 1}, {ignore_label}}}")


def encode_label_png(label: np.ndarray) -> bytes:
    """Encodes class ids (0..255) as a single-channel 8-bit PNG."""
    buffer = io.BytesIO()
    Image.fromarray(label.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


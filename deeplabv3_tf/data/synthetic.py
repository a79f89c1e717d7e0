"""Generated scenes: images with shapes of known classes and their label maps.

Used by the demo and the tests wherever real data is not available. Each
object is a filled rectangle, ellipse or triangle whose colour is its class's
palette colour (jittered), on a textured background, so that a model can learn
the classes from colour and shape alone.
"""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np

from deeplabv3_tf.data.dataset import IGNORE_LABEL, voc_palette


def _shape_mask(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A random rectangle, ellipse or triangle covering 4-40% of each side."""
    yy, xx = np.mgrid[:height, :width]
    h = rng.uniform(0.2, 0.6) * height
    w = rng.uniform(0.2, 0.6) * width
    cy = rng.uniform(h / 2, height - h / 2)
    cx = rng.uniform(w / 2, width - w / 2)
    kind = rng.integers(3)
    if kind == 0:
        return (np.abs(yy - cy) <= h / 2) & (np.abs(xx - cx) <= w / 2)
    if kind == 1:
        return ((yy - cy) / (h / 2)) ** 2 + ((xx - cx) / (w / 2)) ** 2 <= 1.0
    # Triangle with apex on top: inside both slanted edges and above the base.
    top, base = cy - h / 2, cy + h / 2
    rel = (yy - top) / max(h, 1.0)
    return (yy <= base) & (yy >= top) & (np.abs(xx - cx) <= rel * w / 2)


def png_of_size(width: int, height: int) -> bytes:
    """A black RGB PNG of any size, compressed row by row: no H x W array is made.

    A 12000x12000 one is about 420 KB (what a server's pixel budget is for).
    """
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    compressor = zlib.compressobj(9)
    row = b"\x00" + bytes(3 * width)  # filter type 0, then the row's pixels
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data)
            + chunk(b"IEND", b""))


def void_band(labels: np.ndarray, width: int) -> np.ndarray:
    """Marks pixels within `width` of a class boundary as IGNORE_LABEL.

    PASCAL VOC annotations carry such a void band around every object.
    """
    if width <= 0:
        return labels
    out = labels.copy()
    edge = np.zeros(labels.shape, bool)
    edge[:-1] |= labels[:-1] != labels[1:]
    edge[1:] |= labels[:-1] != labels[1:]
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:, 1:] |= labels[:, :-1] != labels[:, 1:]
    grown = edge.copy()
    for _ in range(width - 1):
        g = grown.copy()
        g[1:] |= grown[:-1]
        g[:-1] |= grown[1:]
        g[:, 1:] |= grown[:, :-1]
        g[:, :-1] |= grown[:, 1:]
        grown = g
    out[grown] = IGNORE_LABEL
    return out


def draw_scene(rng: np.random.Generator, height: int, width: int,
               num_classes: int = 21, max_objects: int = 3,
               void_width: int = 0, classes: list[int] | None = None,
               ) -> tuple[np.ndarray, np.ndarray]:
    """Draws one scene.

    Args:
      rng: Random generator (the scene is a pure function of its state).
      height, width: Image size.
      num_classes: Classes including background 0; objects use 1..C-1.
      max_objects: At most this many objects (at least one).
      void_width: Width of the IGNORE_LABEL band on object boundaries.
      classes: Object classes to draw, instead of random ones.

    Returns:
      image uint8 [H, W, 3] RGB, labels uint8 [H, W] in {0..C-1, IGNORE_LABEL}.
    """
    palette = voc_palette().astype(np.float32)
    if classes is None:
        count = int(rng.integers(1, max_objects + 1))
        classes = [int(c) for c in rng.integers(1, num_classes, count)]
    labels = np.zeros((height, width), np.uint8)
    # Background: low-contrast noise around a dull grey-green.
    image = (np.array([90.0, 100.0, 80.0]) + rng.normal(0, 12, (height, width, 3)))
    for cls in classes:
        mask = _shape_mask(rng, height, width)
        colour = palette[cls] * 0.8 + 25 + rng.normal(0, 8, 3)
        image[mask] = colour + rng.normal(0, 10, (int(mask.sum()), 3))
        labels[mask] = cls
    image = np.clip(image, 0, 255).astype(np.uint8)
    return image, void_band(labels, void_width)


def write_palette_png(path: str, labels: np.ndarray) -> None:
    """Writes class ids as an 8-bit palette PNG with the VOC colour map."""
    from PIL import Image

    height, width = labels.shape
    image = Image.frombytes("P", (width, height), labels.astype(np.uint8).tobytes())
    image.putpalette(voc_palette().ravel().tolist())
    image.save(path)


def write_voc_dataset(root: str, num_train: int = 6, num_val: int = 4,
                      num_sbd_only: int = 4, size_range: tuple[int, int] = (64, 96),
                      seed: int = 0, with_sbd: bool = True, void_width: int = 2,
                      max_objects: int = 3) -> dict:
    """Writes a generated dataset in the PASCAL VOC 2012 (+ SBD) on-disk formats.

      root/VOCdevkit/VOC2012/JPEGImages/<id>.jpg          RGB JPEG
      root/VOCdevkit/VOC2012/SegmentationClass/<id>.png   palette PNG, 255 void bands
      root/VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val,trainval}.txt
      root/benchmark_RELEASE/dataset/cls/<id>.mat         GTcls.Segmentation (no void)
      root/benchmark_RELEASE/dataset/img/<id>.jpg, train.txt, val.txt

    SBD covers some VOC train and some VOC val ids plus `num_sbd_only` ids of
    its own (whose JPEGs also sit in JPEGImages, as in the real release).

    Returns:
      {"voc_dir", "sbd_dir", "train", "val", "sbd_train", "sbd_val", "train_aug"}:
      paths and id lists (train_aug by the standard rule).
    """
    import scipy.io
    import scipy.sparse
    from PIL import Image

    rng = np.random.default_rng(seed)
    voc = os.path.join(root, "VOCdevkit", "VOC2012")
    sbd = os.path.join(root, "benchmark_RELEASE", "dataset")
    dirs = [os.path.join(voc, d) for d in ("JPEGImages", "SegmentationClass",
                                           os.path.join("ImageSets", "Segmentation"))]
    if with_sbd:
        dirs += [os.path.join(sbd, "cls"), os.path.join(sbd, "img")]
    for d in dirs:
        os.makedirs(d, exist_ok=True)

    train = [f"2099_{i:06d}" for i in range(num_train)]
    val = [f"2099_{i:06d}" for i in range(num_train, num_train + num_val)]
    sbd_only = [f"2099_{i:06d}" for i in range(num_train + num_val,
                                               num_train + num_val + num_sbd_only)]
    for example_id in train + val + (sbd_only if with_sbd else []):
        height, width = (int(v) for v in rng.integers(*size_range, size=2, endpoint=True))
        image, labels = draw_scene(rng, height, width, max_objects=max_objects)
        Image.fromarray(image).save(os.path.join(voc, "JPEGImages", f"{example_id}.jpg"),
                                    quality=90)
        if example_id not in sbd_only:
            write_palette_png(os.path.join(voc, "SegmentationClass", f"{example_id}.png"),
                              void_band(labels, void_width))
        if with_sbd:
            Image.fromarray(image).save(os.path.join(sbd, "img", f"{example_id}.jpg"),
                                        quality=90)
            boundaries = np.empty((20, 1), dtype=object)
            for c in range(20):
                boundaries[c, 0] = scipy.sparse.csc_matrix(void_band(
                    (labels == c + 1).astype(np.uint8), 1) == IGNORE_LABEL)
            present = np.unique(labels[labels > 0]).astype(np.uint8).reshape(-1, 1)
            scipy.io.savemat(os.path.join(sbd, "cls", f"{example_id}.mat"), {
                "GTcls": {"Segmentation": labels.astype(np.uint8),
                          "Boundaries": boundaries,
                          "CategoriesPresent": present}})

    lists = os.path.join(voc, "ImageSets", "Segmentation")
    for name, ids in (("train", train), ("val", val), ("trainval", train + val)):
        with open(os.path.join(lists, f"{name}.txt"), "w") as f:
            f.write("".join(f"{i}\n" for i in ids))
    result = {"voc_dir": voc, "train": train, "val": val}
    if with_sbd:
        # SBD train: half of VOC train + SBD-only ids; SBD val: half of VOC val.
        sbd_train = train[: len(train) // 2] + sbd_only
        sbd_val = val[: len(val) // 2]
        for name, ids in (("train", sbd_train), ("val", sbd_val)):
            with open(os.path.join(sbd, f"{name}.txt"), "w") as f:
                f.write("".join(f"{i}\n" for i in ids))
        result.update(sbd_dir=sbd, sbd_train=sbd_train, sbd_val=sbd_val,
                      train_aug=sorted((set(sbd_train) | set(sbd_val) | set(train))
                                       - set(val)))
    return result

"""Any directory of images and masks, with split lists: users' own data.

  images_dir/<id>.{jpg,jpeg,png,bmp}   any size, RGB/greyscale/CMYK/RGBA
  masks_dir/<id>.png                   index PNG (palette or greyscale: value =
                                       class id), or a colour PNG when a palette
                                       file maps colours to classes
  <split>.txt                          one id per line

Palette file (JSON): {"colors": [[r, g, b], ...], "names": [...],
"ignore": [[r, g, b], ...]}: class i has colors[i]; "names" and "ignore" are
optional. A bare list [[r, g, b], ...] is also accepted.
Void pixels (the `ignore_label` value of index masks, or an "ignore" colour)
are stored as IGNORE_LABEL (255).

The manifest's dataset description ("folder") has the palette's colours and
names; without a palette, the names given (or "class_0", ...) and the PASCAL
VOC colour map, which training and export can override.
"""

from __future__ import annotations

import functools
import os

import tensorflow as tf

from deeplabv3_tf.data.dataset import IGNORE_LABEL, DatasetInfo, default_colors
from deeplabv3_tf.data.images import read_color_mask
from deeplabv3_tf.data.palette_file import read_palette_file
from deeplabv3_tf.data.tfrecord_builders.segmentation import (
    check_num_classes, encode_segmentation, read_index_mask_with_ignore,
    read_split_list)
from deeplabv3_tf.data.tfrecord_builders.shards import SplitSpec, Task, write_split

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".JPG", ".JPEG", ".PNG")


def read_palette(path: str) -> tuple[dict[tuple[int, int, int], int], list[str] | None]:
    """Reads a palette file into ({(r, g, b): class id or IGNORE_LABEL}, names).

    The class colours, in class order, are the keys whose value is not IGNORE_LABEL.

    Raises:
      FileNotFoundError / ValueError: naming the file and the problem.
    """
    palette = read_palette_file(path)
    lookup = {colour: class_id for class_id, colour in enumerate(palette.colors)}
    lookup.update((colour, IGNORE_LABEL) for colour in palette.ignore)
    return lookup, list(palette.names) if palette.names is not None else None


def _find_image(images_dir: str, example_id: str) -> str:
    for extension in IMAGE_EXTENSIONS:
        path = os.path.join(images_dir, example_id + extension)
        if tf.io.gfile.exists(path):
            return path
    # A path that names what was looked for; reading it reports it missing.
    return os.path.join(images_dir, example_id + ".{jpg,jpeg,png,bmp}")


def build_folder(images_dir: str, masks_dir: str, splits: dict[str, str], output_dir: str,
                 num_classes: int | None = None, ignore_label: int = IGNORE_LABEL,
                 palette_path: str | None = None, class_names: list[str] | None = None,
                 **write_options) -> dict:
    """Writes a folder dataset's splits as TFRecords.

    Args:
      images_dir: Directory of images.
      masks_dir: Directory of <id>.png masks.
      splits: {split name: path of its id list}.
      output_dir: Where shards and manifests go.
      num_classes: Number of classes; defaults to the palette's size.
      ignore_label: Void value of index masks (stored as 255).
      palette_path: JSON palette for colour masks (see module docstring).
      class_names: Optional names, index = class id (palette names otherwise).
      **write_options: Passed to `write_split`.

    Returns:
      {split: manifest}.
    """
    palette = None
    colors = None
    if palette_path:
        palette, palette_names = read_palette(palette_path)
        colors = [c for c, v in sorted(palette.items(), key=lambda i: i[1]) if v != IGNORE_LABEL]
        num_classes = num_classes or len(colors)
        class_names = class_names or palette_names
    if num_classes is None:
        raise ValueError("num_classes is required for index masks (no palette given).")
    check_num_classes(num_classes)
    if not 0 <= ignore_label <= 65535 or 0 <= ignore_label < num_classes:
        raise ValueError(f"ignore_label={ignore_label} must be >= num_classes ({num_classes}).")
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for {num_classes} classes.")
    if colors is not None and len(colors) != num_classes:
        raise ValueError(f"{palette_path}: {len(colors)} colours for {num_classes} classes.")
    dataset = DatasetInfo(
        "folder", tuple(class_names or (f"class_{i}" for i in range(num_classes))),
        tuple(colors) if colors else default_colors(num_classes))
    for directory in (images_dir, masks_dir):
        if not tf.io.gfile.isdir(directory):
            raise FileNotFoundError(f"Directory not found: {directory}")
    manifests = {}
    for split, list_path in splits.items():
        tasks = []
        for example_id in read_split_list(list_path):
            mask = os.path.join(masks_dir, f"{example_id}.png")
            if palette is not None:
                load = functools.partial(read_color_mask, mask, palette)
            else:
                load = functools.partial(read_index_mask_with_ignore, mask, num_classes,
                                         ignore_label)
            tasks.append(Task(example_id, (_find_image(images_dir, example_id), mask), load))
        spec = SplitSpec(
            num_classes=num_classes, ignore_label=IGNORE_LABEL,
            dataset=dataset, origin=list_path,
            source={"format": "folder", "images_dir": os.path.abspath(images_dir),
                    "masks_dir": os.path.abspath(masks_dir),
                    "palette": os.path.abspath(palette_path) if palette_path else None,
                    "source_ignore_label": ignore_label})
        manifests[split] = write_split(
            output_dir, split, tasks,
            functools.partial(encode_segmentation, num_classes=num_classes),
            spec, **write_options)
    return manifests

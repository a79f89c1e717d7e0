"""What a dataset's labels mean: `DatasetInfo`, and the datasets the project knows.

`IGNORE_LABEL` is the one label value that losses and metrics skip; it is
defined here once and imported everywhere else.

A `DatasetInfo` (names, colours and, where the dataset has them, its own label
ids) is written into every manifest by the record builders, carried into a
run's experiment.json by training (`DataConfig.dataset`, `class_names`,
`colors`, `label_ids`), and used by evaluation, the export (metadata, assets)
and `tools/predict.py`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


IGNORE_LABEL = 255

# The ImageNet mean pixel (RGB, 0..255) of keras.applications' "caffe" inputs:
# what padding fills images with (it normalises to zero) and what the model's
# caffe normalisation subtracts.
IMAGENET_MEAN_RGB = (123.68, 116.779, 103.939)

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus",
    "car", "cat", "chair", "cow", "diningtable", "dog", "horse", "motorbike",
    "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)

CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
    "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car",
    "truck", "bus", "train", "motorcycle", "bicycle",
)


def voc_palette(num_colors: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map (bit-interleaved class index), uint8 [N, 3].

    Index 255 (void) is (224, 224, 192), as in the VOC devkit's PNGs.
    """
    palette = np.zeros((num_colors, 3), np.uint8)
    for index in range(num_colors):
        c, r, g, b = index, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette[index] = (r, g, b)
    return palette



# cityscapesScripts helpers/labels.py: the 19 evaluated classes in train-id
# order, with their colours and label ids.
CITYSCAPES_COLORS = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
    (0, 80, 100), (0, 0, 230), (119, 11, 32))
CITYSCAPES_LABEL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)


def background_class(class_names) -> int | None:
    """Class 0 where it is named as background (overlays leave it unblended), else None
    (Cityscapes' class 0 is road)."""
    first = str(class_names[0]).lower() if len(class_names) else ""
    return 0 if first in ("background", "bg", "_background_", "unlabeled") else None


def default_colors(num_classes: int) -> tuple[tuple[int, int, int], ...]:
    """The PASCAL VOC colour map's first `num_classes` colours (for data without its own)."""
    if not 1 <= num_classes <= 255:
        raise ValueError(f"num_classes={num_classes}: the default colour map has 255 colours.")
    return tuple(tuple(int(v) for v in c) for c in voc_palette()[:num_classes])


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """The meaning of a dataset's class ids (deeplab2's dataset descriptor).

    Attributes:
      name: "pascal_voc", "cityscapes", "coco", "folder" ("" when unknown).
      class_names: Name of each class, index = class id.
      colors: (r, g, b) of each class in colour masks; () for classification
        data.
      ignore_label: Label value of void pixels in the records.
      label_ids: The id each class has in the dataset's own tools (Cityscapes:
        train id -> label id); () when the class id is that id.
    """

    name: str
    class_names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...] = ()
    ignore_label: int = IGNORE_LABEL
    label_ids: tuple[int, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "class_names", tuple(str(n) for n in self.class_names))
        object.__setattr__(self, "colors", tuple(tuple(int(v) for v in c) for c in self.colors))
        object.__setattr__(self, "label_ids", tuple(int(v) for v in self.label_ids))
        check_colors(self.colors, len(self.class_names), "colors")
        if self.label_ids and len(self.label_ids) != len(self.class_names):
            raise ValueError(f"{len(self.label_ids)} label ids for "
                             f"{len(self.class_names)} classes.")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def own_ids(self) -> tuple[int, ...]:
        """The dataset's own id of each class: `label_ids`, or the class ids
        where the dataset has none."""
        return self.label_ids or tuple(range(self.num_classes))

    def lookup(self) -> np.ndarray:
        """uint8 [256, 3]: the class colours, then the VOC colour map (void,
        255, is VOC's (224, 224, 192)), for colouring any 8-bit label map."""
        table = voc_palette(256)
        if self.colors:
            table[: self.num_classes] = np.asarray(self.colors, np.uint8)
        return table

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "class_names": list(self.class_names),
                "colors": [list(c) for c in self.colors], "ignore_label": self.ignore_label,
                "label_ids": list(self.label_ids)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "DatasetInfo":
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"Unknown dataset description fields: {unknown}.")
        return cls(**values)


def check_colors(colors, num_classes: int, what: str) -> None:
    """Refuses colours that are not one (r, g, b) of 0..255 per class."""
    if not colors:
        return
    if len(colors) != num_classes:
        raise ValueError(f"{len(colors)} {what} for {num_classes} classes.")
    for colour in colors:
        if len(colour) != 3 or not all(0 <= v <= 255 for v in colour):
            raise ValueError(f"{what}: {tuple(colour)} is not an (r, g, b) of 0..255 values.")


PASCAL_VOC = DatasetInfo("pascal_voc", VOC_CLASSES, default_colors(len(VOC_CLASSES)))
# COCO images on the 20 VOC categories (paper §4.1): VOC's names and colours.
COCO_VOC = dataclasses.replace(PASCAL_VOC, name="coco")
CITYSCAPES = DatasetInfo("cityscapes", CITYSCAPES_CLASSES, CITYSCAPES_COLORS,
                         label_ids=CITYSCAPES_LABEL_IDS)

"""The palette file: class colours (and optionally names, label ids and void
colours) in JSON, read in one place.

    {"colors": [[r, g, b], ...],      one per class, in class order (required)
     "names": ["road", ...],          one per colour (optional)
     "label_ids": [7, ...],           the dataset's own id of each class (optional)
     "ignore": [[r, g, b], ...]}      colours of void pixels in colour masks (optional)

A bare list of colours is accepted as {"colors": [...]}. The folder builder
reads colour masks with it (`tools/build_tfrecords.py folder --palette`); the
export gives a run's classes new colours and names with it
(`tools/export.py --palette`).
"""

from __future__ import annotations

import dataclasses

from deeplabv3_tf.core.files import read_json
from deeplabv3_tf.data.dataset import DatasetInfo

Color = tuple[int, int, int]


@dataclasses.dataclass(frozen=True)
class PaletteFile:
    """A parsed palette file (see the module docstring)."""

    colors: tuple[Color, ...]
    names: tuple[str, ...] | None = None
    label_ids: tuple[int, ...] | None = None
    ignore: tuple[Color, ...] = ()


def read_palette_file(path: str) -> PaletteFile:
    """Reads and checks a palette file.

    Raises:
      FileNotFoundError / ValueError: naming the file and the problem.
    """
    data = read_json(path, "Palette file")
    if isinstance(data, list):
        data = {"colors": data}
    if not isinstance(data, dict) or not isinstance(data.get("colors"), list) or not data["colors"]:
        raise ValueError(f"{path}: expected a non-empty 'colors' list of [r, g, b].")
    seen = set()
    for colour in data["colors"] + list(data.get("ignore", [])):
        if (not isinstance(colour, (list, tuple)) or len(colour) != 3
                or not all(isinstance(v, int) and 0 <= v <= 255 for v in colour)):
            raise ValueError(f"{path}: {colour!r} is not an [r, g, b] colour of 0..255 ints.")
        if tuple(colour) in seen:
            raise ValueError(f"{path}: colour {colour} is listed twice.")
        seen.add(tuple(colour))
    colors = tuple(tuple(c) for c in data["colors"])
    names, label_ids = data.get("names"), data.get("label_ids")
    for what, values in (("names", names), ("label_ids", label_ids)):
        if values is not None and len(values) != len(colors):
            raise ValueError(f"{path}: {len(values)} {what} for {len(colors)} colours.")
    return PaletteFile(colors, tuple(str(n) for n in names) if names is not None else None,
                       tuple(int(i) for i in label_ids) if label_ids is not None else None,
                       tuple(tuple(c) for c in data.get("ignore", [])))


def with_palette_file(info: DatasetInfo, path: str) -> DatasetInfo:
    """`info` with the colours, and where the file has them the names and label
    ids, of a palette file.

    Raises:
      FileNotFoundError / ValueError: naming the file and the problem.
    """
    palette = read_palette_file(path)
    try:
        return dataclasses.replace(info, colors=palette.colors,
                                   class_names=palette.names or info.class_names,
                                   label_ids=palette.label_ids or info.label_ids)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e} (the model has {info.num_classes} classes)") from None

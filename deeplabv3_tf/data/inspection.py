"""Looking at segmentation records before training on them: statistics and warnings.

`scan_split` reads every example of one or more splits the way training
does (`schema.decode_segmentation`: labels through `tf.io.decode_png(channels=1)`)
and reports what the records can reveal about their labels:

  - label PNGs that are palette or RGB images: TensorFlow decodes their colours,
    not their indices (tensorflow/tensorflow#28256), so training sees luminance;
  - label values that are neither a class id nor the ignore label
    (tensorflow/models#3739), and values that match the luminance of the
    dataset's colours (masks converted to greyscale before writing);
  - classes with no pixels; one class holding most labelled pixels (a model
    predicting only it scores a high pixel accuracy: tensorflow/models#9844);
  - the ignore label and background confused (mmsegmentation#1955): class 0
    absent while much is void, or masks of only 0 and 255;
  - many images nearly all void or nearly all background;
  - duplicate images (by decoded pixels), within a split and across splits
    (val images in train);
  - image sizes far from the training crop; image and label sizes that differ.

The classes come from the split's manifest (`<split>.manifest.json` beside the
shards) when there is one; otherwise they are inferred from the data (classes
0..largest value seen, the VOC colour map). The thresholds are `Thresholds`'
fields; docs/data.md ("Looking at records before training") lists them. The
page that shows them, and `inspect_records`, which runs it all, are
`pages/records_page.py`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
from typing import Sequence

import numpy as np
import tensorflow as tf

from deeplabv3_tf.data.dataset import IGNORE_LABEL, DatasetInfo, background_class, default_colors
from deeplabv3_tf.data import schema
from deeplabv3_tf.data.pipeline import list_files
from deeplabv3_tf.core.progress import ProgressBar

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_COLOUR_TYPES = {0: "greyscale", 2: "RGB", 3: "palette", 4: "greyscale+alpha",
                    6: "RGBA"}


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """When the inspector warns. Shares are fractions (0.85 = 85 %).

    Attributes:
      dominant_class: One class above this share of all labelled pixels.
      nearly_void: An image is nearly all void above this share of void pixels...
      nearly_void_images: ...and a split warns when more than this share of its
        images are.
      nearly_background: An image is nearly all background above this share
        of its labelled pixels being class 0 (when class 0 is a background)...
      nearly_background_images: ...and a split warns above this share of images.
      luminance_match: Values outside the classes are called palette luminance
        when at least this share of their pixels is within 1 of the luminance
        of a class colour.
      void_without_background: Class 0 (background) absent while void is above
        this share of pixels: background was probably mapped to the ignore label.
      small_for_crop: An image is small for the crop when both its sides are
        below this fraction of the crop's...
      large_for_crop: ...and large when both sides are above this many crops;
      crop_images: a split warns when more than this share of images is either.
    """

    dominant_class: float = 0.85
    nearly_void: float = 0.9
    nearly_void_images: float = 0.05
    nearly_background: float = 0.995
    nearly_background_images: float = 0.25
    luminance_match: float = 0.9
    void_without_background: float = 0.2
    small_for_crop: float = 0.5
    large_for_crop: float = 3.0
    crop_images: float = 0.5


@dataclasses.dataclass
class Finding:
    """One warning: what was seen, why it matters, how to fix it, and examples."""

    level: str  # "error": training would learn the wrong thing; "warning": look at it
    split: str
    title: str
    detail: str
    fix: str
    examples: list[str] = dataclasses.field(default_factory=list)

    def line(self) -> str:
        shown = f" (e.g. {', '.join(self.examples[:5])})" if self.examples else ""
        return f"{self.level}: [{self.split}] {self.title}: {self.detail}{shown}. Fix: {self.fix}"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class SplitStats:
    """What one pass over a split's examples found."""

    name: str
    pattern: str
    files: list[str]
    pixel_counts: np.ndarray = dataclasses.field(
        default_factory=lambda: np.zeros(256, np.int64))  # by label value 0..255
    image_counts: np.ndarray = dataclasses.field(
        default_factory=lambda: np.zeros(256, np.int64))  # images holding each value
    images: int = 0
    sizes: list[tuple[int, int]] = dataclasses.field(default_factory=list)
    void_shares: list[float] = dataclasses.field(default_factory=list)
    background_shares: list[float] = dataclasses.field(default_factory=list)
    ids: list[str] = dataclasses.field(default_factory=list)
    hashes: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    label_types: dict[str, int] = dataclasses.field(default_factory=dict)
    label_type_examples: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    mismatched: list[str] = dataclasses.field(default_factory=list)
    samples: list[tuple[int, str, np.ndarray, np.ndarray]] = dataclasses.field(
        default_factory=list)
    truncated: bool = False


def _split_name(pattern: str) -> str:
    base = os.path.basename(pattern)
    return base.split("-")[0].replace("*", "") or base


def _png_colour_type(data: bytes) -> str:
    if data[:8] != PNG_SIGNATURE or len(data) < 26:
        return "not PNG"
    return PNG_COLOUR_TYPES.get(data[25], f"colour type {data[25]}")


def _parse(serialized):
    parsed = tf.io.parse_single_example(serialized, schema.SEGMENTATION_FEATURES)
    # As training decodes it; plus the label PNG's header, for its colour type.
    example = schema.decode_parsed_segmentation(parsed)
    return (example["image"], example["label"], example["filename"],
            tf.strings.substr(parsed[schema.LABEL_ENCODED], 0, 26))


def _check_segmentation_records(files: list[str]) -> None:
    first = next(iter(tf.data.TFRecordDataset(files[:1]).take(1)), None)
    if first is None:
        return
    keys = tf.train.Example.FromString(first.numpy()).features.feature.keys()
    if schema.LABEL_ENCODED not in keys:
        kind = ("classification records" if schema.CLASS_LABEL in keys
                else f"examples with features {sorted(keys)}")
        raise ValueError(f"{files[0]} holds {kind}, not segmentation records (no "
                         f"{schema.LABEL_ENCODED!r}): the inspector reads segmentation records.")


def scan_split(pattern: str, info: DatasetInfo, samples: int = 24, seed: int = 0,
               max_examples: int = 0, progress: bool = True, total: int = 0) -> SplitStats:
    """Reads a split's examples once and gathers `SplitStats` (a seeded reservoir
    sample of `samples` examples is kept for the contact sheet)."""
    files = list_files(pattern)
    _check_segmentation_records(files)
    stats = SplitStats(_split_name(pattern), pattern, files)
    dataset = tf.data.TFRecordDataset(files).map(_parse, num_parallel_calls=tf.data.AUTOTUNE)
    if max_examples:
        dataset = dataset.take(max_examples + 1)
    rng = random.Random(seed)
    background = background_class(info.class_names)
    bar = ProgressBar(min(total, max_examples) if max_examples and total else total,
                      desc=f"[{stats.name}]", unit="img", enabled=progress)
    for index, (image, label, filename, head) in enumerate(dataset.as_numpy_iterator()):
        if max_examples and index == max_examples:
            stats.truncated = True
            break
        example_id = filename.decode("utf8", "replace") or f"#{index}"
        height, width = image.shape[:2]
        stats.images += 1
        stats.ids.append(example_id)
        stats.sizes.append((height, width))
        if label.shape != (height, width):
            stats.mismatched.append(f"{example_id} (image {height}x{width}, label "
                                    f"{label.shape[0]}x{label.shape[1]})")
        counts = np.bincount(label.ravel(), minlength=256)
        stats.pixel_counts += counts
        stats.image_counts += counts > 0
        total_pixels = max(label.size, 1)
        void = counts[info.ignore_label]
        stats.void_shares.append(void / total_pixels)
        labelled = total_pixels - void
        if background is not None:
            stats.background_shares.append(counts[background] / labelled if labelled else 0.0)
        digest = hashlib.blake2b(image.tobytes(), digest_size=16)
        digest.update(str(image.shape).encode())
        stats.hashes.setdefault(digest.hexdigest(), []).append(example_id)
        kind = _png_colour_type(head)
        stats.label_types[kind] = stats.label_types.get(kind, 0) + 1
        stats.label_type_examples.setdefault(kind, [])
        if len(stats.label_type_examples[kind]) < 5:
            stats.label_type_examples[kind].append(example_id)
        # Reservoir sampling (Algorithm R): every example equally likely, one pass.
        if len(stats.samples) < samples:
            stats.samples.append((index, example_id, image, label))
        else:
            slot = rng.randint(0, index)
            if slot < samples:
                stats.samples[slot] = (index, example_id, image, label)
        bar.update(1)
    bar.close()
    stats.samples.sort(key=lambda s: s[0])
    return stats


def _luminances(colours) -> np.ndarray:
    """Grey values a colour may become: BT.601 (PIL's convert("L"), libpng's
    rgb-to-grey as TensorFlow's decode_png uses) and BT.709 weights."""
    rgb = np.asarray(colours, np.float64)
    values = np.concatenate([rgb @ [0.299, 0.587, 0.114], rgb @ [0.2126, 0.7152, 0.0722]])
    return np.unique(np.concatenate([np.floor(values), np.round(values)]).astype(int))


def other_values(stats: SplitStats, info: DatasetInfo) -> list[int]:
    """Label values seen that are neither a class id nor the ignore label."""
    return [int(v) for v in np.flatnonzero(stats.pixel_counts)
            if v >= info.num_classes and v != info.ignore_label]


def share_of(part, whole) -> float:
    return float(part) / float(whole) if whole else 0.0


def _examples(ids: Sequence[str], limit: int = 8) -> list[str]:
    return list(ids[:limit])


def findings(stats: SplitStats, info: DatasetInfo, thresholds: Thresholds = Thresholds(),
             crop_size: tuple[int, int] | None = None, inferred: bool = False) -> list[Finding]:
    """The warnings one split's statistics give (see the module docstring).

    `inferred`: the classes were inferred from the values seen (no manifest).
    """
    split = stats.name
    if not stats.images:
        return [Finding("error", split, "no examples", f"{stats.pattern} holds no records",
                        "check the glob and that the build finished")]
    found = []

    def add(level, title, detail, fix, examples=()):
        found.append(Finding(level, split, title, detail, fix, list(examples)))

    _label_format_findings(stats, add)
    _label_value_findings(stats, info, thresholds, inferred, add)
    _class_findings(stats, info, thresholds, add)
    _image_findings(stats, thresholds, add)
    if crop_size:
        _crop_findings(stats, thresholds, crop_size, add)
    return found


def _label_format_findings(stats: SplitStats, add) -> None:
    """Label PNGs that decode_png reads as colours, not class indices."""
    for kind in ("palette", "RGB", "RGBA"):
        if stats.label_types.get(kind):
            add("error", f"{kind} label PNGs",
                f"{stats.label_types[kind]} of {stats.images} label PNGs are {kind} images; "
                "TensorFlow's decode_png returns their colours, not class indices "
                "(tensorflow/tensorflow#28256), so training reads each colour's luminance",
                "rebuild the records with tools/build_tfrecords.py, which stores class "
                "indices (or convert the masks with research/deeplab's remove_gt_colormap.py)",
                stats.label_type_examples[kind])


def _label_value_findings(stats: SplitStats, info: DatasetInfo, thresholds: Thresholds,
                          inferred: bool, add) -> None:
    """Label values that are no class: palette luminance, or ids past the classes."""
    num_classes, ignore = info.num_classes, info.ignore_label
    values = np.flatnonzero(stats.pixel_counts)
    outside = other_values(stats, info)
    # Classes inferred from the data (no manifest) contain every value seen; palette
    # luminance then shows as a few sparse values far apart.
    nonzero = [int(v) for v in values if v and v != ignore]
    sparse = inferred and len(nonzero) >= 3 and len(nonzero) <= (max(nonzero) + 1) // 4
    suspicious = nonzero if sparse else outside
    total = stats.pixel_counts.sum()
    if suspicious:
        pixels = stats.pixel_counts[suspicious].sum()
        colours = info.lookup()
        reference = colours[:21] if inferred else colours[:num_classes]
        near = {int(v) for lum in _luminances(reference.tolist() + [colours[ignore].tolist()])
                for v in (lum - 1, lum, lum + 1)}
        matching = stats.pixel_counts[[v for v in suspicious if v in near]].sum()
        shown = ", ".join(str(v) for v in suspicious[:12]) + (
            " ..." if len(suspicious) > 12 else "")
        what = ("" if inferred else f"not class ids of the {num_classes} classes but ")
        if len(suspicious) >= 3 and share_of(matching, pixels) >= thresholds.luminance_match:
            add("error", "masks hold palette luminance",
                f"label values {shown} ({100 * share_of(pixels, total):.1f} % of pixels) are "
                f"{what}the grey levels of {'VOC' if inferred else 'the class'} colours: the "
                "masks were converted to greyscale (PIL .convert('L'), cv2.IMREAD_GRAYSCALE) "
                "or decoded from palette PNGs by decode_png",
                "write the palette indices (np.asarray(Image.open(mask)) of a palette PNG) "
                "or map colours to class ids (build_tfrecords.py folder --palette)",
                stats.label_type_examples.get("greyscale", [])[:3])
        elif outside:
            add("error", "label values outside the classes",
                f"values {shown} ({100 * share_of(pixels, total):.1f} % of pixels) are neither "
                f"a class id 0..{num_classes - 1} nor the ignore label {ignore}; the loss "
                "would index past the last class (tensorflow/models#3739)",
                f"map them to class ids or to {ignore}, or raise num_classes if they are "
                "classes")


def _class_findings(stats: SplitStats, info: DatasetInfo, thresholds: Thresholds, add) -> None:
    """Background as void, binary 0/255 masks, absent classes, one dominant class."""
    num_classes, ignore = info.num_classes, info.ignore_label
    values = np.flatnonzero(stats.pixel_counts)
    total = stats.pixel_counts.sum()
    labelled = stats.pixel_counts[:num_classes].sum()
    void_share = share_of(stats.pixel_counts[ignore], total)
    empty = [c for c in range(num_classes) if stats.pixel_counts[c] == 0]
    if 0 in empty and void_share >= thresholds.void_without_background:
        add("error", "background labelled as ignore",
            f"class 0 ({info.class_names[0]}) has no pixels while {100 * void_share:.1f} % "
            f"of pixels are the ignore label {ignore}: background was probably mapped to "
            f"{ignore} (mmsegmentation's reduce_zero_label), so the model never learns it",
            f"keep background as 0 and use {ignore} only for pixels to skip")
        empty.remove(0)
    only_binary = set(values.tolist()) <= {0, ignore} and stats.pixel_counts[ignore] > 0
    if only_binary and num_classes >= 2 and void_share >= thresholds.void_without_background:
        add("error", f"masks of 0 and {ignore} only",
            f"every mask holds only 0 and {ignore} ({100 * void_share:.1f} % of pixels): "
            f"binary masks saved as 0/{ignore} make the foreground the ignore label",
            f"map {ignore} to class 1 (e.g. mask // {ignore})")
    if empty:
        names = ", ".join(f"{c} {info.class_names[c]}" for c in empty[:12])
        add("warning", "classes with no pixels",
            f"{len(empty)} of {num_classes} classes have no pixels in {stats.images} images: "
            f"{names}{' ...' if len(empty) > 12 else ''}",
            "check the class list and the mapping of the source's labels; an absent class "
            "has no IoU in evaluation")
    if labelled:
        top = int(np.argmax(stats.pixel_counts[:num_classes]))
        share = share_of(stats.pixel_counts[top], labelled)
        if share > thresholds.dominant_class:
            add("warning", "one class holds most pixels",
                f"class {top} ({info.class_names[top]}) is {100 * share:.1f} % of labelled "
                f"pixels: predicting only it scores {100 * share:.1f} % pixel accuracy "
                "(tensorflow/models#9844)",
                "judge models by mIoU, not pixel accuracy; check that the other classes' "
                "labels were written")


def _image_findings(stats: SplitStats, thresholds: Thresholds, add) -> None:
    """Images nearly all void or background, duplicates, label and image sizes that differ."""
    nearly_void = [i for i, s in zip(stats.ids, stats.void_shares) if s > thresholds.nearly_void]
    if share_of(len(nearly_void), stats.images) > thresholds.nearly_void_images:
        add("warning", "images nearly all void",
            f"{len(nearly_void)} of {stats.images} images are over "
            f"{100 * thresholds.nearly_void:.0f} % ignore label",
            "check how void was written (borders only in VOC); such images teach nothing",
            _examples(nearly_void))
    if stats.background_shares:
        nearly_background = [i for i, s in zip(stats.ids, stats.background_shares)
                             if s > thresholds.nearly_background]
        if share_of(len(nearly_background), stats.images) > thresholds.nearly_background_images:
            add("warning", "images nearly all background",
                f"{len(nearly_background)} of {stats.images} images are over "
                f"{100 * thresholds.nearly_background:.1f} % background",
                "check that objects were drawn into these masks, or leave such images out",
                _examples(nearly_background))
    duplicates = [ids for ids in stats.hashes.values() if len(ids) > 1]
    if duplicates:
        add("warning", "duplicate images",
            f"{sum(len(d) - 1 for d in duplicates)} images repeat another of the split "
            f"({len(duplicates)} groups)",
            "remove the copies (they weigh twice in training)",
            [" = ".join(d[:3]) for d in duplicates[:5]])
    if stats.mismatched:
        add("error", "image and label sizes differ",
            f"{len(stats.mismatched)} examples", "rebuild them: label and image must align",
            stats.mismatched[:5])


def _crop_findings(stats: SplitStats, thresholds: Thresholds, crop_size: tuple[int, int],
                   add) -> None:
    """Images much smaller or larger than the training crop."""
    crop_h, crop_w = crop_size
    sizes = np.asarray(stats.sizes)
    small = (sizes[:, 0] < thresholds.small_for_crop * crop_h) & \
            (sizes[:, 1] < thresholds.small_for_crop * crop_w)
    large = (sizes[:, 0] > thresholds.large_for_crop * crop_h) & \
            (sizes[:, 1] > thresholds.large_for_crop * crop_w)
    median = "x".join(str(int(v)) for v in np.median(sizes, axis=0))
    if small.mean() > thresholds.crop_images:
        add("warning", "images small for the crop",
            f"{int(small.sum())} of {stats.images} images are under half the crop "
            f"{crop_h}x{crop_w} both ways (median {median}): most of each crop is "
            "padding, which is ignored",
            "use a crop near the images' size (--set data.crop_size=...)")
    if large.mean() > thresholds.crop_images:
        add("warning", "images large for the crop",
            f"{int(large.sum())} of {stats.images} images are over "
            f"{thresholds.large_for_crop:g} crops {crop_h}x{crop_w} both ways "
            f"(median {median}): a crop sees little context",
            "use a larger crop or smaller training scales")


def cross_split_findings(splits: Sequence[SplitStats]) -> list[Finding]:
    """Images that appear in more than one split (evaluation images in training data)."""
    found = []
    for i, first in enumerate(splits):
        for second in splits[i + 1:]:
            shared = [f"{first.hashes[h][0]} = {second.hashes[h][0]}"
                      for h in first.hashes.keys() & second.hashes.keys()]
            if shared:
                found.append(Finding(
                    "error", f"{first.name}+{second.name}", "images in two splits",
                    f"{len(shared)} images of {second.name} are also in {first.name}: scores "
                    f"on {second.name} would overstate the model", "remove them from one split",
                    sorted(shared)[:8]))
    return found


def describe(manifest: dict | None, path: str, num_classes: int | None = None,
             ignore_label: int | None = None) -> tuple[DatasetInfo | None, str]:
    """The dataset description of a split from its manifest (`records_manifest`).

    Returns:
      (info, where it came from); info is None when neither the manifest nor
      `num_classes` describes the classes: they are then inferred from the data.
    """
    if manifest and manifest.get("dataset"):
        info = DatasetInfo.from_dict(manifest["dataset"])
        source = f"manifest {path}"
    elif manifest and manifest.get("class_names"):
        names = manifest["class_names"]
        info = DatasetInfo("", names, default_colors(len(names)),
                           manifest.get("ignore_label", IGNORE_LABEL))
        source = f"manifest {path} (class names only)"
    else:
        info, source = None, f"no manifest ({path} absent): classes inferred from the data"
    if num_classes and (info is None or info.num_classes != num_classes):
        info = DatasetInfo(info.name if info else "", [f"class {i}" for i in range(num_classes)],
                           default_colors(num_classes),
                           info.ignore_label if info else IGNORE_LABEL)
        source = f"--num_classes {num_classes}"
    if info is not None and ignore_label is not None:
        info = dataclasses.replace(info, ignore_label=ignore_label)
    return info, source


def inferred_classes_of(stats: SplitStats, ignore_label: int) -> DatasetInfo:
    """Classes 0..the largest value seen (not the ignore label), default colours."""
    values = [v for v in np.flatnonzero(stats.pixel_counts) if v != ignore_label]
    count = int(max(values)) + 1 if values else 1
    return DatasetInfo("", [f"class {i}" for i in range(count)], default_colors(count),
                       ignore_label)

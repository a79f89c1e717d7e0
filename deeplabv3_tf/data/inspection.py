"""Looking at segmentation records before training on them: statistics, warnings, a page.

`inspect_records` reads every example of one or more splits the way training
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
fields; README ("Inspecting records") lists them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
from typing import Callable, Sequence

import numpy as np
import tensorflow as tf

from deeplabv3_tf.core import html as pages
from deeplabv3_tf.data.dataset import IGNORE_LABEL, DatasetInfo, background_class, default_colors
from deeplabv3_tf.data import schema
from deeplabv3_tf.data.pipeline import list_files
from deeplabv3_tf.data.schema import records_manifest
from deeplabv3_tf.core.progress import ProgressBar
from deeplabv3_tf.data.visualize import overlay

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


def _other_values(stats: SplitStats, info: DatasetInfo) -> list[int]:
    """Label values seen that are neither a class id nor the ignore label."""
    return [int(v) for v in np.flatnonzero(stats.pixel_counts)
            if v >= info.num_classes and v != info.ignore_label]


def _share(part, whole) -> float:
    return float(part) / float(whole) if whole else 0.0


def _examples(ids: Sequence[str], limit: int = 8) -> list[str]:
    return list(ids[:limit])


def findings(stats: SplitStats, info: DatasetInfo, thresholds: Thresholds = Thresholds(),
             crop_size: tuple[int, int] | None = None, inferred: bool = False) -> list[Finding]:
    """The warnings one split's statistics give (see the module docstring).

    `inferred`: the classes were inferred from the values seen (no manifest).
    """
    found = []
    split = stats.name
    num_classes, ignore = info.num_classes, info.ignore_label
    if not stats.images:
        return [Finding("error", split, "no examples", f"{stats.pattern} holds no records",
                        "check the glob and that the build finished")]

    def add(level, title, detail, fix, examples=()):
        found.append(Finding(level, split, title, detail, fix, list(examples)))

    for kind in ("palette", "RGB", "RGBA"):
        if stats.label_types.get(kind):
            add("error", f"{kind} label PNGs",
                f"{stats.label_types[kind]} of {stats.images} label PNGs are {kind} images; "
                "TensorFlow's decode_png returns their colours, not class indices "
                "(tensorflow/tensorflow#28256), so training reads each colour's luminance",
                "rebuild the records with tools/build_tfrecords.py, which stores class "
                "indices (or convert the masks with research/deeplab's remove_gt_colormap.py)",
                stats.label_type_examples[kind])
    values = np.flatnonzero(stats.pixel_counts)
    outside = _other_values(stats, info)
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
        if len(suspicious) >= 3 and _share(matching, pixels) >= thresholds.luminance_match:
            add("error", "masks hold palette luminance",
                f"label values {shown} ({100 * _share(pixels, total):.1f} % of pixels) are "
                f"{what}the grey levels of {'VOC' if inferred else 'the class'} colours: the "
                "masks were converted to greyscale (PIL .convert('L'), cv2.IMREAD_GRAYSCALE) "
                "or decoded from palette PNGs by decode_png",
                "write the palette indices (np.asarray(Image.open(mask)) of a palette PNG) "
                "or map colours to class ids (build_tfrecords.py folder --palette)",
                stats.label_type_examples.get("greyscale", [])[:3])
        elif outside:
            add("error", "label values outside the classes",
                f"values {shown} ({100 * _share(pixels, total):.1f} % of pixels) are neither "
                f"a class id 0..{num_classes - 1} nor the ignore label {ignore}; the loss "
                "would index past the last class (tensorflow/models#3739)",
                f"map them to class ids or to {ignore}, or raise num_classes if they are "
                "classes")
    labelled = stats.pixel_counts[:num_classes].sum()
    void_share = _share(stats.pixel_counts[ignore], total)
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
        share = _share(stats.pixel_counts[top], labelled)
        if share > thresholds.dominant_class:
            add("warning", "one class holds most pixels",
                f"class {top} ({info.class_names[top]}) is {100 * share:.1f} % of labelled "
                f"pixels: predicting only it scores {100 * share:.1f} % pixel accuracy "
                "(tensorflow/models#9844)",
                "judge models by mIoU, not pixel accuracy; check that the other classes' "
                "labels were written")
    nearly_void = [i for i, s in zip(stats.ids, stats.void_shares) if s > thresholds.nearly_void]
    if _share(len(nearly_void), stats.images) > thresholds.nearly_void_images:
        add("warning", "images nearly all void",
            f"{len(nearly_void)} of {stats.images} images are over "
            f"{100 * thresholds.nearly_void:.0f} % ignore label",
            "check how void was written (borders only in VOC); such images teach nothing",
            _examples(nearly_void))
    if stats.background_shares:
        nearly_background = [i for i, s in zip(stats.ids, stats.background_shares)
                             if s > thresholds.nearly_background]
        if _share(len(nearly_background), stats.images) > thresholds.nearly_background_images:
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
    if crop_size:
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
    return found


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


def _inferred(stats: SplitStats, ignore_label: int) -> DatasetInfo:
    values = [v for v in np.flatnonzero(stats.pixel_counts) if v != ignore_label]
    count = int(max(values)) + 1 if values else 1
    return DatasetInfo("", [f"class {i}" for i in range(count)], default_colors(count),
                       ignore_label)


def inspect_records(patterns: Sequence[str], output_dir: str,
                    crop_size: tuple[int, int] | None = None, num_classes: int | None = None,
                    ignore_label: int | None = None, samples: int = 24, seed: int = 0,
                    max_examples: int = 0, thresholds: Thresholds = Thresholds(),
                    progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Inspects splits of segmentation records and writes output_dir/index.html.

    Args:
      patterns: One shard glob per split (e.g. records/train-*, records/val-*).
      output_dir: Where index.html, summary.json and pictures/ go.
      crop_size: Training crop (height, width) to compare image sizes with.
      num_classes: Overrides the manifest's (or the inferred) class count.
      ignore_label: Overrides the manifest's ignore label (default 255).
      samples: Examples per split on the contact sheet.
      seed: Seed of the sampling.
      max_examples: Read at most this many examples per split (0: all).
      thresholds: When to warn.
      progress: Show a progress bar per split.
      log: Where the warnings are printed.

    Returns:
      {"page": index.html path, "findings": [Finding], "splits": {name: summary}}.
    """
    os.makedirs(output_dir, exist_ok=True)
    splits, infos, inferred_classes = [], [], []
    for pattern in patterns:
        manifest, manifest_path = records_manifest(pattern)
        info, source = describe(manifest, manifest_path, num_classes, ignore_label)
        total = manifest.get("count", 0) if manifest else 0
        scanning = info or DatasetInfo("", ["class 0"], ignore_label=IGNORE_LABEL
                                       if ignore_label is None else ignore_label)
        stats = scan_split(pattern, scanning, samples, seed, max_examples, progress, total)
        inferred_classes.append(info is None)
        if info is None:
            info = _inferred(stats, scanning.ignore_label)
            source += f" ({info.num_classes} classes: 0..{info.num_classes - 1})"
        splits.append(stats)
        infos.append((info, source))
    found = []
    for stats, (info, source), inferred in zip(splits, infos, inferred_classes):
        found += findings(stats, info, thresholds, crop_size, inferred)
    found += cross_split_findings(splits)
    for finding in found:
        log(finding.line())
    log(f"{len(found)} warnings" if found else "No problems found.")
    summaries = {stats.name: _summary(stats, info, source)
                 for stats, (info, source) in zip(splits, infos)}
    page = _write_page(output_dir, splits, infos, found, crop_size, thresholds)
    with open(os.path.join(output_dir, "summary.json"), "w") as f:
        json.dump({"splits": summaries, "findings": [x.to_dict() for x in found],
                   "thresholds": dataclasses.asdict(thresholds),
                   "crop_size": list(crop_size) if crop_size else None}, f, indent=2)
    log(f"Wrote {page}")
    return {"page": page, "findings": found, "splits": summaries}


def _summary(stats: SplitStats, info: DatasetInfo, source: str) -> dict:
    classes = {name: {"pixels": int(stats.pixel_counts[c]), "images": int(stats.image_counts[c])}
               for c, name in enumerate(info.class_names)}
    sizes = np.asarray(stats.sizes or [(0, 0)])
    return {"pattern": stats.pattern, "files": len(stats.files), "images": stats.images,
            "truncated": stats.truncated, "classes_from": source,
            "dataset": info.to_dict(), "classes": classes,
            "void_pixels": int(stats.pixel_counts[info.ignore_label]),
            "pixels": int(stats.pixel_counts.sum()),
            "other_values": {str(v): int(stats.pixel_counts[v])
                             for v in _other_values(stats, info)},
            "label_png_types": stats.label_types,
            "height": _quantiles(sizes[:, 0]), "width": _quantiles(sizes[:, 1])}


def _quantiles(values) -> dict:
    return {name: int(np.percentile(values, q)) for name, q in
            (("min", 0), ("p10", 10), ("median", 50), ("p90", 90), ("max", 100))}


def _value_names(info: DatasetInfo) -> list[str]:
    """A name for each label value 0..255: the class's, "void", or "value v"."""
    names = [f"value {v}" for v in range(256)]
    names[:info.num_classes] = info.class_names
    names[info.ignore_label] = f"void ({info.ignore_label})"
    return names


def _sample_picture(image: np.ndarray, label: np.ndarray, info: DatasetInfo,
                    height: int = 160) -> np.ndarray:
    """Image and its mask overlay side by side, `height` pixels high."""
    if label.shape != image.shape[:2]:
        label = pages.resized(label, image.shape[1::-1], photo=False)
    blended = overlay(image, label, info.lookup(), background=background_class(info.class_names))
    scale = height / image.shape[0]
    size = (max(1, round(image.shape[1] * scale)), height)
    gap = np.full((height, 4, 3), 255, np.uint8)
    return np.concatenate([pages.resized(image, size, photo=True), gap,
                           pages.resized(blended, size, photo=False)], axis=1)


def _size_plot(sizes: Sequence[tuple[int, int]], crop_size) -> str:
    """Inline SVG scatter of image width (x) against height (y)."""
    side, margin = 220, 36
    sizes = np.asarray(sizes, np.float64)
    top = max(sizes.max() if len(sizes) else 1, max(crop_size) if crop_size else 0) * 1.05
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{side + margin + 10}" '
             f'height="{side + margin}" font-size="10" font-family="sans-serif">',
             f'<rect x="{margin}" y="0" width="{side}" height="{side}" fill="none" '
             'stroke="#999"/>']
    for h, w in sizes[:5000]:
        parts.append(f'<circle cx="{margin + side * w / top:.1f}" '
                     f'cy="{side - side * h / top:.1f}" r="2" fill="#4682b4" '
                     'fill-opacity="0.5"/>')
    if crop_size:
        ch, cw = crop_size
        parts.append(f'<rect x="{margin}" y="{side - side * ch / top:.1f}" '
                     f'width="{side * cw / top:.1f}" height="{side * ch / top:.1f}" '
                     'fill="none" stroke="#d93025" stroke-dasharray="4 2"/>')
    parts.append(f'<text x="{margin + side / 2}" y="{side + 24}" text-anchor="middle">'
                 f'width (0..{top:.0f})</text>')
    parts.append(f'<text x="10" y="{side / 2}" transform="rotate(-90 10 {side / 2})" '
                 f'text-anchor="middle">height</text></svg>')
    return "".join(parts)


def _write_page(output_dir, splits, infos, found, crop_size, thresholds) -> str:
    esc = pages.escape
    body = ["<h1>Records inspection</h1>",
            "<p>" + "<br>".join(f"<b>{esc(s.name)}</b>: {esc(s.pattern)} "
                                f"({len(s.files)} files, {s.images} examples"
                                f"{', first ' + str(s.images) + ' read' if s.truncated else ''})"
                                f" &mdash; {esc(source)}"
                                for s, (_, source) in zip(splits, infos)) + "</p>",
            f'<h2 id="warnings">Warnings ({len(found)})</h2>']
    if not found:
        body.append('<p class="ok">No problems found.</p>')
    for finding in found:
        examples = (f"<br><span class=\"muted\">e.g. {esc(', '.join(finding.examples[:8]))}"
                    "</span>") if finding.examples else ""
        body.append(f'<div class="warning {finding.level}" data-level="{finding.level}">'
                    f"<b>[{esc(finding.split)}] {esc(finding.title)}</b>: {esc(finding.detail)}."
                    f"<br>Fix: {esc(finding.fix)}.{examples}</div>")
    body.append(f'<p class="muted">Thresholds: {esc(dataclasses.asdict(thresholds))}; '
                f"crop {'x'.join(map(str, crop_size)) if crop_size else 'not given'}.</p>")
    for stats, (info, _) in zip(splits, infos):
        body += _split_section(output_dir, stats, info, crop_size)
    return pages.write_page(os.path.join(output_dir, "index.html"), "Records inspection", body)


def _split_section(output_dir, stats: SplitStats, info: DatasetInfo, crop_size) -> list[str]:
    esc = pages.escape
    colours = info.lookup()
    total = stats.pixel_counts.sum()
    labelled = stats.pixel_counts[:info.num_classes].sum()
    void = stats.pixel_counts[info.ignore_label]
    body = [f'<h2 id="split-{esc(stats.name)}">Split {esc(stats.name)}</h2>',
            f"<p>{stats.images} images, {total:,} pixels: {100 * _share(void, total):.2f} % "
            f"void (label {info.ignore_label}). Label PNGs: "
            + esc(", ".join(f"{k} {v}" for k, v in stats.label_types.items())) + ".</p>",
            "<h3>Classes</h3>"]
    rows = []
    values = list(range(info.num_classes)) + _other_values(stats, info)
    for value in values:
        name = info.class_names[value] if value < info.num_classes else f"value {value} (not a class)"
        pixels = int(stats.pixel_counts[value])
        rows.append([f"<td>{value}</td>", f'<td class="name">{pages.swatch(colours[value])}'
                     f"{esc(name)}</td>",
                     f'<td data-split="{esc(stats.name)}" data-class="{esc(name)}" '
                     f'data-pixels="{pixels}">{pixels:,}</td>',
                     f"{100 * _share(pixels, labelled):.2f}" if value < info.num_classes else "-",
                     f"{int(stats.image_counts[value]):,}"])
    body.append('<div style="display: flex; gap: 32px; align-items: flex-start">')
    body.append(pages.table(["id", "class", "pixels", "% of labelled", "images"], rows))
    shares = [100 * _share(stats.pixel_counts[c], labelled) for c in range(info.num_classes)]
    image_shares = [100 * _share(stats.image_counts[c], stats.images)
                    for c in range(info.num_classes)]
    body.append(pages.bar_chart(list(info.class_names), [
        ("% of labelled pixels", shares, pages.SERIES_COLOURS[0]),
        ("% of images", image_shares, pages.SERIES_COLOURS[1])], maximum=100, unit="%"))
    body.append("</div>")
    sizes = np.asarray(stats.sizes or [(0, 0)])
    body.append("<h3>Image sizes</h3>")
    body.append('<div style="display: flex; gap: 32px; align-items: flex-start">')
    body.append(pages.table(["", "min", "p10", "median", "p90", "max"], [
        [f'<td class="name">{axis}</td>'] + [str(v) for v in _quantiles(sizes[:, k]).values()]
        for k, axis in enumerate(("height", "width"))]))
    body.append(_size_plot(stats.sizes, crop_size))
    body.append("</div>")
    body.append(f"<h3>Sampled examples ({len(stats.samples)} of {stats.images}, "
                "image | labels over it)</h3>")
    body.append('<div class="sheet">')
    for index, example_id, image, label in stats.samples:
        src = pages.save_picture(output_dir, f"{stats.name}_{index:06d}.png",
                                 _sample_picture(image, label, info))
        present = [int(v) for v in np.unique(label)]
        body.append(f"<figure>{pages.img(src, example_id)}<figcaption><b>{esc(example_id)}"
                    f"</b> {image.shape[0]}x{image.shape[1]}<br>"
                    f"{pages.legend(present, _value_names(info), colours)}</figcaption></figure>")
    body.append("</div>")
    return body

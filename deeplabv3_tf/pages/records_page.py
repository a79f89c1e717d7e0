"""The records page: what `data.inspection` finds in records, shown (index.html),
summarised (summary.json) and printed (`tools/inspect_records.py`)."""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Sequence

import numpy as np

from deeplabv3_tf.core import html as pages
from deeplabv3_tf.core.files import write_json_atomically
from deeplabv3_tf.data.dataset import IGNORE_LABEL, DatasetInfo, background_class
from deeplabv3_tf.data.inspection import (
    SplitStats, Thresholds, cross_split_findings, describe, findings, inferred_classes_of,
    other_values, scan_split, share_of)
from deeplabv3_tf.data.schema import records_manifest
from deeplabv3_tf.data.visualize import overlay


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
            info = inferred_classes_of(stats, scanning.ignore_label)
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
    write_json_atomically(os.path.join(output_dir, "summary.json"), {
        "splits": summaries, "findings": [x.to_dict() for x in found],
        "thresholds": dataclasses.asdict(thresholds),
        "crop_size": list(crop_size) if crop_size else None})
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
                             for v in other_values(stats, info)},
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
            f"<p>{stats.images} images, {total:,} pixels: {100 * share_of(void, total):.2f} % "
            f"void (label {info.ignore_label}). Label PNGs: "
            + esc(", ".join(f"{k} {v}" for k, v in stats.label_types.items())) + ".</p>",
            "<h3>Classes</h3>"]
    rows = []
    values = list(range(info.num_classes)) + other_values(stats, info)
    for value in values:
        name = info.class_names[value] if value < info.num_classes else f"value {value} (not a class)"
        pixels = int(stats.pixel_counts[value])
        rows.append([f"<td>{value}</td>", f'<td class="name">{pages.swatch(colours[value])}'
                     f"{esc(name)}</td>",
                     f'<td data-split="{esc(stats.name)}" data-class="{esc(name)}" '
                     f'data-pixels="{pixels}">{pixels:,}</td>',
                     f"{100 * share_of(pixels, labelled):.2f}" if value < info.num_classes else "-",
                     f"{int(stats.image_counts[value]):,}"])
    body.append('<div style="display: flex; gap: 32px; align-items: flex-start">')
    body.append(pages.table(["id", "class", "pixels", "% of labelled", "images"], rows))
    shares = [100 * share_of(stats.pixel_counts[c], labelled) for c in range(info.num_classes)]
    image_shares = [100 * share_of(stats.image_counts[c], stats.images)
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

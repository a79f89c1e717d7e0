"""Self-contained HTML pages: one folder holding the page and its pictures.

The record inspector (`data/inspection.py`) and the evaluation report
(`pages/evaluation_page.py`) write their pages with these helpers. A page opens from
disk in any browser: no script, no server, no network; charts are inline SVG,
pictures are PNG/JPEG files beside the page referenced by relative paths.
Figures a test reads back carry `data-*` attributes (e.g. the IoU cells:
`data-setting`, `data-class`, `data-value`).
"""

from __future__ import annotations

import html
import os
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

from deeplabv3_tf.core.files import write_atomically

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; max-width: 1400px; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 32px; border-bottom: 1px solid #ddd; }
h3 { font-size: 15px; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { padding: 2px 8px; border: 1px solid #ddd; text-align: right; }
th { background: #f4f4f4; } td.name, th.name { text-align: left; }
.warning { background: #fff4e5; border-left: 4px solid #f0a020; padding: 6px 10px; margin: 6px 0; }
.warning.error { background: #fdecea; border-left-color: #d93025; }
.ok { background: #e6f4ea; border-left: 4px solid #34a853; padding: 6px 10px; }
.muted { color: #777; }
.sheet { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; border: 1px solid #ddd; padding: 6px; background: #fafafa; }
figure img { display: block; image-rendering: pixelated; }
figcaption { font-size: 12px; max-width: 520px; }
.swatch { display: inline-block; width: 10px; height: 10px; border: 1px solid #888;
          margin: 0 3px 0 8px; vertical-align: middle; }
.heatmap td { width: 22px; height: 22px; padding: 0; text-align: center; font-size: 10px; }
.heatmap th.col { writing-mode: vertical-rl; transform: rotate(180deg); text-align: left;
                  font-weight: normal; padding: 4px 0; }
.heatmap th.row { text-align: left; font-weight: normal; }
"""


def escape(value) -> str:
    return html.escape(str(value), quote=True)


def document(title: str, body: Iterable[str]) -> str:
    """A whole HTML page."""
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")


def write_page(path: str, title: str, body: Iterable[str]) -> str:
    """Writes the page atomically (a reader never sees half a page)."""
    return write_atomically(path, document(title, body))


def resized(pixels: np.ndarray, size: tuple[int, int], photo: bool) -> np.ndarray:
    """uint8 pixels ([H, W, 3] or a label map [H, W]) resized to (width, height):
    bilinear for photos, nearest neighbour otherwise (label values and mask
    colours stay exact)."""
    image = Image.fromarray(np.asarray(pixels, np.uint8))
    return np.asarray(image.resize(size, Image.BILINEAR if photo else Image.NEAREST))


def save_picture(directory: str, name: str, pixels: np.ndarray) -> str:
    """Saves uint8 [H, W, 3] pixels under directory/pictures/; returns the path
    relative to `directory` for an <img src>. PNG (masks stay exact) unless the
    name ends in .jpg."""
    image = Image.fromarray(np.asarray(pixels, np.uint8))
    os.makedirs(os.path.join(directory, "pictures"), exist_ok=True)
    relative = f"pictures/{name}"
    if name.endswith(".jpg"):
        image.save(os.path.join(directory, relative), quality=90)
    else:
        image.save(os.path.join(directory, relative))
    return relative


def img(src: str, alt: str, width: int | None = None) -> str:
    size = f' width="{width}"' if width else ""
    return f'<img src="{escape(src)}" alt="{escape(alt)}"{size}>'


def swatch(colour: Sequence[int]) -> str:
    r, g, b = (int(v) for v in colour)
    return f'<span class="swatch" style="background: rgb({r}, {g}, {b})"></span>'


def legend(class_ids: Iterable[int], class_names: Sequence[str], colours: np.ndarray) -> str:
    """Colour swatches with names, for the classes given."""
    return "".join(f"{swatch(colours[c])}{escape(class_names[c])}" for c in class_ids)


def table(header: Sequence[str], rows: Iterable[Sequence[str]], attrs: str = "") -> str:
    """An HTML table; header cells are escaped, row cells are HTML (already escaped)."""
    head = "".join(f'<th class="name">{escape(h)}</th>' if i == 0 else f"<th>{escape(h)}</th>"
                   for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(c if c.startswith("<td") else f"<td>{c}</td>" for c in row)
                   + "</tr>" for row in rows)
    return f"<table {attrs}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def bar_chart(labels: Sequence[str], series: Sequence[tuple[str, Sequence[float | None], str]],
              maximum: float = 1.0, unit: str = "", width: int = 420) -> str:
    """Horizontal grouped bars as inline SVG.

    Args:
      labels: One row per label (e.g. class names).
      series: (name, values per label (None: no bar), colour) per bar of a row.
      maximum: The value of a full-width bar.
      unit: Printed after each value ("%" with values in 0..100).
    """
    bar, gap, left, text = 11, 6, 130, 60
    row = bar * len(series) + gap
    height = row * len(labels) + 24
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + text}" '
             f'height="{height}" font-size="11" font-family="sans-serif">']
    for i, label in enumerate(labels):
        y = i * row
        parts.append(f'<text x="{left - 6}" y="{y + row / 2 + 2:.0f}" text-anchor="end">'
                     f"{escape(label)}</text>")
        for j, (_, values, colour) in enumerate(series):
            value = values[i]
            if value is None or np.isnan(value):
                continue
            w = width * max(0.0, min(1.0, value / maximum)) if maximum else 0
            parts.append(f'<rect x="{left}" y="{y + j * bar}" width="{w:.1f}" '
                         f'height="{bar - 1}" fill="{colour}"/>')
            parts.append(f'<text x="{left + w + 3:.1f}" y="{y + j * bar + bar - 2}">'
                         f"{value:.1f}{unit}</text>")
    y = len(labels) * row + 14
    for j, (name, _, colour) in enumerate(series):
        x = left + j * 130
        parts.append(f'<rect x="{x}" y="{y - 9}" width="10" height="10" fill="{colour}"/>'
                     f'<text x="{x + 14}" y="{y}">{escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


SERIES_COLOURS = ("#4682b4", "#e07b39", "#59a14f", "#b07aa1", "#9c755f", "#76b7b2")

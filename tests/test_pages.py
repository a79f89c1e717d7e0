"""The inspector's and the evaluation's pages, opened in a real headless Chromium.

Each page loads without console errors, every picture decodes, and the figures
on the page are those of results.json / summary.json / the CSVs. Without a
Chromium (Debian's chromium package) these tests skip, unless
DEEPLABV3_REQUIRE_BROWSER is set (CI sets it), where they fail.
"""

import csv
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest
from PIL import Image

from deeplabv3_tf.core import html as pages
from deeplabv3_tf.pages.browser import Browser, find_chromium
from tests.helpers import ROOT

if not find_chromium():
    if os.environ.get("DEEPLABV3_REQUIRE_BROWSER"):
        raise RuntimeError("DEEPLABV3_REQUIRE_BROWSER is set but no Chromium is installed "
                           "(apt-get install chromium).")
    pytest.skip("no Chromium installed (apt-get install chromium); the page tests need one",
                allow_module_level=True)


@pytest.fixture(scope="module")
def browser():
    with Browser() as b:
        yield b


def test_a_closed_browser_leaves_nothing_in_the_temp_directory():
    def chromium_entries():
        return {name for name in os.listdir(tempfile.gettempdir())
                if name.startswith(("org.chromium.Chromium.", "deeplabv3_chromium_"))}

    before = chromium_entries()
    with Browser() as b:
        assert b.evaluate("6 * 7") == 42
        assert chromium_entries() - before  # its profile, while it runs
    assert chromium_entries() - before == set()


def _cells(browser, selector, *attributes):
    names = ", ".join(f"{a!r}: c.getAttribute('data-{a}')" for a in attributes)
    return browser.evaluate(f"Array.from(document.querySelectorAll({selector!r})).map(c => "
                            f"({{{names}, text: c.textContent.trim()}}))")


def _assert_loads(loaded):
    assert loaded["errors"] == []
    assert loaded["images"], "no pictures on the page"
    broken = [i["src"] for i in loaded["images"] if i["natural_width"] <= 0]
    assert broken == []


def test_the_check_catches_a_broken_page(browser, tmp_path):
    src = pages.save_picture(str(tmp_path), "a.png", np.zeros((4, 6, 3), np.uint8))
    pages.write_page(str(tmp_path / "bad.html"), "bad", [
        pages.img(src, "a"), pages.img("pictures/gone.png", "gone"),
        "<script>console.error('broken'); notDefined();</script>"])
    loaded = browser.load(str(tmp_path / "bad.html"))
    assert [i["natural_width"] for i in loaded["images"]] == [6, 0]
    assert len(loaded["errors"]) == 3, loaded["errors"]
    assert any("gone.png" in e for e in loaded["errors"])


def _percent(value):
    return "n/a" if value is None else f"{100 * value:.2f}"


def test_evaluation_report(browser, trained_run, tmp_path):
    from deeplabv3_tf.evaluation.evaluate import evaluate_run

    out = tmp_path / "eval"
    evaluate_run(trained_run["run_dir"], str(out), progress=False, examples=2,
                 log=lambda _: None)
    results = json.load(open(out / "results.json"))
    assert list(results) == ["os16", "os8", "os8_ms_flip"]
    loaded = browser.load(str(out / "report.html"))
    _assert_loads(loaded)
    # 6 val images: per setting 2 worst and 2 best, 4 pictures each.
    assert len(loaded["images"]) == 3 * 4 * 4
    summary = _cells(browser, "[data-setting][data-key]:not([data-class]):not([data-band])",
                     "setting", "key")
    assert len(summary) == 3 * 3
    for cell in summary:
        value = results[cell["setting"]][cell["key"]]
        expected = ("-" if value is None else f"{value:.2f}") if cell["key"] == "paper_miou" \
            else _percent(value)
        assert cell["text"] == expected, cell
    bands = _cells(browser, "[data-key=trimap]", "setting", "band")
    assert len(bands) == 3 * 3
    for cell in bands:
        assert cell["text"] == _percent(results[cell["setting"]]["trimap"][cell["band"]]["miou"])
    ious = _cells(browser, "[data-key=iou]", "setting", "class")
    assert len(ious) == 3 * 21
    for cell in ious:
        assert cell["text"] == _percent(results[cell["setting"]]["iou"][cell["class"]]), cell
    # The heatmap's counts are the confusion matrix CSV's.
    counts = _cells(browser, "td[data-count]", "setting", "row", "col", "count")
    for setting in results:
        with open(results[setting]["files"]["confusion_matrix"]) as f:
            matrix = np.array([row[1:] for row in list(csv.reader(f))[1:]], np.int64)
        shown = np.zeros_like(matrix)
        for c in counts:
            if c["setting"] == setting:
                shown[int(c["row"]), int(c["col"])] = int(c["count"])
        np.testing.assert_array_equal(shown, matrix)
    # Worst and best: the per-image CSV's lowest and highest, in order.
    figures = _cells(browser, "figure[data-kind]", "setting", "kind", "image", "iou")
    for setting in results:
        with open(results[setting]["files"]["per_image_iou"]) as f:
            scores = sorted((float(r["iou"]), r["image"]) for r in csv.DictReader(f))
        worst = [(float(c["iou"]), c["image"]) for c in figures
                 if c["setting"] == setting and c["kind"] == "worst"]
        best = [(float(c["iou"]), c["image"]) for c in figures
                if c["setting"] == setting and c["kind"] == "best"]
        assert [i for _, i in worst] == [i for _, i in scores[:2]]
        assert [i for _, i in best] == [i for _, i in scores[::-1][:2]]
        assert np.allclose([s for s, _ in worst], [s for s, _ in scores[:2]], atol=1e-6)


def test_inspector_page_and_screenshot(browser, trained_run, tmp_path):
    out = tmp_path / "inspect"
    run = subprocess.run(
        [sys.executable, "tools/inspect_records.py", f"{trained_run['records_dir']}/train-*",
         f"{trained_run['records_dir']}/val-*", f"--output_dir={out}", "--samples=5",
         "--crop_size=65x65", "--noprogress"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert f"Wrote {out}/index.html" in run.stdout
    summary = json.load(open(out / "summary.json"))
    loaded = browser.load(str(out / "index.html"))
    _assert_loads(loaded)
    assert len(loaded["images"]) == 5 + 5
    cells = _cells(browser, "td[data-pixels]", "split", "class", "pixels")
    assert len(cells) == 2 * 21
    for cell in cells:
        assert int(cell["pixels"]) == summary["splits"][cell["split"]]["classes"][cell["class"]][
            "pixels"]
        assert cell["text"] == f"{int(cell['pixels']):,}"
    warnings = browser.evaluate("document.querySelectorAll('.warning').length")
    assert warnings == len(summary["findings"])
    # The README's screenshots are taken by this command.
    shot = tmp_path / "shot.png"
    done = subprocess.run([sys.executable, "tools/screenshot.py", str(out / "index.html"),
                           f"--output={shot}", "--max_height=1500"], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert Image.open(shot).size == (1280, 1500)

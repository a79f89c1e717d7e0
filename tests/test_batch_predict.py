"""Batch prediction on Beam (RunInference over the export's encoded_image signature)
against tools/predict.py: the same masks; rejects are lines, not failures."""

import importlib.util
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

if importlib.util.find_spec("apache_beam") is None and not os.environ.get("DEEPLABV3_REQUIRE_BEAM"):
    pytest.skip("pip install -r requirements-beam.txt", allow_module_level=True)

from deeplabv3_tf.data.tfrecord_builders.beam_shards import BeamEngine  # noqa: E402
from deeplabv3_tf.serving.batch_predict import batch_predict  # noqa: E402
from deeplabv3_tf.serving.export import ExportOptions, export_saved_model  # noqa: E402
from deeplabv3_tf.serving.predict import predict_files  # noqa: E402

pytestmark = pytest.mark.slow


def test_masks_equal_predict_and_rejects_are_lines(trained_run, tmp_path):
    export = export_saved_model(trained_run["run_dir"], str(tmp_path / "export"),
                                ExportOptions(max_pixels=120 * 120), log=lambda _: None)
    images = tmp_path / "images"
    images.mkdir()
    jpegs = os.path.join(trained_run["voc_dir"], "JPEGImages")
    names = sorted(os.listdir(jpegs))[:7]
    for name in names:
        shutil.copy(os.path.join(jpegs, name), images / name)
    (images / "broken.jpg").write_bytes(b"not an image")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (130, 121, 3), np.uint8)).save(images / "large.png")
    summary = batch_predict(export, [str(images / "*")], str(tmp_path / "beam"),
                            BeamEngine("DirectRunner", ("--direct_num_workers=2",)),
                            batch_size=3, log=lambda _: None)
    assert summary["images"] == 9 and summary["predicted"] == 7 and summary["rejected"] == 2
    local = predict_files(export, [str(images)], str(tmp_path / "local"), max_pixels=120 * 120,
                          log=lambda _: None)
    with open(summary["predictions"]) as f:
        lines = [json.loads(line) for line in f]
    assert [line["path"] for line in lines] == sorted(str(images / n) for n in names)
    done = {r["path"]: r for r in local if "outputs" in r}
    for line in lines:
        expected = done[line["path"]]["outputs"]
        for key in ("mask", "labels"):
            np.testing.assert_array_equal(np.asarray(Image.open(line["outputs"][key])),
                                          np.asarray(Image.open(expected[key])))
        labels = np.asarray(Image.open(line["outputs"]["labels"]))
        ids, counts = np.unique(labels, return_counts=True)
        assert sum(line["classes"].values()) == labels.size == line["height"] * line["width"]
        assert sorted(line["classes"].values()) == sorted(counts.tolist())
    with open(summary["rejects"]) as f:
        rejects = {r["path"]: r["reason"] for r in map(json.loads, f)}
    skipped = {r["path"]: r["skipped"] for r in local if "skipped" in r}
    assert rejects == skipped
    assert "over the budget of 14400 pixels" in rejects[str(images / "large.png")]


def test_tool_runs_and_names_a_missing_export(trained_run, tmp_path):
    import subprocess
    import sys

    from tests.helpers import ROOT

    export = export_saved_model(trained_run["run_dir"], str(tmp_path / "export"),
                                log=lambda _: None)
    jpegs = os.path.join(trained_run["voc_dir"], "JPEGImages")

    def run(*flags):
        return subprocess.run([sys.executable, "tools/batch_predict.py", *flags], cwd=ROOT,
                              capture_output=True, text=True, timeout=600)

    done = run(f"--saved_model={export}", f"--input={jpegs}/*.jpg", "--batch_size=4",
               f"--output_dir={tmp_path / 'out'}", "--beam_pipeline_options=direct_num_workers=2")
    assert done.returncode == 0, done.stderr[-2000:]
    with open(tmp_path / "out" / "predictions.jsonl") as f:
        assert len(f.readlines()) == len(os.listdir(jpegs))
    missing = run(f"--saved_model={tmp_path / 'nothing'}", f"--input={jpegs}",
                  f"--output_dir={tmp_path / 'out2'}")
    assert missing.returncode == 1 and "No SavedModel in" in missing.stderr

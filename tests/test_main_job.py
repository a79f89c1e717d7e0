"""The README's main job, shortened: every stage runs and learning shows in the mIoU."""

import json
import os

import pytest
from PIL import Image

from deeplabv3_tf.apps.main_job import MainJobConfig, run_main_job, train_assignments


def test_main_job_end_to_end(tmp_path, monkeypatch):
    # Away from the repository: the job calls the library, not tools/ by path.
    monkeypatch.chdir(tmp_path)
    lines = []
    summary = run_main_job(MainJobConfig(workdir=str(tmp_path / "demo"), num_train=64,
                                         num_val=16, steps=300), log=lines.append)
    text = "\n".join(lines)
    for command in ("tools/build_tfrecords.py voc", "tools/inspect_records.py",
                    "tools/train.py", "tools/evaluate.py",
                    "tools/export.py", "tools/predict.py"):
        assert f"$ python {command}" in text
    evaluation = summary["evaluation"]
    assert list(evaluation) == ["os16", "os8", "os8_ms_flip"]
    # The untrained model scores 0.002 here (seed 0); 300 steps
    # of the tiny recipe reached 0.39 (OS16), 0.45 (OS8), 0.46 (OS8 + MS + flip).
    for name in ("os16", "os8", "os8_ms_flip"):
        assert evaluation[name]["miou"] > 0.30, evaluation
    served = summary["served"]
    assert served["images"] == 16 and served["agreement"] > 0.999
    assert abs(served["miou"] - evaluation["os16"]["miou"]) < 0.01
    artefacts = summary["artefacts"]
    assert os.path.exists(os.path.join(artefacts["saved_model"], "saved_model.pb"))
    assert len(os.listdir(artefacts["overlays"])) == 3 * 8
    assert Image.open(artefacts["chart"]).size[0] > 400
    # Both pages, linked from the summary (their content is checked in tests/test_pages.py).
    assert "inspect_records.py" in text and "--crop_size=" in text
    for page in ("records_page", "evaluation_page"):
        assert artefacts[page].endswith(".html") and os.path.getsize(artefacts[page]) > 1000
        assert artefacts[page] in text
    assert os.listdir(os.path.join(artefacts["run"], "train"))
    assert set(summary["seconds"]) == {"dataset", "records", "training", "evaluation",
                                       "export_and_serving"}
    with open(tmp_path / "demo" / "summary.json") as f:
        assert json.load(f)["evaluation"]["os8"]["output_stride"] == 8
    assert "== summary ==" in text and "saved_model" in text


def test_train_flags_become_assignments():
    assert train_assignments(("--set=train.batch_size=4", "--steps", "10",
                              "--set", "data.flip=False", "--init=runs/x",
                              "--deterministic_ops")) == [
        "train.batch_size=4", "train.steps=10", "data.flip=False", "train.init=runs/x"]
    with pytest.raises(ValueError, match="'--seed=3': the main job passes on"):
        train_assignments(("--seed=3",))

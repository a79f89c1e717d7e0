"""The command-line tools, run as users run them."""

import os
import subprocess
import sys

from deeplabv3_tf.synthetic import write_voc_dataset
from tests.helpers import ROOT



def _run(*args):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_build_tfrecords_voc_and_error_exit(tmp_path):
    info = write_voc_dataset(str(tmp_path / "data"), num_train=3, num_val=2, with_sbd=False)
    out = tmp_path / "records"
    result = _run("tools/build_tfrecords.py", "voc", f"--voc_dir={info['voc_dir']}",
                  f"--output_dir={out}", "--num_workers=2", "--num_shards=2")
    assert result.returncode == 0, result.stderr
    assert "train: 3 examples, 2 shards" in result.stdout
    assert "[val]" in result.stderr  # progress bar
    assert sorted(p.name for p in out.glob("val-*")) == [
        "val-00000-of-00002.tfrecord", "val-00001-of-00002.tfrecord"]
    assert (out / "trainval.manifest.json").exists()

    os.remove(os.path.join(info["voc_dir"], "SegmentationClass", f"{info['train'][0]}.png"))
    failed = _run("tools/build_tfrecords.py", "voc", f"--voc_dir={info['voc_dir']}",
                  f"--output_dir={tmp_path / 'bad'}", "--splits=train")
    assert failed.returncode == 1
    assert f"{info['train'][0]}.png: file not found" in failed.stderr
    assert "Traceback" not in failed.stderr

    usage = _run("tools/build_tfrecords.py", "folder", f"--output_dir={out}")
    assert usage.returncode != 0 and "--images_dir" in usage.stderr

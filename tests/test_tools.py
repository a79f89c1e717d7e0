"""The command-line tools, run as users run them."""

import os

from deeplabv3_tf.apps.cli import startup_lines_to_show
from deeplabv3_tf.data.synthetic import write_voc_dataset
from tests.helpers import run_tool


# What TensorFlow 2.21 printed at start-up on a CPU machine, and a real error.
STARTUP = """\
WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
I0000 00:00:1796161730.621152    3929 port.cc:153] oneDNN custom operations are on. You may see slightly different numerical results due to floating-point round-off errors from different computation orders. To turn them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`.
I0000 00:00:1796161730.621561    3929 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.
I0000 00:00:1796161730.700055    3929 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use available CPU instructions in performance-critical operations.
To enable the following instructions: AVX2 AVX512F AVX512_VNNI AVX512_BF16 FMA, in other operations, rebuild TensorFlow with the appropriate compiler flags.
E0000 00:00:1796161736.621444    3934 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)
E0000 00:00:1796161736.700000    3934 some_kernel.cc:12] Something real went wrong
"""


def test_startup_notices_are_dropped_and_errors_kept():
    assert startup_lines_to_show(STARTUP) == [STARTUP.splitlines()[-1]]
    # With a CUDA driver present, a failing cuInit is a real error.
    with_driver = "\n".join(l for l in STARTUP.splitlines() if "Could not find cuda" not in l)
    assert [l for l in startup_lines_to_show(with_driver) if "cuInit" in l]


def test_tools_print_no_startup_notices_unless_asked(tmp_path):
    missing = str(tmp_path / "absent")
    quiet = run_tool("tools/export.py", f"--model_dir={missing}", f"--export_dir={tmp_path}")
    assert quiet.returncode == 1
    # One line: the error, nothing from TensorFlow's start-up.
    (line,) = quiet.stderr.strip().splitlines()
    assert line.startswith("error: ") and missing in line
    loud = run_tool("tools/export.py", f"--model_dir={missing}", f"--export_dir={tmp_path}",
                env=dict(os.environ, DEEPLABV3_TF_LOGS="all"))
    assert loud.returncode == 1
    assert "oneDNN custom operations are on" in loud.stderr or "cpu_feature_guard" in loud.stderr


def test_build_tfrecords_voc_and_error_exit(tmp_path):
    info = write_voc_dataset(str(tmp_path / "data"), num_train=3, num_val=2, with_sbd=False)
    out = tmp_path / "records"
    result = run_tool("tools/build_tfrecords.py", "voc", f"--voc_dir={info['voc_dir']}",
                  f"--output_dir={out}", "--num_workers=2", "--num_shards=2")
    assert result.returncode == 0, result.stderr
    assert "train: 3 examples, 2 shards" in result.stdout
    assert "[val]" in result.stderr  # progress bar
    assert sorted(p.name for p in out.glob("val-*")) == [
        "val-00000-of-00002.tfrecord", "val-00001-of-00002.tfrecord"]
    assert (out / "trainval.manifest.json").exists()

    os.remove(os.path.join(info["voc_dir"], "SegmentationClass", f"{info['train'][0]}.png"))
    failed = run_tool("tools/build_tfrecords.py", "voc", f"--voc_dir={info['voc_dir']}",
                  f"--output_dir={tmp_path / 'bad'}", "--splits=train")
    assert failed.returncode == 1
    assert f"{info['train'][0]}.png: file not found" in failed.stderr
    assert "Traceback" not in failed.stderr

    usage = run_tool("tools/build_tfrecords.py", "folder", f"--output_dir={out}")
    assert usage.returncode != 0 and "--images_dir" in usage.stderr

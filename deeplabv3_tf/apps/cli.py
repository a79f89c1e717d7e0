"""What the command-line tools share: a quiet TensorFlow start, and expected
failures that end in one line, not a traceback."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from typing import Callable, Iterator

# Errors that describe bad input (a file, a value); anything else is a bug and
# keeps its traceback.
USER_ERRORS = (FileNotFoundError, FileExistsError, ValueError)

# Set to "all" to see everything TensorFlow's C++ runtime prints at start-up.
LOGS_ENV = "DEEPLABV3_TF_LOGS"

# What TensorFlow 2.21's C++ runtime prints at every start on a CPU machine,
# before absl logging is initialised (so TF_CPP_MIN_LOG_LEVEL does not remove
# it): notices, not problems. Anything else it prints is passed through.
STARTUP_NOTICES = tuple(re.compile(p) for p in (
    r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$",
    r"\] oneDNN custom operations are on\.",
    r"\] Could not find cuda drivers on your machine, GPU will not be used\.$",
    r"\] This TensorFlow binary is optimized to use available CPU instructions",
    r"^To enable the following instructions: .* rebuild TensorFlow with the appropriate",
    r"\] Unable to register cu(DNN|FFT|BLAS) factory",
    r"\] TF-TRT Warning: Could not find TensorRT",
))
# Printed at the first op where there is no CUDA driver at all: a notice only
# when the "Could not find cuda drivers" line came first.
NO_DRIVER_CUINIT = re.compile(r"\] failed call to cuInit: ")


# What LiteRT's converter and interpreter print on every use, straight to file
# descriptor 2: notices, not problems.
LITERT_NOTICES = tuple(re.compile(p) for p in (
    r"^INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.$",
    r"^fully_quantize: \d+, inference_type: \d+, input_inference_type: ",
))


@contextlib.contextmanager
def filtered_stderr(lines_to_show: Callable[[str], list[str]]) -> Iterator[None]:
    """Captures what is written to file descriptor 2 (C++ code included) while
    the block runs, then writes to stderr the lines `lines_to_show` keeps.
    With DEEPLABV3_TF_LOGS=all nothing is captured."""
    if os.environ.get(LOGS_ENV) == "all":
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = lines_to_show(captured.read().decode("utf-8", "replace"))
            if kept:
                sys.stderr.write("\n".join(kept) + "\n")
                sys.stderr.flush()


def without_notices(notices) -> Callable[[str], list[str]]:
    """A `filtered_stderr` filter that drops lines matching any of `notices`."""
    return lambda text: [line for line in text.splitlines()
                         if not any(p.search(line) for p in notices)]


def startup_lines_to_show(text: str) -> list[str]:
    """The lines of TensorFlow's start-up output that are not routine notices."""
    lines = text.splitlines()
    no_driver = any(STARTUP_NOTICES[2].search(line) for line in lines)
    return [line for line in lines
            if not any(p.search(line) for p in STARTUP_NOTICES)
            and not (no_driver and NO_DRIVER_CUINIT.search(line))]


def start_tensorflow() -> None:
    """Imports TensorFlow and initialises its devices without the start-up notices.

    TensorFlow's C++ runtime writes its notices (oneDNN, CUDA probing, CPU
    features) straight to file descriptor 2 while it is imported. Here that
    descriptor points at a temporary file for the import and the device
    initialisation only; then every line that is not one of
    `STARTUP_NOTICES` (a real error, say) is written to stderr. With
    DEEPLABV3_TF_LOGS=all, nothing is hidden. Call it first in a tool, before
    anything imports TensorFlow; it does nothing if TensorFlow is already in.

    Later C++ messages are shown from errors up: TF_CPP_MIN_LOG_LEVEL
    defaults to 2 (errors and fatal errors; a value the user set is kept),
    which hides notices such as "TFRecordDataset `buffer_size` is unspecified"
    and grappler's type-inference warnings about its own rewrites.
    """
    if os.environ.get(LOGS_ENV) == "all" or "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with filtered_stderr(startup_lines_to_show):
        import tensorflow as tf

        tf.config.list_logical_devices()  # the first device initialisation


def run_reporting_errors(fn: Callable[[], object], extra: tuple = ()) -> int:
    """Runs `fn`; returns 0, or prints `error: <message>` to stderr and returns 1.

    Args:
      fn: The work.
      extra: More exception types to report this way.
    """
    try:
        fn()
    except USER_ERRORS + tuple(extra) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0

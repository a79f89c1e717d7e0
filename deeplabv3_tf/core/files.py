"""Writing files and directories so that no reader ever sees half of one.

Everything the package writes for others to read (shards, manifests, pages,
LiteRT models, run directories) is written under a temporary name in the same
directory and renamed into place: a rename within a file system is atomic, so
a crash, a kill or a full disk leaves either the old file or the new one, and
at worst a temporary that the next run removes or overwrites.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from typing import Any, Iterator

import tensorflow as tf


@contextlib.contextmanager
def atomic_path(path: str, suffix: str | None = None) -> Iterator[str]:
    """Yields a temporary path to write; renames it to `path` if the block succeeds.

    Args:
      path: The final file.
      suffix: The temporary is `path + suffix` (a name other tools can
        recognise as unfinished, e.g. ".incomplete"); None makes a unique
        hidden name in the same directory.

    On an exception the temporary is removed and the exception goes on;
    `path` is untouched.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    if suffix is None:
        handle, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.")
        os.close(handle)
    else:
        tmp = path + suffix
    try:
        yield tmp
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    os.replace(tmp, path)


def write_atomically(path: str, data: bytes | str, suffix: str | None = None) -> str:
    """Writes `data` (text as UTF-8) to `path` through `atomic_path`; returns `path`."""
    with atomic_path(path, suffix) as tmp:
        with open(tmp, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def write_json_atomically(path: str, value: Any, suffix: str | None = None) -> str:
    """`value` as indented JSON with a final newline, through `atomic_path`."""
    return write_atomically(path, json.dumps(value, indent=2) + "\n", suffix)


@contextlib.contextmanager
def staged_directory(path: str) -> Iterator[str]:
    """Yields an empty staging directory beside `path`; it replaces `path` if the
    block succeeds and is removed if it fails.

    The staging directory is a sibling (same file system) with a hidden name,
    so a half-written directory never has the final name.
    """
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(path)}.staging-")
    try:
        yield staging
        if os.path.exists(path):
            shutil.rmtree(path)
        os.replace(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def read_json(path: str, what: str):
    """Parses a JSON file; a missing or malformed file is an error naming it.

    Args:
      path: The file.
      what: What the file is, for the message ("COCO annotations").
    """
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    with tf.io.gfile.GFile(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None

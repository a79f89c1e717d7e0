"""The one shard writer every builder writes through.

`write_split` turns a list of tasks (one per example) into
`<split>-%05d-of-%05d.tfrecord` shards plus `<split>.manifest.json`:

- Examples are encoded by spawned worker processes (started once per process,
  reused by every split); results are consumed in task order, so the bytes
  written do not depend on the number of workers.
- Each shard is written under a temporary name and renamed when complete, so a
  killed build never leaves a shard that looks complete. Completed shards are
  recorded in `.<split>.progress.json`; rerunning the same build skips them
  (after checking their checksum) and finishes the job. The manifest is
  written last.
- An example that cannot be written raises `InvalidExampleError` naming the
  file, or, with `skip_invalid`, is skipped and listed in the manifest.
"""

from __future__ import annotations

import atexit
import collections
import concurrent.futures
import concurrent.futures.process
import dataclasses
import glob
import hashlib
import json
import math
import multiprocessing
import os
import threading
import time
from typing import Any, Callable, Sequence

import numpy as np
import tensorflow as tf

from deeplabv3_tf.core.checksum import file_sha256
from deeplabv3_tf.core.files import atomic_path, write_json_atomically
from deeplabv3_tf.data.dataset import DatasetInfo
from deeplabv3_tf.data.images import InvalidExampleError
from deeplabv3_tf.data.schema import MANIFEST_NAME, SHARD_PATTERN
from deeplabv3_tf.core.progress import ProgressBar

PROGRESS_NAME = ".{split}.progress.json"
TEMP_SUFFIX = ".incomplete"


@dataclasses.dataclass(frozen=True)
class Task:
    """One example to encode.

    Attributes:
      example_id: Unique id within the split (file stem).
      sources: Files the example is read from; they identify the task.
      payload: Picklable builder-specific data for the encode function.
    """

    example_id: str
    sources: tuple[str, ...]
    payload: Any = None


@dataclasses.dataclass(frozen=True)
class Encoded:
    """A serialised tf.Example and its per-class statistics (pixels or images)."""

    serialized: bytes
    class_counts: np.ndarray


class WorkerDiedError(RuntimeError):
    """A worker process encoding examples died; complete shards are kept for a rerun."""


class Filtered(Exception):
    """Raised by an encode function for an example left out by design (not an error)."""


@dataclasses.dataclass(frozen=True)
class SplitSpec:
    """What a manifest says about a split besides its shards.

    Attributes:
      num_classes: Classes of the labels.
      source: JSON-able description of where the data came from (format, paths,
        options); it is part of the build fingerprint.
      stats_name: Manifest key of the per-class counts ("class_pixel_counts"
        or "class_image_counts").
      ignore_label: Label value that marks void pixels, or None.
      class_names: Optional class names, index = class id.
      origin: Where the split's list came from, for error messages.
      dataset: What the labels mean (names, colours, the dataset's own ids),
        written into the manifest as "dataset"; its names are the manifest's
        class_names.
    """

    num_classes: int
    source: dict
    stats_name: str = "class_pixel_counts"
    ignore_label: int | None = None
    class_names: tuple[str, ...] | None = None
    origin: str = ""
    dataset: DatasetInfo | None = None

    def __post_init__(self):
        if self.dataset is not None:
            if self.dataset.num_classes != self.num_classes:
                raise ValueError(f"{self.dataset.num_classes} class names for "
                                 f"{self.num_classes} classes.")
            object.__setattr__(self, "class_names", self.dataset.class_names)


def default_num_shards(count: int) -> int:
    """About 1000 examples per shard, and at least 4 shards for parallel reads."""
    return max(math.ceil(count / 1000), min(count, 4), 1)


_EXECUTORS: dict[int, concurrent.futures.ProcessPoolExecutor] = {}


def _executor(num_workers: int) -> concurrent.futures.ProcessPoolExecutor:
    """Worker processes, started once per process and reused by every split.

    Workers are spawned, not forked: a fork of a process whose TensorFlow
    runtime has started (threads holding locks) can deadlock in the child.
    An executor, not a `multiprocessing.Pool`: a worker that dies (killed, out
    of memory) breaks it with an error where a Pool would wait forever for the
    lost result, and stopping early cancels queued work instead of
    terminating workers mid-task.
    """
    if num_workers not in _EXECUTORS:
        _EXECUTORS[num_workers] = concurrent.futures.ProcessPoolExecutor(
            num_workers, mp_context=multiprocessing.get_context("spawn"),
            initializer=_exit_with_parent, initargs=(os.getpid(),))
    return _EXECUTORS[num_workers]


def _exit_with_parent(parent_pid: int) -> None:
    """Ends this worker once the process that started it is gone.

    A worker waits on a queue it also holds open, so it would outlive a parent
    killed with SIGKILL (or by the out-of-memory killer), holding its memory.
    """
    def watch():
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _discard_executor(num_workers: int, wait: bool = False) -> None:
    executor = _EXECUTORS.pop(num_workers, None)
    if executor is not None:
        executor.shutdown(wait=wait, cancel_futures=True)


@atexit.register
def _shutdown_executors() -> None:
    for num_workers in list(_EXECUTORS):
        _discard_executor(num_workers, wait=True)


def _run_chunk(encode: Callable[[Task], Encoded], tasks: Sequence[Task]) -> list:
    return [run_encode(encode, task) for task in tasks]


class _Encoder:
    """Results of `encode` over `work`, in order, from worker processes.

    At most `2 * num_workers` chunks are queued or running at a time, so results
    never pile up in memory ahead of the writer. `close()` cancels what is
    queued; a running chunk finishes (one chunk of examples) and is dropped.
    """

    def __init__(self, encode, work: Sequence[Task], num_workers: int):
        self._num_workers = num_workers
        self._executor = _executor(num_workers)
        self._encode = encode
        size = max(1, min(16, len(work) // (4 * num_workers)))
        self._chunks = iter([work[i:i + size] for i in range(0, len(work), size)])
        self._queued: collections.deque = collections.deque()
        self._results: collections.deque = collections.deque()
        for _ in range(2 * num_workers):
            self._submit()

    def _submit(self) -> None:
        chunk = next(self._chunks, None)
        if chunk is not None:
            future = self._executor.submit(_run_chunk, self._encode, chunk)
            self._queued.append((future, chunk))

    def __iter__(self):
        return self

    def __next__(self):
        if not self._results:
            if not self._queued:
                raise StopIteration
            future, chunk = self._queued.popleft()
            try:
                self._results.extend(future.result())
            except concurrent.futures.process.BrokenProcessPool as e:
                _discard_executor(self._num_workers)
                raise WorkerDiedError(
                    "A record-encoding worker process died (killed, or out of memory?) "
                    f"while the build was at example {chunk[0].example_id!r}. Rerun the "
                    "same command to resume from the last complete shard; --num_workers 1 "
                    "encodes in this process, where a crash shows its cause.") from e
            self._submit()
        return self._results.popleft()

    def close(self) -> None:
        for future, _ in self._queued:
            future.cancel()
        self._queued.clear()


def run_encode(encode: Callable[[Task], Encoded], task: Task):
    try:
        return "ok", encode(task)
    except Filtered as e:
        return "filtered", str(e)
    except InvalidExampleError as e:
        return "error", str(e)


def _write_json(path: str, value) -> None:
    write_json_atomically(path, value, suffix=TEMP_SUFFIX)


def dedupe_tasks(tasks: Sequence[Task], spec: SplitSpec, split: str,
            skip_invalid: bool) -> tuple[list[Task], list[dict]]:
    seen, unique, skipped = set(), [], []
    for task in tasks:
        if task.example_id in seen:
            message = (f"{spec.origin or split}: duplicate id {task.example_id!r} "
                       f"in split {split!r}")
            if not skip_invalid:
                raise InvalidExampleError(message)
            skipped.append({"id": task.example_id, "error": message})
            continue
        seen.add(task.example_id)
        unique.append(task)
    return unique, skipped


def write_split(output_dir: str, split: str, tasks: Sequence[Task],
                encode: Callable[[Task], Encoded], spec: SplitSpec, *,
                num_shards: int | None = None, num_workers: int | None = None,
                skip_invalid: bool = False, progress: bool = True,
                log: Callable[[str], None] = print, engine=None) -> dict:
    """Encodes `tasks` into sharded TFRecords and writes the split's manifest.

    Args:
      output_dir: Directory of the shards and manifest (created if needed).
      split: Split name, the shards' prefix.
      tasks: Examples in output order.
      encode: Picklable function Task -> Encoded; raises InvalidExampleError
        for bad input and Filtered for examples left out by design.
      spec: Classes, source description and statistics name for the manifest.
      num_shards: Number of shards; `default_num_shards(len(tasks))` if None.
      num_workers: Worker processes; all cores if None; 1 runs in-process.
      skip_invalid: Skip (and list) invalid examples instead of failing.
      progress: Show a progress bar on stderr.
      log: Where one-line messages go.
      engine: None builds here (spawned workers); an engine with this
        function's `write_split` builds elsewhere, with the same encode
        function and the same shards (`beam_shards.BeamEngine`).

    Returns:
      The manifest dict (also written to `<split>.manifest.json`).

    Raises:
      InvalidExampleError: the first invalid example, unless skip_invalid.
      WorkerDiedError: a worker process died (killed, out of memory).
      ValueError: the split is empty, or no example was valid.
    """
    if engine is not None:
        return engine.write_split(output_dir, split, tasks, encode, spec, num_shards=num_shards,
                                  num_workers=num_workers, skip_invalid=skip_invalid,
                                  progress=progress, log=log)
    if not tasks:
        raise ValueError(f"Split {split!r} is empty ({spec.origin or 'no examples'}).")
    os.makedirs(output_dir, exist_ok=True)
    tasks, skipped = dedupe_tasks(tasks, spec, split, skip_invalid)
    num_shards = num_shards or default_num_shards(len(tasks))
    num_workers = num_workers or os.cpu_count() or 1
    fingerprint = _fingerprint(split, num_shards, spec, skip_invalid, tasks)
    progress_path = os.path.join(output_dir, PROGRESS_NAME.format(split=split))
    manifest_path = os.path.join(output_dir, MANIFEST_NAME.format(split=split))
    done = _resume_state(output_dir, split, progress_path, fingerprint)
    if os.path.exists(manifest_path):
        os.remove(manifest_path)  # It would describe other shards.

    bounds = [len(tasks) * i // num_shards for i in range(num_shards + 1)]
    pending = [i for i in range(num_shards) if str(i) not in done["shards"]]
    if len(pending) < num_shards:
        log(f"[{split}] resuming: {num_shards - len(pending)} of {num_shards} "
            "shards already complete")
    _encode_pending(output_dir, split, tasks, bounds, pending, done, progress_path, encode,
                    spec, num_workers, skip_invalid, progress)

    manifest = split_manifest(split, done, num_shards, spec, skipped)
    if manifest["count"] == 0:
        raise ValueError(
            f"Split {split!r}: none of {len(tasks)} examples could be written "
            f"(first error: {manifest['skipped'][0]['error'] if manifest['skipped'] else 'all filtered'}).")
    _write_json(manifest_path, manifest)
    os.remove(progress_path)
    log(f"[{split}] wrote {manifest['count']} examples in {num_shards} shards to "
        f"{output_dir} ({manifest['num_skipped']} skipped, "
        f"{manifest['num_filtered']} filtered)")
    return manifest


def _fingerprint(split: str, num_shards: int, spec: SplitSpec, skip_invalid: bool,
                 tasks: Sequence[Task]) -> str:
    """What a build's shards depend on: a resumed build must have the same."""
    return hashlib.sha256(json.dumps(
        [split, num_shards, spec.num_classes, spec.source, skip_invalid,
         [(t.example_id, t.sources) for t in tasks]]).encode()).hexdigest()


def _encode_pending(output_dir, split, tasks, bounds, pending, done, progress_path, encode,
                    spec, num_workers, skip_invalid, progress) -> None:
    """Encodes and writes the shards not yet complete, recording each as it completes."""
    work = [tasks[j] for i in pending for j in range(bounds[i], bounds[i + 1])]
    bar = ProgressBar(len(tasks), desc=f"[{split}]", unit="img",
                      initial=len(tasks) - len(work), enabled=progress)
    if num_workers > 1 and len(work) > 1:
        results = _Encoder(encode, work, num_workers)
    else:
        results = (run_encode(encode, task) for task in work)
    try:
        for shard in pending:
            done["shards"][str(shard)] = _write_shard(
                output_dir, split, shard, len(bounds) - 1,
                tasks[bounds[shard]:bounds[shard + 1]], results, spec,
                skip_invalid, bar)
            _write_json(progress_path, done)
    except BaseException as e:
        if isinstance(results, _Encoder):
            results.close()
            if not isinstance(e, Exception):  # Interrupted: stop the workers too.
                _discard_executor(num_workers)
        raise
    finally:
        bar.close()


def _resume_state(output_dir: str, split: str, progress_path: str,
                  fingerprint: str) -> dict:
    """Completed shards of an interrupted identical build; clears anything else."""
    state = None
    if os.path.exists(progress_path):
        with open(progress_path) as f:
            state = json.load(f)
        if state.get("fingerprint") != fingerprint:
            state = None
    if state is not None:
        # Keep only shards whose bytes are still what was written.
        state["shards"] = {
            k: v for k, v in state["shards"].items()
            if os.path.exists(os.path.join(output_dir, v["file"]))
            and file_sha256(os.path.join(output_dir, v["file"])) == v["sha256"]}
    keep = {v["file"] for v in state["shards"].values()} if state else set()
    for path in glob.glob(os.path.join(output_dir, f"{split}-*-of-*.tfrecord*")):
        if os.path.basename(path) not in keep:
            os.remove(path)
    return state or {"fingerprint": fingerprint, "shards": {}}


def _write_shard(output_dir, split, shard, num_shards, tasks, results, spec,
                 skip_invalid, bar) -> dict:
    name = SHARD_PATTERN.format(split=split, index=shard, count=num_shards)
    final = os.path.join(output_dir, name)
    counts = np.zeros(spec.num_classes, np.int64)
    written, skipped, filtered = 0, [], 0
    with atomic_path(final, suffix=TEMP_SUFFIX) as tmp:
        with tf.io.TFRecordWriter(tmp) as writer:
            for task in tasks:
                status, value = next(results)
                if status == "ok":
                    writer.write(value.serialized)
                    counts += value.class_counts
                    written += 1
                elif status == "filtered":
                    filtered += 1
                elif skip_invalid:
                    skipped.append({"id": task.example_id, "error": value})
                else:
                    raise InvalidExampleError(value)
                bar.update(1)
    return {"file": name, "count": written, "sha256": file_sha256(final),
            "class_counts": counts.tolist(), "skipped": skipped,
            "filtered": filtered}


def split_manifest(split, done, num_shards, spec: SplitSpec, skipped) -> dict:
    shards = [done["shards"][str(i)] for i in range(num_shards)]
    counts = np.sum([s["class_counts"] for s in shards], axis=0).astype(np.int64)
    skipped = skipped + [s for shard in shards for s in shard["skipped"]]
    return {
        "split": split,
        "count": sum(s["count"] for s in shards),
        "num_classes": spec.num_classes,
        "ignore_label": spec.ignore_label,
        "class_names": list(spec.class_names) if spec.class_names else None,
        "dataset": spec.dataset.to_dict() if spec.dataset else None,
        spec.stats_name: counts.tolist(),
        "source": spec.source,
        "num_shards": num_shards,
        "shards": [{"file": s["file"], "count": s["count"], "sha256": s["sha256"]}
                   for s in shards],
        "num_skipped": len(skipped),
        "skipped": skipped,
        "num_filtered": sum(s["filtered"] for s in shards),
    }

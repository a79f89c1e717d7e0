"""The records builder on Apache Beam: the same shards from Dataflow, Flink, Spark or locally.

`BeamEngine(runner, pipeline_options)` passed as `engine=` to any builder
(`build_voc(..., engine=BeamEngine())`, `tools/build_tfrecords.py --runner`)
makes `shards.write_split` run as a Beam pipeline:

  tasks (enumerated) -> encode each (the builder's own encode function, the
  same code as the local build) -> group by shard -> each shard written in
  task order under a temporary name, then renamed -> the driver writes the
  manifest from what every shard reported.

- Same bytes: each example goes to the shard the local builder gives it
  (`len(tasks) * i // num_shards` bounds) and a shard holds its examples in
  task order, so the shards are byte-identical to the local build's for the
  same source and `num_shards`; the manifest is the same apart from its
  "beam" entry, which says how it was built.
- Failure at scale: a runner retries a shard's write when a worker dies; each
  attempt writes a uniquely named temporary and renames it over the final
  name, so a shard that has its final name is complete, and a rerun of a
  failed job writes the same bytes again.
- Bad examples: every one is collected (file and reason, the local builder's
  words). Without `skip_invalid` the job fails at the end naming them (the
  first `max_errors_listed` and the count; one alone in the local builder's
  exact message), and shards that held one are not written; with it they are
  listed in the manifest as the local builder lists them.
- Paths go through `tf.io.gfile`, so `gs://` (and `s3://`, where TensorFlow's
  file systems for it are installed) outputs work; sources are read by the
  builders' own code.

Apache Beam is an optional dependency (`requirements-beam.txt`): it is
imported when a pipeline runs.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import json
import os
import uuid
from typing import Callable, Sequence

import numpy as np
import tensorflow as tf

from deeplabv3_tf.data.images import InvalidExampleError
from deeplabv3_tf.data.schema import MANIFEST_NAME, SHARD_PATTERN
from deeplabv3_tf.data.tfrecord_builders.shards import (
    Encoded, SplitSpec, Task, default_num_shards, dedupe_tasks, run_encode, split_manifest)

BEAM_MISSING = ("Apache Beam is not installed: pip install -r requirements-beam.txt "
                "(apache-beam[tfrecord]).")
RUNNERS = ("DirectRunner", "DataflowRunner", "FlinkRunner", "SparkRunner", "PortableRunner")
REPORTS_DIR = ".{split}.beam"  # each shard's report, read back by the driver


@dataclasses.dataclass(frozen=True)
class BeamEngine:
    """How a records build runs on Beam.

    Attributes:
      runner: One of `RUNNERS`.
      pipeline_options: Passed to Beam as they are, e.g. ("--project=p",
        "--region=europe-west4", "--temp_location=gs://b/tmp") for Dataflow
        (as `tfds build --beam_pipeline_options`).
      max_errors_listed: Bad examples named in the error of a failed job.
    """

    runner: str = "DirectRunner"
    pipeline_options: tuple[str, ...] = ()
    max_errors_listed: int = 20

    def __post_init__(self):
        if self.runner not in RUNNERS:
            raise ValueError(f"runner={self.runner!r} is not one of {RUNNERS}.")
        object.__setattr__(self, "pipeline_options", tuple(self.pipeline_options))

    def options(self, num_workers: int | None):
        """Beam's PipelineOptions: the DirectRunner runs `num_workers` processes."""
        try:
            from apache_beam.options.pipeline_options import PipelineOptions
        except ImportError as e:
            raise ImportError(BEAM_MISSING) from e
        extra = {}
        if self.runner == "DirectRunner":
            given = " ".join(self.pipeline_options)
            if "direct_running_mode" not in given:
                extra["direct_running_mode"] = "multi_processing"
            if "direct_num_workers" not in given:
                extra["direct_num_workers"] = num_workers or os.cpu_count() or 1
        return PipelineOptions(list(self.pipeline_options), runner=self.runner, **extra)

    def write_split(self, output_dir: str, split: str, tasks: Sequence[Task],
                    encode: Callable[[Task], Encoded], spec: SplitSpec, *,
                    num_shards: int | None = None, num_workers: int | None = None,
                    skip_invalid: bool = False, progress: bool = True,
                    log: Callable[[str], None] = print) -> dict:
        """`shards.write_split` as a Beam pipeline (same arguments, same result)."""
        del progress  # the runner shows its own
        try:
            import apache_beam as beam
        except ImportError as e:
            raise ImportError(BEAM_MISSING) from e
        if not tasks:
            raise ValueError(f"Split {split!r} is empty ({spec.origin or 'no examples'}).")
        tasks, skipped = dedupe_tasks(tasks, spec, split, skip_invalid)
        num_shards = num_shards or default_num_shards(len(tasks))
        tf.io.gfile.makedirs(output_dir)
        reports = f"{output_dir}/{REPORTS_DIR.format(split=split)}"
        _clear(output_dir, split, reports)
        writer = _ShardWriter(output_dir, split, num_shards, spec.num_classes, skip_invalid,
                              reports)
        log(f"[{split}] {len(tasks)} examples in {num_shards} shards on Beam's {self.runner}")
        bounds = [len(tasks) * i // num_shards for i in range(num_shards + 1)]
        with beam.Pipeline(options=self.options(num_workers)) as pipeline:
            examples = (pipeline
                        | "Tasks" >> beam.Create(list(enumerate(tasks)))
                        | "Encode" >> beam.Map(_encode_one, encode, bounds))
            # One marker per shard, so that a shard with no example is written too.
            markers = pipeline | "Shards" >> beam.Create([(s, None) for s in range(num_shards)])
            _ = ((examples, markers)
                 | "Together" >> beam.Flatten()
                 | "ByShard" >> beam.GroupByKey()
                 | "Write" >> beam.Map(writer))
        done = {"shards": {}}
        errors = []
        for shard in range(num_shards):
            with tf.io.gfile.GFile(f"{reports}/{shard}.json") as f:
                report = json.load(f)
            errors += report.pop("errors")
            done["shards"][str(shard)] = report
        tf.io.gfile.rmtree(reports)
        if errors:
            raise InvalidExampleError(self._failure(errors))
        manifest = split_manifest(split, done, num_shards, spec, skipped)
        if manifest["count"] == 0:
            raise ValueError(f"Split {split!r}: none of {len(tasks)} examples could be written.")
        manifest["beam"] = {"runner": self.runner,
                            "pipeline_options": list(self.pipeline_options)}
        _write_text(f"{output_dir}/{MANIFEST_NAME.format(split=split)}",
                    json.dumps(manifest, indent=2) + "\n")
        log(f"[{split}] wrote {manifest['count']} examples in {num_shards} shards to "
            f"{output_dir} ({manifest['num_skipped']} skipped, "
            f"{manifest['num_filtered']} filtered)")
        return manifest

    def _failure(self, errors: list[str]) -> str:
        """One bad example: the local builder's message; more: a list of them."""
        if len(errors) == 1:
            return errors[0]
        shown = errors[:self.max_errors_listed]
        more = len(errors) - len(shown)
        return (f"{len(errors)} examples could not be written (--skip_invalid leaves them out "
                "and lists them in the manifest):\n  " + "\n  ".join(shown)
                + (f"\n  ... and {more} more" if more else ""))


def _encode_one(item, encode, bounds: list[int]):
    """(index, task) -> (shard, (index, id, result)): the shard the local builder
    gives it (`bounds[s] <= index < bounds[s + 1]`)."""
    index, task = item
    return bisect.bisect_right(bounds, index) - 1, (index, task.example_id,
                                                    run_encode(encode, task))


class _ShardWriter:
    """Writes one shard from its examples, in task order; reports what it wrote."""

    def __init__(self, output_dir, split, num_shards, num_classes, skip_invalid, reports):
        self.output_dir, self.split, self.num_shards = output_dir, split, num_shards
        self.num_classes, self.skip_invalid, self.reports = num_classes, skip_invalid, reports

    def __call__(self, keyed):
        shard, items = keyed
        items = sorted((item for item in items if item is not None), key=lambda item: item[0])
        errors = [value for _, _, (status, value) in items if status == "error"]
        name = SHARD_PATTERN.format(split=self.split, index=shard, count=self.num_shards)
        final = f"{self.output_dir}/{name}"
        counts = np.zeros(self.num_classes, np.int64)
        written, skipped, filtered = 0, [], 0
        report = {"file": name, "errors": [] if self.skip_invalid else errors}
        if errors and not self.skip_invalid:
            # The job fails: no shard that would look complete without its bad examples.
            report.update(count=0, sha256="", class_counts=counts.tolist(), skipped=[],
                          filtered=0)
        else:
            # A unique temporary per attempt: a retried or speculative attempt never
            # writes into another's file; the rename makes the shard appear whole.
            tmp = f"{final}.incomplete-{uuid.uuid4().hex}"
            try:
                with tf.io.TFRecordWriter(tmp) as writer:
                    for _, example_id, (status, value) in items:
                        if status == "ok":
                            writer.write(value.serialized)
                            counts += value.class_counts
                            written += 1
                        elif status == "filtered":
                            filtered += 1
                        else:
                            skipped.append({"id": example_id, "error": value})
                tf.io.gfile.rename(tmp, final, overwrite=True)
            finally:
                if tf.io.gfile.exists(tmp):
                    tf.io.gfile.remove(tmp)
            report.update(count=written, sha256=_sha256(final), class_counts=counts.tolist(),
                          skipped=skipped, filtered=filtered)
        _write_text(f"{self.reports}/{shard}.json", json.dumps(report))
        return shard


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with tf.io.gfile.GFile(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _write_text(path: str, text: str) -> None:
    """Written under a unique temporary name, then renamed (through tf.io.gfile)."""
    directory = path.rsplit("/", 1)[0]
    tf.io.gfile.makedirs(directory)
    tmp = f"{path}.incomplete-{uuid.uuid4().hex}"
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(text)
    tf.io.gfile.rename(tmp, path, overwrite=True)


def _clear(output_dir: str, split: str, reports: str) -> None:
    """Removes this split's shards, manifest and reports of an earlier build:
    they would describe other shards."""
    for pattern in (f"{split}-*-of-*.tfrecord*", MANIFEST_NAME.format(split=split)):
        for path in tf.io.gfile.glob(f"{output_dir}/{pattern}"):
            tf.io.gfile.remove(path)
    if tf.io.gfile.exists(reports):
        tf.io.gfile.rmtree(reports)

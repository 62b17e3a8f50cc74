"""`segment_files`: the batch-predict pipeline, from a file pattern to class-id PNGs, overlays and a manifest.

    match the pattern -> key each file by its output (GroupByKey: spreads the files over workers, finds
    two inputs that would share an output) -> skip those whose outputs exist -> read and decode (bad files
    to the dead letter) -> RunInference (SavedModelHandler; a failed batch to the dead letter) -> write the
    PNGs (each whole: a temporary name, then a rename) -> manifest.jsonl and dead_letter.jsonl

Files are read and written through Beam's filesystems (local, gs://, s3://, ... as Beam is installed).
Outputs keep each input's path below the pattern's folder: `photos/2024/a.jpg` matched by `photos/**.jpg`
gives `OUT/2024/a_classes.png`, and a flat pattern writes what `keras-fcn predict` writes.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import re
import uuid
from collections.abc import Sequence

import apache_beam as beam
import numpy as np
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
from PIL import Image

from keras_fcn.beam.handler import ImageExample, InferenceError, SavedModelHandler
from keras_fcn.export import ASSETS_EXTRA, CLASS_NAMES_FILE, SERVE_PNG, SERVING_DEFAULT

MANIFEST = "manifest.jsonl"
DEAD_LETTER = "dead_letter.jsonl"
_WILDCARD = re.compile(r"[*?\[]")
_COUNTERS = ("written", "skipped", "failed")


def absolute_path(path: str) -> str:
    """`path` itself for a URL (`gs://...`), else the absolute local path: Beam matches a bare relative pattern
    (`photo*.jpg`) against nothing, and workers may run in another folder."""
    return path if "://" in path else os.path.abspath(path)


def pattern_root(pattern: str) -> str:
    """The folder of a file pattern above its first wildcard (`gs://b/photos/` for `gs://b/photos/*/*.jpg`)."""
    found = _WILDCARD.search(pattern)
    head = pattern if found is None else pattern[: found.start()]
    return head[: head.rfind("/") + 1] if "/" in head else ""


def output_paths(path: str, root: str, output_dir: str, overlay: bool) -> tuple[str, str | None]:
    """`(classes_png, overlay_png or None)` of one input: its path below `root`, without extension, under
    `output_dir`."""
    relative = path[len(root) :] if root and path.startswith(root) else posixpath.basename(path)
    stem = posixpath.splitext(relative.lstrip("/"))[0]
    base = FileSystems.join(output_dir, *stem.split("/"))
    return base + "_classes.png", (base + "_overlay.png" if overlay else None)


def resolve_model_dir(model_dir: str) -> str:
    """A SavedModel folder: `model_dir` itself, or its latest numeric version (a TF Serving base path)."""
    if FileSystems.exists(FileSystems.join(model_dir, "saved_model.pb")):
        return model_dir
    pattern = FileSystems.join(model_dir, "*", "saved_model.pb")
    versions = {}
    for metadata in FileSystems.match([pattern])[0].metadata_list:
        folder = FileSystems.split(FileSystems.split(metadata.path)[0])
        if folder[1].isascii() and folder[1].isdecimal():
            versions[int(folder[1])] = FileSystems.join(*folder)
    if not versions:
        raise ValueError(
            f"model_dir must be a SavedModel folder or a base path of numeric versions (as `keras-fcn export` "
            f"writes). Received: model_dir={model_dir!r}"
        )
    return versions[max(versions)]


def read_class_names(model_dir: str) -> list[str] | None:
    """The class names an export stored in `assets.extra/class_names.txt`, read through Beam's filesystems."""
    path = FileSystems.join(model_dir, ASSETS_EXTRA, CLASS_NAMES_FILE)
    if not FileSystems.exists(path):
        return None
    with FileSystems.open(path) as handle:
        return handle.read().decode("utf-8").splitlines()


def write_whole(path: str, data: bytes) -> None:
    """Writes `data` under a temporary name beside `path`, then renames it: readers (and a rerun's skip check)
    see the whole file or none."""
    folder, name = FileSystems.split(path)
    tmp = FileSystems.join(folder, f".{name}.{uuid.uuid4().hex}.tmp")
    try:
        with FileSystems.create(tmp, mime_type="application/octet-stream") as handle:
            handle.write(data)
        FileSystems.rename([tmp], [path])
    finally:
        if FileSystems.exists(tmp):
            FileSystems.delete([tmp])


def _record(path: str, status: str, output=None, overlay=None, size=None, classes=None, error=None) -> dict:
    """One manifest line."""
    return {
        "input": path, "status": status, "output": output, "overlay": overlay,
        "size": None if size is None else [int(v) for v in size],
        "classes": None if classes is None else [int(c) for c in classes], "error": error,
    }  # fmt: skip


def _failure(path: str, error: str) -> dict:
    Metrics.counter("keras_fcn", "failed").inc()
    return _record(path, "failed", error=error)


class _Plan(beam.DoFn):
    """`(classes_png, [inputs])` -> an input to segment, a manifest line for finished work, or the dead letter
    for inputs that would share outputs."""

    def __init__(self, overlay: bool):
        self.overlay = overlay

    def process(self, element):
        classes_png, inputs = element
        inputs = sorted(inputs)
        if len(inputs) > 1:
            for path in inputs:
                yield beam.pvalue.TaggedOutput(
                    "failed", _failure(path, f"{' and '.join(inputs)} would all be written to {classes_png}")
                )
            return
        path = inputs[0]
        overlay_png = classes_png[: -len("_classes.png")] + "_overlay.png" if self.overlay else None
        if FileSystems.exists(classes_png) and (overlay_png is None or FileSystems.exists(overlay_png)):
            try:
                with FileSystems.open(classes_png, mime_type="image/png") as handle:
                    ids = np.asarray(Image.open(io.BytesIO(handle.read())))
                Metrics.counter("keras_fcn", "skipped").inc()
                yield beam.pvalue.TaggedOutput(
                    "skipped", _record(path, "skipped", classes_png, overlay_png, ids.shape, np.unique(ids))
                )
                return
            except OSError:
                pass  # an unreadable output is written again
        yield path


class _Read(beam.DoFn):
    """An input path -> `(path, ImageExample)`; a file that cannot be read or decoded -> the dead letter."""

    def __init__(self, signature: str):
        self.signature = signature

    def process(self, path: str):
        from keras_fcn.data.files import DataError, read_image

        try:
            with FileSystems.open(path, mime_type="application/octet-stream") as handle:
                data = handle.read()
            pixels = read_image(path, data)  # Pillow: the decoding `keras-fcn predict` uses
            if pixels.shape[0] == 0 or pixels.shape[1] == 0:
                raise DataError(f"Cannot read image file {path}: it holds no pixels")
        except (DataError, OSError) as error:
            yield beam.pvalue.TaggedOutput("failed", _failure(path, str(error)))
            return
        except Exception as error:  # noqa: BLE001 - a malformed file may break a decoder anywhere: its line, not the job
            reason = f"Cannot read image file {path}: {type(error).__name__}: {error}"
            yield beam.pvalue.TaggedOutput("failed", _failure(path, reason))
            return
        # serve_png decodes JPEG and PNG itself, as Pillow does, except 16-bit PNGs (TensorFlow scales them to
        # 8 bits, Pillow clips): those and other formats reach it as a lossless PNG of Pillow's pixels.
        png = data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 24 and data[24] != 16  # IHDR's bit depth
        sent = data if self.signature == SERVE_PNG and (png or data[:2] == b"\xff\xd8") else None
        yield path, ImageExample(pixels, sent)


class _Write(beam.DoFn):
    """`PredictionResult` keyed by input -> class-id PNG and overlay (each whole) -> a manifest line."""

    def __init__(self, root: str, output_dir: str, overlay: bool, class_names: Sequence[str] | None):
        self.root, self.output_dir, self.overlay, self.class_names = root, output_dir, overlay, class_names

    def process(self, element):
        from keras_fcn.visualize import class_map_png, overlay

        path, result = element
        if isinstance(result.inference, InferenceError):
            yield beam.pvalue.TaggedOutput("failed", _failure(path, str(result.inference)))
            return
        class_ids = np.asarray(result.inference)
        classes_png, overlay_png = output_paths(path, self.root, self.output_dir, self.overlay)
        try:
            if overlay_png:
                buffer = io.BytesIO()
                overlay(result.example.pixels, class_ids, self.class_names).save(buffer, format="PNG")
                write_whole(overlay_png, buffer.getvalue())
            write_whole(classes_png, class_map_png(class_ids))  # last: the skip check asks for it
        except (OSError, ValueError) as error:
            yield beam.pvalue.TaggedOutput("failed", _failure(path, f"writing the outputs failed: {error}"))
            return
        Metrics.counter("keras_fcn", "written").inc()
        yield _record(path, "written", classes_png, overlay_png, class_ids.shape, np.unique(class_ids))


def _failed_batch(element):
    """RunInference's dead letter, `(batch of (path, example), exception)` -> one line per input."""
    batch, error = element
    for path, _ in batch:
        yield _failure(path, f"inference failed: {type(error).__name__}: {error}")


def _json_line(record: dict) -> str:
    return json.dumps(record, sort_keys=True)


def segment_files(
    pipeline: beam.Pipeline,
    model_dir: str,
    pattern: str,
    output_dir: str,
    *,
    signature: str = SERVING_DEFAULT,
    overlay: bool = True,
    class_names: Sequence[str] | None = None,
    **handler_options,
) -> dict:
    """Adds the batch segmentation of the files matching `pattern` to `pipeline`.

    Writes `<stem>_classes.png` (and `<stem>_overlay.png`) per input under `output_dir`, skipping inputs whose
    outputs exist, `output_dir/manifest.jsonl` (a line per input: `input`, `status` written/skipped/failed,
    `output`, `overlay`, `size` [H, W], `classes` present, `error`) and `output_dir/dead_letter.jsonl` (the
    failed lines: unreadable files, failed batches, outputs that could not be written).

    Args:
        pipeline: the Beam pipeline to add the transforms to.
        model_dir: an exported SavedModel version folder (see `resolve_model_dir` for a base path).
        pattern: files to segment, a Beam file pattern (`photos/*.jpg`, `gs://bucket/photos/**`); local paths
            are made absolute, as are `model_dir` and `output_dir`.
        output_dir: where the outputs go (any Beam filesystem).
        signature: `serving_default` or `serve_png`.
        overlay: also write the overlays.
        class_names: names for the overlays' legends (default: the export's `class_names.txt`).
        **handler_options: `SavedModelHandler`'s keyword arguments (`max_batch_size`, `max_pixels`, `tiling`,
            `model_copies`, `load_log`).

    Returns:
        `{"manifest": PCollection of manifest lines (dicts), "failed": PCollection of the failed ones}`.
    """
    model_dir, pattern, output_dir = (absolute_path(path) for path in (model_dir, pattern, output_dir))
    root = pattern_root(pattern)
    output_prefix = output_dir.rstrip("/") + "/"
    if class_names is None:
        class_names = read_class_names(model_dir)
    handler = KeyedModelHandler(SavedModelHandler(model_dir, signature, **handler_options))

    planned = (
        pipeline
        | "Pattern" >> beam.Create([pattern])
        | "Match" >> fileio.MatchAll()
        # Not the outputs themselves, when the output folder lies under the pattern's (`photos/**` into photos/out/).
        | "NotOutputs" >> beam.Filter(lambda metadata: not metadata.path.startswith(output_prefix))
        | "KeyByOutput"
        >> beam.Map(
            lambda metadata: (output_paths(metadata.path, root, output_dir, False)[0], metadata.path)
        )  # fmt: skip
        | "GroupByOutput" >> beam.GroupByKey()
        | "SkipDone" >> beam.ParDo(_Plan(overlay)).with_outputs("skipped", "failed", main="todo")
    )
    read = planned.todo | "Read" >> beam.ParDo(_Read(signature)).with_outputs("failed", main="images")
    predicted, dead = read.images | "Segment" >> RunInference(handler).with_exception_handling()
    written = predicted | "Write" >> beam.ParDo(_Write(root, output_dir, overlay, class_names)).with_outputs(
        "failed", main="written"
    )
    failed = (
        planned.failed,
        read.failed,
        dead.failed_inferences | "FailedBatches" >> beam.FlatMap(_failed_batch),
        written.failed,
    ) | "Failed" >> beam.Flatten()
    manifest = (written.written, planned.skipped, failed) | "Manifest" >> beam.Flatten()
    for name, lines in (("WriteManifest", manifest), ("WriteDeadLetter", failed)):
        target = MANIFEST if name == "WriteManifest" else DEAD_LETTER
        _ = (
            lines
            | f"{name}Json" >> beam.Map(_json_line)
            | name >> beam.io.WriteToText(FileSystems.join(output_dir, target), shard_name_template="")
        )
    return {"manifest": manifest, "failed": failed}


def counts(result) -> dict[str, int]:
    """Inputs written, skipped and failed, from a finished pipeline's counters."""
    from apache_beam.metrics.metric import MetricsFilter

    totals = dict.fromkeys(_COUNTERS, 0)
    for counter in result.metrics().query(MetricsFilter().with_namespace("keras_fcn"))["counters"]:
        if counter.key.metric.name in totals:
            totals[counter.key.metric.name] += counter.committed or 0
    return totals

"""`keras-fcn batch-predict`: segment every file matching a pattern with Apache Beam's RunInference over an
exported SavedModel, on any Beam runner (DirectRunner here, Dataflow, Flink, Spark)."""

from __future__ import annotations

import sys

from keras_fcn.cli.common import CommandError, add_tile_flags

BEAM_EXTRA = 'pip install "keras_fcn[beam]"'


def add_batch_predict(verbs) -> None:
    parser = verbs.add_parser(
        "batch-predict",
        help="segment a whole archive with Apache Beam (RunInference over an exported SavedModel)",
        description="Writes what `keras-fcn predict` writes for every file matching --input, a manifest.jsonl "
        "(a line per input) and a dead_letter.jsonl (inputs that failed, with the reason); inputs whose outputs "
        "exist are skipped, so a rerun does only what is left. Other flags are Beam pipeline options "
        "(--direct_num_workers=2, --project, --region, --num_workers, --machine_type, --extra_package, ...).",
    )
    parser.add_argument("--model-dir", required=True, help="an export's base path (its latest version) or a version")
    parser.add_argument("--input", required=True, metavar="GLOB", help="a file pattern, e.g. 'gs://bucket/photos/**'")
    parser.add_argument("--output", required=True, metavar="DIR", help="output folder (any Beam filesystem)")
    parser.add_argument(
        "--signature", choices=("serving_default", "serve_png"), default="serving_default",
        help="serving_default (decoded pixels in) or serve_png (the JPEG/PNG bytes in, a class-map PNG out)",
    )  # fmt: skip
    parser.add_argument("--runner", default="DirectRunner", help="Beam runner (default: DirectRunner)")
    parser.add_argument("--batch-size", type=int, default=8, help="most images of one size per call (default: 8)")
    parser.add_argument("--no-overlay", dest="overlay", action="store_false", help="write the class-id PNGs only")
    parser.add_argument(
        "--model-copies", type=int,
        help="copies of the model per machine, shared by its processes (default: one per worker process, shared "
        "by its threads)",
    )  # fmt: skip
    parser.add_argument("--quiet", action="store_true", help="no summary")
    tiles = parser.add_argument_group(
        "tiles", "images past the export's pixel cap are predicted in overlapping tiles whose probabilities are blended"
    )
    tiles.add_argument(
        "--max-decoded-pixels", type=int, default=None,
        help="the export's pixel cap, if it was exported with another (default: 33554432; a lower cap is also "
        "learnt from the model's refusal)",
    )  # fmt: skip
    add_tile_flags(tiles)
    parser.set_defaults(run=run_batch_predict, pipeline_options=True)


def run_batch_predict(args) -> int:
    import logging

    # Two warnings of Beam's that say nothing about this job: without the [gcp] extra, that BigQuery's client
    # is missing; without PyTorch (RunInference's model manager imports it), that memory cannot be measured.
    quiet = _Without("apitools not found", "Resource module is not available")
    logging.getLogger().addFilter(quiet)
    try:
        return _run(args)
    finally:
        logging.getLogger().removeFilter(quiet)


def _run(args) -> int:
    try:
        import apache_beam as beam
        from apache_beam.io.filesystems import FileSystems
        from apache_beam.options.pipeline_options import PipelineOptions
    except ImportError:
        raise CommandError(f"batch-predict needs Apache Beam: {BEAM_EXTRA}") from None
    from keras_fcn.beam import absolute_path, counts, resolve_model_dir, segment_files
    from keras_fcn.export import DEFAULT_MAX_DECODED_PIXELS

    if args.batch_size < 1:
        raise CommandError(f"--batch-size must be at least 1. Received: {args.batch_size}")
    if args.tile_size is not None and args.tile_size < 32:
        raise CommandError(f"--tile-size must be at least 32. Received: {args.tile_size}")
    model_dir, pattern, output = (absolute_path(path) for path in (args.model_dir, args.input, args.output))
    try:
        model_dir = resolve_model_dir(model_dir)
        if not FileSystems.match([pattern])[0].metadata_list:
            raise CommandError(f"no file matches --input {args.input}")
    except (ValueError, OSError) as error:  # BeamIOError is an OSError
        raise CommandError(str(error)) from None
    handler_options = {
        "max_batch_size": args.batch_size,
        "max_pixels": args.max_decoded_pixels or DEFAULT_MAX_DECODED_PIXELS,
        "tiling": {"tile_size": args.tile_size, "overlap": args.overlap, "blend": args.blend},
        "model_copies": args.model_copies,
    }
    options = PipelineOptions([f"--runner={args.runner}", *args.pipeline_args])
    with beam.Pipeline(options=options) as pipeline:
        segment_files(pipeline, model_dir, pattern, output, signature=args.signature, overlay=args.overlay,
                      **handler_options)  # fmt: skip
    totals = counts(pipeline.result)
    if not args.quiet:
        print(
            f"{model_dir}: {totals['written']} written, {totals['skipped']} skipped (done before), "
            f"{totals['failed']} failed (see {FileSystems.join(output, 'dead_letter.jsonl')})",
            file=sys.stderr if totals["failed"] else sys.stdout,
        )
    return 0


class _Without:
    """A logging filter dropping the records whose message starts with one of `prefixes`."""

    def __init__(self, *prefixes: str):
        self.prefixes = prefixes

    def filter(self, record) -> bool:
        return not str(record.msg).startswith(self.prefixes)

"""The `keras-fcn` command line: each verb parses its flags, calls the library and reports.

One module per group of verbs, each verb's flags beside its run function: `convert` (weights), `serving`
(export, serve, query), `training` (train, evaluate, predict, demo), `batch` (batch-predict with Apache Beam).
Parsing the flags loads no TensorFlow (`keras-fcn --help` is instant); each verb imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import os
import sys

# TensorFlow's C++ start-up chatter (CUDA probing on CPU machines) would bury the verbs' own messages.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from keras_fcn.cli import batch, convert, serving, training  # noqa: E402
from keras_fcn.cli.common import CommandError  # noqa: E402
from keras_fcn.cli.training import add_demo, run_demo  # noqa: E402, F401 - the demo's test builds its parser

_VERBS = [
    convert.add_convert,
    serving.add_export,
    serving.add_serve,
    serving.add_query,
    training.add_train,
    training.add_evaluate,
    training.add_predict,
    training.add_demo,
    batch.add_batch_predict,
]


def main(argv: list[str] | None = None) -> int:
    """Runs one verb; returns its exit code (2, with one line on stderr, for an error the user can fix)."""
    parser = argparse.ArgumentParser(prog="keras-fcn", description=__doc__.splitlines()[0])
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for add_verb in _VERBS:
        add_verb(verbs)
    # Flags a verb does not declare are refused, except by verbs that hand them on (Beam's pipeline options).
    args, extra = parser.parse_known_args(argv)
    if getattr(args, "pipeline_options", False):
        args.pipeline_args = extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args.run(args) or 0)
    except CommandError as error:
        print(f"keras-fcn {args.verb}: error: {error}", file=sys.stderr)
        return 2

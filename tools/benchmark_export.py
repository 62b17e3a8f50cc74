"""Time, file size, check result and peak memory of one ONNX or LiteRT export of a random-weight FCN-8s.

    python tools/benchmark_export.py --format litert                       # full size (VGG16 widths)
    python tools/benchmark_export.py --format onnx --filters 32 64 128 256 256 --fc-units 1024

Run one format per process: the peak resident memory printed is the process's.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time

import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--format", required=True, choices=("onnx", "litert"))
    parser.add_argument("--filters", type=int, nargs=5, default=(64, 128, 256, 512, 512), help="VGG block widths")
    parser.add_argument("--fc-units", type=int, default=4096)
    parser.add_argument("--classes", type=int, default=21)
    args = parser.parse_args()

    import keras_fcn
    from keras_fcn.export_formats import export_litert, export_onnx

    model = keras_fcn.fcn8s(args.classes, backbone_filters=tuple(args.filters), fc_units=args.fc_units)
    rng = np.random.default_rng(0)
    for layer in model.layers:  # score layers start at zero: give them weights so the check compares something
        if layer.name.startswith("score_"):
            layer.set_weights([rng.normal(0, 0.01, w.shape).astype("float32") for w in layer.get_weights()])
    export = export_onnx if args.format == "onnx" else export_litert
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "fcn8s." + ("onnx" if args.format == "onnx" else "tflite"))
        start = time.perf_counter()
        result = export(model, path, verbose=False)
        seconds = time.perf_counter() - start
        size = os.path.getsize(path)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux
    print(
        f"{args.format}: FCN-8s {tuple(args.filters)}, fc {args.fc_units}, {model.count_params() / 1e6:.1f} M "
        f"parameters: {seconds:.0f} s, {size / 1e6:.0f} MB file, max |probability difference| "
        f"{result.max_abs_difference:.3g}, class agreement {100 * result.class_agreement:.2f}%, "
        f"peak RSS {peak / 1e9:.2f} GB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""FCN training-step speed against the machine's own matrix-multiply speed (a roofline), on CPU or GPU.

    python tools/benchmark_training.py                      # FCN-8s, batch 8, 320x320 crops, float32 and mixed
    python tools/benchmark_training.py --precisions mixed --jit-compile
    python tools/benchmark_training.py --quick --narrow --json out.json   # a smoke run in seconds

In one process: the FLOP/s of an n x n matmul in float32 and bfloat16 (the GEMM, as in
`benchmark_inference.py`); then for each precision (`float32`, or `mixed`: the training loop's
`--mixed-precision`, i.e. mixed_bfloat16 on a CPU, mixed_float16 on a GPU) the time of one `model.fit`
step on a fixed batch, with the model, loss, metrics (one confusion matrix a step) and optimizer that
`keras_fcn.train` builds (SGD with momentum and decoupled weight decay; random weights). The work of a
step is counted as 3x the forward FLOPs (forward, gradient of the activations, gradient of the
weights; `keras_fcn.flops`), and compared with a GEMM in the step's compute precision measured just
before. Step times are the best of `--repeats` steps after `--warmup` steps (the first traces and
compiles). The data pipeline is left out (`tools/benchmark_data.py` measures it).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # benchmark_inference beside this file

import numpy as np  # noqa: E402
from benchmark_inference import NARROW, finish, gemm_flops, machine  # noqa: E402

PRECISIONS = ("float32", "mixed")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="fcn8s", help="default: fcn8s")
    parser.add_argument("--batch", type=int, help="global batch size (default: 8)")
    parser.add_argument("--crop", type=int, help="side of the square crops (default: 320)")
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS,
                        help="float32, and/or mixed (bfloat16 on a CPU, float16 on a GPU)")
    parser.add_argument("--jit-compile", action="store_true", help="XLA, as `keras-fcn train --jit-compile`")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default: 2)")
    parser.add_argument("--repeats", type=int, help="timed steps; the best is kept (default: 3)")
    parser.add_argument("--gemm-size", type=int, help="n of the n x n GEMM (default: 4096)")
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--narrow", action="store_true", help=f"a narrow VGG16-topology backbone {NARROW}")
    parser.add_argument("--quick", action="store_true", help="smoke run: batch 2, 64x64, 1 step, 256x256 GEMM")
    parser.add_argument("--json", help="write every figure to this JSON file")
    args = parser.parse_args(argv)  # fmt: skip
    defaults = ({"batch": 2, "crop": 64, "warmup": 1, "repeats": 1, "gemm_size": 256} if args.quick else
                {"batch": 8, "crop": 320, "warmup": 2, "repeats": 3, "gemm_size": 4096})  # fmt: skip
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if min(args.batch, args.crop, args.repeats, args.gemm_size) < 1 or args.warmup < 1:
        parser.error("--batch, --crop, --warmup, --repeats and --gemm-size must be positive")
    return args


class _StepTimes:
    """Seconds of each training step, from Keras's batch callbacks."""

    def __init__(self):
        import keras

        times = self.times = []

        class Callback(keras.callbacks.Callback):
            def on_train_batch_begin(self, batch, logs=None):
                self.started = time.perf_counter()

            def on_train_batch_end(self, batch, logs=None):
                times.append(time.perf_counter() - self.started)

        self.callback = Callback()


def step_seconds(args, precision: str) -> tuple[float, float, str]:
    """(best step seconds, forward FLOPs of one batch, the compute dtype) for one precision."""
    import keras
    import tensorflow as tf

    from keras_fcn import metrics
    from keras_fcn.config import TrainConfig
    from keras_fcn.flops import forward_flops
    from keras_fcn.training.loop import build_model, make_optimizer

    config = TrainConfig(
        variant=args.variant, num_classes=args.classes, backbone_weights=None, batch_size=args.batch,
        crop_size=args.crop, mixed_precision=precision == "mixed", jit_compile=args.jit_compile,
        **({"backbone_filters": NARROW["backbone_filters"], "fc_units": NARROW["fc_units"]} if args.narrow else {}),
    )  # fmt: skip
    keras.utils.set_random_seed(0)
    previous = keras.mixed_precision.global_policy()
    if config.mixed_precision:  # as keras_fcn.train: float16 on a GPU, bfloat16 on a CPU
        gpu = bool(tf.config.list_logical_devices("GPU"))
        keras.mixed_precision.set_global_policy("mixed_float16" if gpu else "mixed_bfloat16")
    try:
        model = build_model(config, args.classes)
        steps = args.warmup + args.repeats
        model.compile(
            optimizer=make_optimizer(config, steps),
            loss=metrics.SegmentationLoss(),
            metrics=metrics.segmentation_metrics(args.classes),
            jit_compile=config.jit_compile,
        )
    finally:
        keras.mixed_precision.set_global_policy(previous)
    compute_dtype = model.get_layer("fc6").compute_dtype
    rng = np.random.default_rng(0)
    shape = (args.batch, args.crop, args.crop)
    images = rng.uniform(0, 255, shape + (3,)).astype(np.float32)
    masks = rng.integers(0, args.classes, shape).astype(np.uint8)
    batch = tf.data.Dataset.from_tensors((images, masks)).repeat()
    timer = _StepTimes()
    model.fit(batch, epochs=1, steps_per_epoch=steps, callbacks=[timer.callback], shuffle=False, verbose=0)
    flops = sum(forward_flops(model, (args.batch, args.crop, args.crop, 3)).values())
    return min(timer.times[args.warmup :]), flops, compute_dtype


def run(args) -> dict:
    report = {"machine": machine(), "gemm_flops": {}, "rows": []}
    for precision in args.precisions:
        seconds, forward, dtype = step_seconds(args, precision)
        gemm_dtype = "float32" if dtype == "float32" else dtype
        # On a shared machine the load drifts: the ratio uses a GEMM measured just after the steps.
        gemm = gemm_flops(gemm_dtype, args.gemm_size, 3)
        report["gemm_flops"][gemm_dtype] = max(report["gemm_flops"].get(gemm_dtype, 0.0), gemm)
        work = 3 * forward
        row = {
            "variant": args.variant, "precision": precision, "compute_dtype": dtype, "batch": args.batch,
            "crop": args.crop, "jit_compile": args.jit_compile, "step_seconds": seconds,
            "images_per_second": args.batch / seconds, "gflop_per_step": work / 1e9, "gflops": work / seconds / 1e9,
            "gemm_gflops": gemm / 1e9, "ratio_to_gemm": work / seconds / gemm,
        }  # fmt: skip
        report["rows"].append(row)
        print(
            f"{args.variant} b{args.batch} {args.crop}x{args.crop} {precision:<7}"
            f"({dtype}{', XLA' if args.jit_compile else ''}) {seconds:7.3f} s/step "
            f"{row['images_per_second']:7.2f} images/s {row['gflops']:7.1f} GFLOP/s "
            f"{row['ratio_to_gemm']:5.2f}x GEMM ({gemm / 1e9:.0f} GFLOP/s {gemm_dtype})",
            flush=True,
        )
    return report


def main(argv=None) -> dict:
    args = parse_args(argv)
    return finish(run(args), args)


if __name__ == "__main__":
    main()

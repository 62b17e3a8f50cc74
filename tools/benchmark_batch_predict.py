"""Batch segmentation measured: `keras-fcn batch-predict` (Beam DirectRunner, several worker processes) against
`keras-fcn predict` on the same images, the same model and sizes: images/s, and the peak memory of each
command's whole process tree.

    python tools/benchmark_batch_predict.py [--images 24] [--size 500x375] [--workers 2] [--narrow] [--work DIR]

An FCN-8s (VGG16's widths unless `--narrow`; random weights: speed does not depend on them) is saved as
`.keras` and exported with `keras-fcn export`; both verbs then run as users run them, each in a fresh process
whose wall time includes its start (TensorFlow's import, the model's load; Beam's workers each load theirs).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchmark_inference import NARROW, parse_size  # noqa: E402

CLI = os.path.join(os.path.dirname(sys.executable), "keras-fcn")


def run_measured(command: list[str]) -> tuple[float, float]:
    """Runs `command`: (wall seconds, peak resident MiB of its process tree, sampled every 0.1 s)."""
    import psutil

    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    root, peak = psutil.Process(process.pid), 0
    while process.poll() is None:
        try:
            peak = max(peak, sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]))
        except psutil.Error:
            pass  # a process of the tree ended between the listing and the reading
        time.sleep(0.1)
    seconds = time.perf_counter() - started
    if process.returncode:
        log = process.stderr.read().decode(errors="replace")[-3000:]
        raise SystemExit(f"{' '.join(command[:2])} exited {process.returncode}:\n{log}")
    return seconds, peak / 2**20


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--size", type=parse_size, default=(375, 500), help="WIDTHxHEIGHT (default: 500x375)")
    parser.add_argument("--workers", type=int, default=2, help="Beam worker processes (default: 2)")
    parser.add_argument("--narrow", action="store_true", help="a narrow backbone instead of VGG16's widths")
    parser.add_argument("--work", help="folder for the model, images and outputs (default: a temporary one)")
    args = parser.parse_args(argv)

    import numpy as np
    from PIL import Image

    import keras_fcn

    work = args.work or tempfile.mkdtemp(prefix="batch_predict_")
    os.makedirs(os.path.join(work, "images"), exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for index in range(args.images):
        paths.append(os.path.join(work, "images", f"{index:05d}.jpg"))
        Image.fromarray(rng.integers(0, 256, (*args.size, 3), dtype=np.uint8)).save(paths[-1], quality=90)
    keras_fcn.fcn8s(21, **(NARROW if args.narrow else {})).save(os.path.join(work, "fcn8s.keras"))
    shutil.rmtree(os.path.join(work, "export"), ignore_errors=True)
    subprocess.run([CLI, "export", "--model", os.path.join(work, "fcn8s.keras"), "--output",
                    os.path.join(work, "export"), "--quiet"], check=True)  # fmt: skip

    figures = {}
    commands = {
        "keras-fcn predict": [CLI, "predict", "--model", os.path.join(work, "fcn8s.keras"), *paths,
                              "--output", os.path.join(work, "predict"), "--quiet"],  # fmt: skip
        f"keras-fcn batch-predict, {args.workers} workers": [
            CLI, "batch-predict", "--model-dir", os.path.join(work, "export"), "--input",
            os.path.join(work, "images", "*.jpg"), "--output", os.path.join(work, "batch"), "--quiet",
            "--direct_running_mode=multi_processing", f"--direct_num_workers={args.workers}",
        ],  # fmt: skip
    }
    print(f"{args.images} images of {args.size[1]}x{args.size[0]}, FCN-8s {'narrow' if args.narrow else 'VGG16'}")
    print("| command | wall s | images/s | images/s per worker | peak RSS of the process tree |")
    print("|---|---|---|---|---|")
    for (name, command), workers in zip(commands.items(), (1, args.workers), strict=True):
        shutil.rmtree(command[command.index("--output") + 1], ignore_errors=True)
        seconds, peak = run_measured(command)
        rate = args.images / seconds
        figures[name] = {"seconds": seconds, "images_per_s": rate, "per_worker": rate / workers, "peak_mib": peak}
        print(f"| {name} | {seconds:.1f} | {rate:.2f} | {rate / workers:.2f} | {peak:.0f} MiB |")
    return figures


if __name__ == "__main__":
    main()

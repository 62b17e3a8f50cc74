"""Wall time of `keras-fcn query` (one image, a fresh process each time) against a local server.

    python tools/benchmark_query_startup.py --repeats 3

Exports a narrow FCN-8s with random weights, starts `keras-fcn serve` on it in a separate process, then
runs `keras-fcn query` on one 64x64 PNG `--repeats` times, each in a new process, and prints the best and
every wall time, beside `python -c "import keras_fcn.serving.client"` and the Python interpreter alone
(what no client can go below). The server's own start-up is not counted.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wall_times(command: list[str], repeats: int) -> list[float]:
    """Seconds each of `repeats` runs of `command` took; raises if one fails."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs of each command (default: 3)")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1. Received: repeats={args.repeats}")

    import keras
    from PIL import Image

    import keras_fcn

    work = tempfile.mkdtemp(prefix="query_startup_")
    keras.utils.set_random_seed(0)
    model = keras_fcn.build_fcn("fcn8s", 21, backbone_filters=(4, 8, 16, 32, 32), fc_units=32)
    keras_fcn.export_saved_model(model, os.path.join(work, "fcn"), verbose=False)
    image = os.path.join(work, "street.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(image)

    port = free_port()
    cli = [sys.executable, "-m", "keras_fcn.cli"]
    server = subprocess.Popen(
        [*cli, "serve", "--model-base-path", os.path.join(work, "fcn"), "--model-name", "fcn",
         "--port", str(port), "--rest-port", "0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    query = [*cli, "query", "--address", f"127.0.0.1:{port}", "--model", "fcn", image]
    query += ["--output", os.path.join(work, "out"), "--quiet"]
    try:
        deadline = time.monotonic() + 180
        while subprocess.run(query, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode:
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("the server did not start")
            time.sleep(0.5)
        rows = [
            ("keras-fcn query (1 image)", query),
            ('python -c "import keras_fcn.serving.client"', [sys.executable, "-c", "import keras_fcn.serving.client"]),
            ('python -c "pass"', [sys.executable, "-c", "pass"]),
        ]
        print(f"best of {args.repeats}, seconds of wall time")
        for name, command in rows:
            times = wall_times(command, args.repeats)
            print(f"{name:46s} {min(times):6.3f}   ({', '.join(f'{t:.3f}' for t in times)})")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)


if __name__ == "__main__":
    main()

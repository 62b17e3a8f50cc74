"""Sliding-window inference measured: what tiles and test-time augmentation cost in time and give in mean IU.

    python tools/benchmark_tiling.py overhead [--narrow] [--size 2048x1536] [--tile 512] [--precision bfloat16]
    python tools/benchmark_tiling.py accuracy --model demo_output/train/best.keras
    python tools/benchmark_tiling.py tta --model demo_output/train/best.keras
    python tools/benchmark_tiling.py large [--size 20000x20000] [--output ids.npy]

`overhead`: `predict_tiled` on one image against the sum of its tiles' model calls alone (the same tiles,
batches and traced function, each call timed), so the ratio is what cutting, blending and writing add;
the FCN-8s has VGG16's widths unless `--narrow`, random weights (speed does not depend on them).
`accuracy`: a trained model (the demo's) on larger generated scenes (mosaics of images like its training
set, cut across the seams), whole and in tiles (sides `--tiles`, overlaps 0, 0.25, 0.5, both blends): the
fraction of pixels whose class id equals the whole image's, the mean IU of each against the masks, and the
seconds.
`tta`: the same model on its own held-out set (the demo's 100 images: `synthetic:100`, seed 1000003) and on
larger scenes, without augmentation, with flips, scales and both: mean IU and seconds.
`large`: a narrow FCN-8s over a generated image read through a window reader (never whole in memory),
its class map written to a memory-mapped `.npy`; prints the peak resident memory of this process.

The CPU, the TensorFlow version and a float32 GEMM's FLOP/s measured in the same process are printed
first, so figures from different machines can be compared as ratios. `--json PATH` writes every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
from benchmark_inference import NARROW, gemm_flops, machine, parse_size  # noqa: E402

from keras_fcn import atomic  # noqa: E402

DEMO_HELD_OUT_SEED = 1000003  # the demo's validation set: synthetic(seed=1000003), 100 images of 128x128
OVERLAPS = (0.0, 0.25, 0.5)
TTA_CHOICES = {
    "none": ((), (1.0,)),
    "hflip": (("hflip",), (1.0,)),
    "scales 0.75,1,1.25": ((), (0.75, 1.0, 1.25)),
    "hflip + scales": (("hflip",), (0.75, 1.0, 1.25)),
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("overhead", "accuracy", "tta", "large"))
    parser.add_argument("--model", help="accuracy, tta: a trained .keras model (demo_output/train/best.keras)")
    parser.add_argument("--narrow", action="store_true", help="overhead: the demo's narrow widths, not VGG16's")
    parser.add_argument("--size", type=parse_size, help="WIDTHxHEIGHT of the image (overhead: 2048x1536; large: "
                        "20000x20000)")  # fmt: skip
    parser.add_argument("--tile", type=int, default=512, help="overhead, large: the tiles' side (default 512)")
    parser.add_argument("--tiles", default="128,256", help="accuracy: tile sides, comma-separated (default 128,256)")
    parser.add_argument("--scenes", default="512,1024", help="accuracy, tta: sides of the generated scenes")
    parser.add_argument("--count", type=int, default=4, help="accuracy, tta: generated scenes of each side")
    parser.add_argument("--batch-size", type=int, default=4, help="tiles per model call (default 4)")
    parser.add_argument("--precision", default="float32", help="overhead: float32 or bfloat16")
    parser.add_argument("--output", help="large: the class map's .npy (default: a temporary file, removed)")
    parser.add_argument("--json", help="write every figure to this file")
    return parser.parse_args(argv)


def scenes(side: int, count: int, num_classes: int, seed: int = 7):
    """`count` generated scenes `side x side` at the demo's scale: mosaics of 128x128 images like its own.

    One generated image of `side` pixels would not do: the shapes' sizes and the background's gradient
    scale with the image, so it would not look like what the model learned. The mosaic is cut at an offset
    of half a cell, so that its seams do not fall on the tiles' edges.
    """
    from keras_fcn.data import synthetic

    cells = side // 128 + 2
    source = synthetic(num_examples=count * cells * cells, image_size=(128, 128), num_classes=num_classes, seed=seed)
    result = []
    for index in range(count):
        pairs = [source.load(index * cells * cells + i) for i in range(cells * cells)]
        grid = [pairs[r * cells : (r + 1) * cells] for r in range(cells)]
        image, mask = (np.concatenate([np.concatenate([p[k] for p in row], 1) for row in grid]) for k in (0, 1))
        result.append((image[64 : 64 + side, 64 : 64 + side], mask[64 : 64 + side, 64 : 64 + side]))
    return result


def mean_iu(pairs, num_classes: int) -> float:
    from keras_fcn.metrics import confusion_matrix, scores

    hist = sum(confusion_matrix(mask, ids, num_classes) for mask, ids in pairs)
    return float(scores(hist)["mean_iu"])


def timed(call):
    started = time.perf_counter()
    value = call()
    return value, time.perf_counter() - started


def overhead(args, report: dict) -> None:
    import keras_fcn
    from keras_fcn.precision import with_precision
    from keras_fcn.tiling import predict_tiled, probabilities_fn, tile_grid

    height, width = args.size or (1536, 2048)
    model = keras_fcn.fcn8s(21, **(NARROW if args.narrow else {}))
    model = with_precision(model, args.precision) if args.precision != "float32" else model
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    probabilities = probabilities_fn(model)
    tile, rows, columns = tile_grid((height, width), args.tile, 0.25)  # predict_tiled's own grid
    windows = [(y, x) for y in rows for x in columns]
    batches = [windows[i : i + args.batch_size] for i in range(0, len(windows), args.batch_size)]
    probabilities(np.zeros((len(batches[0]), *tile, 3), np.float32))  # trace and warm up both shapes
    probabilities(np.zeros((len(batches[-1]), *tile, 3), np.float32))
    calls = 0.0
    for batch in batches:
        tiles = np.stack([image[y : y + tile[0], x : x + tile[1]] for y, x in batch]).astype(np.float32)
        calls += timed(lambda tiles=tiles: probabilities(tiles))[1]
    _, seconds = timed(lambda: predict_tiled(probabilities, image, args.tile, 0.25, "gaussian", args.batch_size))
    row = {"image": f"{width}x{height}", "tile": args.tile, "tiles": len(windows), "precision": args.precision,
           "widths": "narrow" if args.narrow else "VGG16", "tiled_s": seconds, "model_calls_s": calls,
           "ratio": seconds / calls, "ms_per_tile": 1000 * calls / len(windows)}  # fmt: skip
    report["overhead"] = row
    print(f"{row['widths']} FCN-8s, {row['image']} image, {len(windows)} tiles of {args.tile}, overlap 0.25, "
          f"gaussian, batch {args.batch_size}, {args.precision}: predict_tiled {seconds:.1f} s, its model calls "
          f"alone {calls:.1f} s ({row['ms_per_tile']:.0f} ms a tile): {row['ratio']:.3f}x")  # fmt: skip


def accuracy(args, report: dict) -> None:
    import keras

    from keras_fcn.tiling import BLENDS, predict_tiled, probabilities_fn

    model = keras.saving.load_model(args.model)
    num_classes = model.output_shape[-1]
    probabilities = probabilities_fn(model)
    rows = []
    print(f"{'scenes':>10} {'tile':>5} {'overlap':>7} {'blend':>9} {'= whole':>8} {'mean IU':>8} {'s':>6}")
    for side in (int(s) for s in args.scenes.split(",")):
        data = scenes(side, args.count, num_classes)
        whole, whole_s = timed(lambda data=data: [predict_tiled(probabilities, image, None) for image, _ in data])
        whole_iu = mean_iu([(mask, ids) for (_, mask), ids in zip(data, whole, strict=True)], num_classes)
        rows.append({"scene": side, "tile": None, "overlap": None, "blend": None, "agreement": 1.0,
                     "mean_iu": whole_iu, "seconds": whole_s})  # fmt: skip
        print(f"{args.count} x {side}² {'whole':>5} {'':>7} {'':>9} {1:8.4f} {whole_iu:8.4f} {whole_s:6.1f}")
        for tile in (int(t) for t in args.tiles.split(",")):
            for overlap in OVERLAPS:
                for blend in BLENDS:
                    tiled, seconds = timed(lambda data=data, tile=tile, overlap=overlap, blend=blend: [
                        predict_tiled(probabilities, image, tile, overlap, blend, args.batch_size) for image, _ in data
                    ])  # fmt: skip
                    agreement = float(np.mean([np.mean(a == b) for a, b in zip(tiled, whole, strict=True)]))
                    iu = mean_iu([(mask, ids) for (_, mask), ids in zip(data, tiled, strict=True)], num_classes)
                    rows.append({"scene": side, "tile": tile, "overlap": overlap, "blend": blend,
                                 "agreement": agreement, "mean_iu": iu, "seconds": seconds})  # fmt: skip
                    print(f"{args.count} x {side}² {tile:5d} {overlap:7.2f} {blend:>9} {agreement:8.4f} {iu:8.4f} "
                          f"{seconds:6.1f}")  # fmt: skip
    report["accuracy"] = rows


def tta(args, report: dict) -> None:
    import keras

    from keras_fcn.data import synthetic
    from keras_fcn.tiling import predict_tiled, probabilities_fn

    model = keras.saving.load_model(args.model)
    num_classes = model.output_shape[-1]
    probabilities = probabilities_fn(model)
    held_out = synthetic(num_examples=100, image_size=(128, 128), num_classes=num_classes, seed=DEMO_HELD_OUT_SEED)
    sets = {"held-out 100 x 128²": ([held_out.load(i) for i in range(100)], None)}
    side = max(int(s) for s in args.scenes.split(","))
    sets[f"{args.count} scenes {side}², tiles 256"] = (scenes(side, args.count, num_classes), 256)
    rows = []
    print(f"{'images':>28} {'augmentation':>20} {'mean IU':>8} {'s':>6}")
    for name, (data, tile) in sets.items():
        for choice, (flips, scales) in TTA_CHOICES.items():
            predicted, seconds = timed(lambda data=data, tile=tile, flips=flips, scales=scales: [
                predict_tiled(probabilities, image, tile, 0.25, "gaussian", args.batch_size, tta=flips, scales=scales)
                for image, _ in data
            ])  # fmt: skip
            iu = mean_iu([(mask, ids) for (_, mask), ids in zip(data, predicted, strict=True)], num_classes)
            rows.append({"images": name, "augmentation": choice, "mean_iu": iu, "seconds": seconds})
            print(f"{name:>28} {choice:>20} {iu:8.4f} {seconds:6.1f}")
    report["tta"] = rows


def large(args, report: dict) -> None:
    import keras_fcn
    from keras_fcn.tiling import predict_tiled, tile_count

    height, width = args.size or (20000, 20000)
    model = keras_fcn.fcn8s(5, **NARROW)

    def read(top, bottom, left, right):  # a smooth generated image, computed window by window
        yy, xx = np.mgrid[top:bottom, left:right].astype(np.float32)
        channels = [np.sin(xx / 97 + c) * np.cos(yy / 61 - c) for c in range(3)]
        return (127.5 + 127.5 * np.stack(channels, -1)).astype(np.uint8)

    folder = None if args.output else tempfile.mkdtemp()
    path = args.output or os.path.join(folder, "class_ids.npy")
    out = np.lib.format.open_memmap(path, "w+", np.uint8, (height, width))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tiles = tile_count((height, width), args.tile, 0.25)
    started = time.perf_counter()
    predict_tiled(model, read, args.tile, 0.25, "gaussian", args.batch_size, image_shape=(height, width), out=out,
                  verbose=True)  # fmt: skip
    seconds = time.perf_counter() - started
    out.flush()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    counts = np.bincount(np.asarray(out[:: max(1, height // 1000)]).ravel(), minlength=5)
    del out
    size = os.path.getsize(path)
    if folder:
        os.remove(path)
        os.rmdir(folder)
    row = {"image": f"{width}x{height}", "tile": args.tile, "tiles": tiles, "seconds": seconds,
           "peak_rss_mb": peak, "rss_before_mb": before, "class_map_bytes": size,
           "sampled_class_counts": counts.tolist()}  # fmt: skip
    report["large"] = row
    print(f"narrow FCN-8s, {row['image']} image read window by window, {tiles} tiles of {args.tile}, overlap 0.25: "
          f"{seconds:.0f} s; class map {size / 1e6:.0f} MB on disk; peak RSS of this process {peak:.0f} MiB "
          f"({before:.0f} MiB before the first tile)")  # fmt: skip


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.what in ("accuracy", "tta") and not args.model:
        raise SystemExit(f"{args.what} needs --model: a trained .keras model (the demo's demo_output/train/best.keras)")
    report = {"machine": machine(), "gemm_float32_flops": gemm_flops("float32", 2048, 3)}
    info = report["machine"]
    print(f"{info['cpu']}, {info['cpu_count']} CPUs, TensorFlow {info['tensorflow']}; float32 GEMM "
          f"{report['gemm_float32_flops'] / 1e9:.0f} GFLOP/s")  # fmt: skip
    {"overhead": overhead, "accuracy": accuracy, "tta": tta, "large": large}[args.what](args, report)
    if args.json:
        atomic.write_text(args.json, json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()

"""Input pipeline speed versus training speed at the same batch and crop size.

    python tools/benchmark_data.py                                   # synthetic data, the demo's model
    python tools/benchmark_data.py --data voc:VOCdevkit/VOC2012 --batch-size 8 --crop-size 320 --full-vgg
    python tools/benchmark_data.py --generate 400 --decode-only   # decoding 500x375 JPEGs + palette PNGs

Prints images per second of the tf.data pipeline alone (decode, augment, batch) and of the model's
training steps alone (on one batch held in memory), and their ratio. The goal is a pipeline at least 5x
faster than the model, so training never waits for input.

For file sources it first times the decode stage alone (`source.dataset()`, examples per second): images
decoded by TensorFlow's ops (the pipeline) and, for comparison, everything read by Pillow in a
`tf.numpy_function` (the pipeline before TensorFlow decoded the images). `--generate N` writes N examples
like PASCAL VOC's (500x375 JPEGs of the synthetic shapes, quality 90, palette PNG masks) to a temporary
folder and uses them.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import keras
import tensorflow as tf

import keras_fcn
from keras_fcn import data, metrics


def images_per_second_pipeline(dataset: tf.data.Dataset, batch_size: int, first: int, steady: int):
    """Images/s over the first `first` batches (decoding; the cache filling) and the `steady` after them."""
    iterator = iter(dataset)
    next(iterator)  # start-up: thread pools, graph tracing
    rates = []
    for count in (first, steady):
        start = time.perf_counter()
        for _ in range(count):
            next(iterator)
        rates.append(count * batch_size / (time.perf_counter() - start))
    return rates


def examples_per_second_decoding(dataset: tf.data.Dataset, passes: int = 3) -> float:
    """Examples/s of iterating `dataset` (one decoded example per element), best of `passes` passes."""
    best = 0.0
    for _ in range(passes):
        start = time.perf_counter()
        count = sum(1 for _ in dataset)
        best = max(best, count / (time.perf_counter() - start))
    return best


def decode_rates(source: data.FileSource) -> tuple[float, float]:
    """Examples/s of `source.dataset()`: TensorFlow decoding the images, then Pillow decoding everything."""
    with_tensorflow = source.dataset().prefetch(tf.data.AUTOTUNE)
    # The base class's decoding: `load(i)` (Pillow for image and mask) in a numpy_function.
    with_pillow = source.indices().map(
        lambda i: data.IndexedSource._decode(source, i), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    ).prefetch(tf.data.AUTOTUNE)
    return examples_per_second_decoding(with_tensorflow), examples_per_second_decoding(with_pillow)


def generate_files(folder: str, count: int, size: tuple[int, int] = (375, 500)) -> data.FileSource:
    """`count` synthetic examples written as `images/*.jpg` (quality 90) and palette `masks/*.png`."""
    from PIL import Image

    from keras_fcn.data.synthetic import SyntheticShapes
    from keras_fcn.visualize import save_class_png

    shapes = SyntheticShapes(num_examples=count, image_size=size, num_classes=9, seed=0)
    for sub in ("images", "masks"):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    for index in range(count):
        image, mask = shapes.load(index)
        Image.fromarray(image).save(os.path.join(folder, "images", f"{index:05d}.jpg"), quality=90)
        save_class_png(mask, os.path.join(folder, "masks", f"{index:05d}.png"))  # VOC's palette PNG
    return data.folder(os.path.join(folder, "images"), os.path.join(folder, "masks"), num_classes=9)


def images_per_second_model(model: keras.Model, batch, batch_size: int, steps: int) -> float:
    images, masks = batch
    model.train_on_batch(images, masks)  # trace and compile
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(images, masks)
    return steps * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="synthetic:2000", help="data spec (keras_fcn.data.from_spec)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--num-classes", type=int)
    parser.add_argument("--image-size", type=int, default=128, help="synthetic data only")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--crop-size", type=int, default=96)
    parser.add_argument("--variant", default="fcn8s")
    parser.add_argument("--full-vgg", action="store_true", help="VGG16 widths instead of the demo's narrow net")
    parser.add_argument("--pipeline-batches", type=int, default=200, help="batches timed after the first pass")
    parser.add_argument("--model-steps", type=int, default=20)
    parser.add_argument("--generate", type=int, metavar="N", help="N generated 500x375 JPEG + palette PNG examples")
    parser.add_argument("--decode-only", action="store_true", help="time the decode stage only")
    args = parser.parse_args()

    if args.generate:
        scratch = tempfile.TemporaryDirectory()
        source = generate_files(scratch.name, args.generate)
    else:
        options = {"image_size": [args.image_size] * 2} if args.data.startswith("synthetic") else {}
        source = data.from_spec(args.data, args.split, num_classes=args.num_classes, **options)
    if isinstance(source, data.FileSource):
        with_tensorflow, with_pillow = decode_rates(source)
        print(f"decode stage    {with_tensorflow:9.1f} examples/s  TensorFlow decodes the images ({source.name})")
        print(f"decode stage    {with_pillow:9.1f} examples/s  Pillow decodes everything (numpy_function)")
        print(f"ratio           {with_tensorflow / with_pillow:9.2f}x")
    if args.decode_only:
        return
    dataset = data.make_dataset(source, batch_size=args.batch_size, crop_size=args.crop_size, repeat=True, seed=0)
    size = source.decoded_bytes()
    cached = size is not None and size <= data.pipeline.CACHE_LIMIT_BYTES
    # The first pass over the data decodes every example (and fills the in-memory cache when it fits);
    # later epochs read decoded examples and only augment. Both are timed.
    first_pass = max(1, len(source) // args.batch_size - 1)
    decoding, pipeline = images_per_second_pipeline(dataset, args.batch_size, first_pass, args.pipeline_batches)

    narrow = {} if args.full_vgg else {"backbone_filters": (8, 16, 32, 64, 64), "fc_units": 128}
    model = keras_fcn.build_fcn(args.variant, source.num_classes, **narrow)
    model.compile(
        optimizer="adam", loss=metrics.SegmentationLoss(), metrics=metrics.segmentation_metrics(source.num_classes)
    )
    trained = images_per_second_model(model, next(iter(dataset)), args.batch_size, args.model_steps)

    devices = ", ".join(d.name for d in tf.config.list_logical_devices() if d.device_type != "CPU") or "CPU"
    print(f"data {source.name}, batch {args.batch_size}, crop {args.crop_size}, model {args.variant}"
          f" ({'VGG16' if args.full_vgg else 'narrow VGG16 topology'}) on {devices}")  # fmt: skip
    print(f"input pipeline  {decoding:9.1f} images/s  first pass ({len(source)} examples decoded)")
    print(f"input pipeline  {pipeline:9.1f} images/s  afterwards (augment, batch{', cached' if cached else ''})")
    print(f"training steps  {trained:9.1f} images/s ({trained / args.batch_size:.2f} steps/s)")
    print(f"ratio           {pipeline / trained:9.1f}x  afterwards, {decoding / trained:.1f}x first pass (goal: >= 5x)")


if __name__ == "__main__":
    main()

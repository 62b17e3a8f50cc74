"""SavedModel export with TF Serving signatures, class names and a warm-up file.

`export_saved_model(model, "models/fcn")` writes `models/fcn/<N>/` for TensorFlow Serving:

- `serving_default`: `images` uint8 `(N, H, W, 3)` -> `class_ids` int32 `(N, H, W)`,
  `probabilities` float32 `(N, H, W, C)`.
- `serve_encoded`: `image_bytes` string `(N,)` of JPEG or PNG -> `class_ids`, `probabilities` and
  `class_map_png_bytes` string `(N,)` (one PNG of the class ids per image).
- `serve_png`: `image_bytes` -> `class_map_png_bytes` only. REST has no `output_filter`, so a REST
  call gets every output of its signature: this one answers a few kB where `serve_encoded` answers
  megabytes of JSON probabilities.
- `assets.extra/class_names.txt` (one name a line) and `assets.extra/tf_serving_warmup_requests`
  (a TFRecord of `PredictionLog`, replayed by TF Serving before it marks the version AVAILABLE).

The version folder is written under the hidden name `.export-<N>` (made with `os.mkdir`, which
also reserves N against concurrent exports), reloaded and compared with the Keras model, then
renamed into place, so a server polling the base path never sees half a model.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Sequence

import numpy as np

SERVING_DEFAULT = "serving_default"
SERVE_ENCODED = "serve_encoded"
SERVE_PNG = "serve_png"
# Folder TF Serving leaves to the model owner; files in it are ignored by the SavedModel loader.
ASSETS_EXTRA = "assets.extra"
CLASS_NAMES_FILE = "class_names.txt"
WARMUP_FILE = "tf_serving_warmup_requests"
# Pixels one request may compute (all images together), in every signature: a 20 kB PNG can claim
# 50000x50000 pixels, so `serve_encoded` and `serve_png` read sizes from the headers and check them
# before decoding; `serving_default` checks the shape of its input before the model runs. The check
# lives in the SavedModel, so it holds under TF Serving too.
DEFAULT_MAX_DECODED_PIXELS = 1 << 25  # 33.5 M pixels, e.g. 8 images of 2048x2048
# Largest |probability difference| the reload-and-compare check accepts (float32, 16-bit models).
DEFAULT_TOLERANCE = 1e-4
LOW_PRECISION_TOLERANCE = 5e-2
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What `export_saved_model` wrote and how closely the reloaded SavedModel matches the model.

    Attributes:
        path: the version folder, `base_path/<version>`.
        version: the version number.
        max_abs_difference: largest |probability difference| between the reloaded SavedModel
            (`serving_default`, `serve_encoded`, `serve_png`) and the Keras model on the probe image.
        class_agreement: fraction of probe pixels whose class id agrees (worst of the three signatures).
        reference_report: with a `reference` model, how the exported model's class ids compare with
            it on the probe (`keras_fcn.precision.agreement_report`); None otherwise.
    """

    path: str
    version: int
    max_abs_difference: float
    class_agreement: float
    reference_report: dict | None = None


def version_folders(base_path: str) -> dict[int, str]:
    """Numeric version folders under `base_path` by version, as TF Serving reads them (`007` is 7).

    Non-numeric entries (such as export temporaries) are ignored; a missing folder has no versions. Of
    two folders naming the same number (`7` and `007`), the first in sorted order is taken.

    Returns:
        `{version: folder path}`, in increasing version order.
    """
    if not os.path.isdir(base_path):
        return {}
    folders: dict[int, str] = {}
    for entry in sorted(os.listdir(base_path)):
        path = os.path.join(base_path, entry)
        if entry.isascii() and entry.isdecimal() and os.path.isdir(path):  # not `²`, which isdigit() takes
            folders.setdefault(int(entry), path)
    return dict(sorted(folders.items()))


def list_versions(base_path: str) -> list[int]:
    """The version numbers of `version_folders(base_path)`, sorted."""
    return list(version_folders(base_path))


def read_class_names(version_path: str) -> list[str] | None:
    """The class names stored beside an exported version, or None when it has none."""
    path = os.path.join(version_path, ASSETS_EXTRA, CLASS_NAMES_FILE)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def build_serving_functions(model, max_decoded_pixels: int = DEFAULT_MAX_DECODED_PIXELS) -> dict:
    """The serving `tf.function`s around `model`, keyed by signature name.

    Args:
        model: a Keras model with input `images` (N, H, W, 3) RGB 0..255 and output logits
            (N, H, W, C).
        max_decoded_pixels: the most pixels one request computes (`serve_encoded` and `serve_png`
            decode), all images together; past it every signature fails with INVALID_ARGUMENT before
            the model runs.

    Returns:
        `{"serving_default": fn(images), "serve_encoded": fn(image_bytes), "serve_png": fn(image_bytes)}`
        with input signatures.
    """
    import tensorflow as tf

    num_classes = int(model.outputs[0].shape[-1])
    # PNG holds 8 or 16 bits a pixel: class ids beyond 255 need the 16-bit form.
    png_dtype = tf.uint8 if num_classes <= 256 else tf.uint16

    def predict(images):
        # Outputs stay float32 even when the model computes in float16 (mixed precision).
        logits = tf.cast(model(tf.cast(images, tf.float32), training=False), tf.float32)
        return {
            "class_ids": tf.argmax(logits, axis=-1, output_type=tf.int32),  # (N, H, W)
            "probabilities": tf.nn.softmax(logits, axis=-1),  # (N, H, W, C)
        }

    def pixel_limit(pixels, what: str):
        return tf.debugging.Assert(
            pixels <= max_decoded_pixels,
            [
                tf.strings.format(
                    "images too large: {} " + what + " pixels in one request, the limit is {}",
                    (pixels, tf.constant(max_decoded_pixels, tf.int64)),
                )
            ],
        )

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
    def serving_default(images):
        # The activations are ~1000x the input: refuse before the model allocates them.
        shape = tf.shape(images, out_type=tf.int64)
        with tf.control_dependencies([pixel_limit(shape[0] * shape[1] * shape[2], "input")]):
            images = tf.identity(images)
        return predict(images)

    def image_size(data):
        # (height, width) from the header alone, so nothing is decompressed before the checks.
        is_png = tf.logical_and(tf.strings.length(data) >= 24, tf.equal(tf.strings.substr(data, 0, 8), _PNG_SIGNATURE))
        is_jpeg = tf.io.is_jpeg(data)
        known = tf.debugging.Assert(
            tf.logical_or(is_png, is_jpeg),
            ["image_bytes must hold JPEG or PNG images; received one that is neither (empty or corrupt)"],
        )
        with tf.control_dependencies([known]):
            return tf.cond(
                is_jpeg,
                lambda: tf.cast(tf.image.extract_jpeg_shape(data)[:2], tf.int64),
                # IHDR: width then height, big-endian 32-bit, at bytes 16..23.
                lambda: tf.cast(
                    tf.reverse(tf.io.decode_raw(tf.strings.substr(data, 16, 8), tf.int32, False), [0]),
                    tf.int64,
                ),
            )

    def decode_one(data):
        # JPEG with libjpeg's accurate DCT, as Pillow, `keras-fcn predict` and the data pipeline decode it
        # (TensorFlow's default fast DCT differs by up to 8 grey levels); PNG as TensorFlow reads it.
        return tf.cond(
            tf.io.is_jpeg(data),
            lambda: tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE"),
            lambda: tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False),
        )  # (H, W, 3)

    def decode(image_bytes):
        # Sizes and the pixel limit are checked from the headers before anything is decoded.
        count = tf.debugging.Assert(
            tf.size(image_bytes) > 0, ["image_bytes must hold at least one image; received none"]
        )
        with tf.control_dependencies([count]):
            sizes = tf.map_fn(image_size, image_bytes, fn_output_signature=tf.TensorSpec([2], tf.int64))
        same = tf.debugging.Assert(
            tf.reduce_all(tf.equal(sizes, sizes[:1])),
            [tf.strings.format("images in one request must share a size; received (height, width) sizes {}", sizes)],
        )
        small = pixel_limit(tf.reduce_sum(sizes[:, 0] * sizes[:, 1]), "decoded")
        with tf.control_dependencies([same, small]):
            shape = tf.TensorSpec([None, None, 3], tf.uint8)
            return tf.map_fn(decode_one, image_bytes, fn_output_signature=shape)  # (N, H, W, 3)

    def class_map_pngs(class_ids):
        return tf.map_fn(
            lambda ids: tf.io.encode_png(tf.cast(ids, png_dtype)[..., None]),
            class_ids,
            fn_output_signature=tf.TensorSpec([], tf.string),
        )  # (N,)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serve_encoded(image_bytes):
        outputs = predict(decode(image_bytes))
        outputs["class_map_png_bytes"] = class_map_pngs(outputs["class_ids"])
        return outputs

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serve_png(image_bytes):
        # The argmax of the logits, as `predict` takes it: no softmax computed for nothing.
        logits = model(tf.cast(decode(image_bytes), tf.float32), training=False)
        class_ids = tf.argmax(tf.cast(logits, tf.float32), axis=-1, output_type=tf.int32)
        return {"class_map_png_bytes": class_map_pngs(class_ids)}

    return {SERVING_DEFAULT: serving_default, SERVE_ENCODED: serve_encoded, SERVE_PNG: serve_png}


def export_saved_model(
    model,
    base_path: str,
    version: int | None = None,
    class_names: Sequence[str] | None = None,
    *,
    max_decoded_pixels: int = DEFAULT_MAX_DECODED_PIXELS,
    probe_size: tuple[int, int] = (64, 64),
    tolerance: float | None = None,
    reference=None,
    probe_data: tuple | None = None,
    min_class_agreement: float | None = None,
    verbose: bool = True,
) -> ExportResult:
    """Writes `model` as SavedModel version `base_path/<version>` with TF Serving signatures.

    Args:
        model: a Keras FCN (input `images` RGB 0..255 `(N, H, W, 3)`, output logits `(N, H, W, C)`).
        base_path: the model's base path, holding one numeric folder per version.
        version: the version number; None picks the next one (1 for an empty base path).
        class_names: C names stored in `assets.extra/class_names.txt`; None writes `class_0`, ...
        max_decoded_pixels: the most pixels one request computes in any signature (all images
            together); past it the request fails with INVALID_ARGUMENT before the model runs.
        probe_size: (height, width) of the random probe image used for the warm-up requests and
            the reload-and-compare check.
        tolerance: the largest |probability difference| between the reloaded SavedModel and the
            model that the check accepts; above it nothing is exported. None: 1e-4, or 5e-2 for a
            model computing in float16/bfloat16 (graph and eager round 8-bit mantissas differently).
        reference: the float32 model a low-precision `model` was made from (`keras_fcn.precision`);
            the check then also measures the exported model's class-id agreement with it.
        probe_data: `(images, masks)` for that measure (uint8 `(N, H, W, 3)`, class ids `(N, H, W)`,
            or lists of such arrays of varying sizes); with masks, the mean IU of both is compared.
            Default: the random probe image, scored against the reference's class ids.
        min_class_agreement: with `reference`, the smallest fraction of `probe_data` pixels whose class
            id must equal the reference's; below it nothing is exported. None: no such limit.
        verbose: print the path and the largest difference found by the check.

    Returns:
        An `ExportResult` (path, version, largest probability difference, class agreement).

    Raises:
        ValueError: on a bad version, class name count, pixel limit or tolerance, when the version
            exists or another export is writing it, or when the reloaded SavedModel differs from
            the model by more than `tolerance`, or agrees with `reference` on fewer pixels than
            `min_class_agreement` (the base path is then left as it was).

    Example:
    >>> result = export_saved_model(model, "models/fcn")  # doctest: +SKIP
    >>> result.path  # doctest: +SKIP
    'models/fcn/1'
    """
    import keras
    import tensorflow as tf

    num_classes = int(model.outputs[0].shape[-1])
    if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 0):
        raise ValueError(f"version must be a non-negative integer or None. Received: version={version!r}")
    if class_names is None:
        class_names = [f"class_{i}" for i in range(num_classes)]
    class_names = [str(name) for name in class_names]
    if len(class_names) != num_classes or any("\n" in name for name in class_names):
        raise ValueError(
            f"class_names must hold {num_classes} names (one per model class) without newlines. "
            f"Received: class_names={class_names!r}"
        )
    if max_decoded_pixels < 1:
        raise ValueError(f"max_decoded_pixels must be positive. Received: max_decoded_pixels={max_decoded_pixels}")
    if tolerance is None:
        low_precision = any(getattr(layer, "compute_dtype", None) in ("float16", "bfloat16") for layer in model.layers)
        tolerance = LOW_PRECISION_TOLERANCE if low_precision else DEFAULT_TOLERANCE
    if not tolerance >= 0:
        raise ValueError(f"tolerance must be a non-negative number. Received: tolerance={tolerance}")
    if min_class_agreement is not None and (reference is None or not 0 <= min_class_agreement <= 1):
        raise ValueError(
            "min_class_agreement must be a fraction in [0, 1] and needs the `reference` model. "
            f"Received: min_class_agreement={min_class_agreement}, "
            f"reference={'None' if reference is None else 'a model'}"
        )

    made_base_path = not os.path.isdir(base_path)
    os.makedirs(base_path, exist_ok=True)
    try:
        version, tmp_path = _reserve_version(base_path, version)
    except BaseException:
        _remove_if_empty(base_path, made_base_path)
        raise
    final_path = os.path.join(base_path, str(version))

    try:
        functions = build_serving_functions(model, max_decoded_pixels)
        archive = keras.export.ExportArchive()
        archive.track(model)
        for name, function in functions.items():
            archive.add_endpoint(name, function)
        archive.write_out(tmp_path, verbose=False)
        height, width = probe_size
        if height * width > max_decoded_pixels:  # the probe must pass serve_encoded's own limit
            scale = (max_decoded_pixels / (height * width)) ** 0.5
            height, width = max(int(height * scale), 1), max(int(width * scale), 1)
        probe = np.random.default_rng(0).integers(0, 256, (1, height, width, 3), dtype=np.uint8)
        probe_png = tf.io.encode_png(probe[0]).numpy()
        extra = os.path.join(tmp_path, ASSETS_EXTRA)
        os.makedirs(extra, exist_ok=True)
        with open(os.path.join(extra, CLASS_NAMES_FILE), "w", encoding="utf-8") as f:
            f.write("".join(name + "\n" for name in class_names))
        write_warmup_requests(os.path.join(extra, WARMUP_FILE), probe, probe_png)
        difference, agreement = _compare_with_model(tmp_path, model, probe, probe_png)
        report = None
        if reference is not None:
            report = _compare_with_reference(tmp_path, reference, probe_data or (probe, None))
        if not difference <= tolerance:  # NaN fails too
            raise ValueError(
                f"the reloaded SavedModel differs from the model by {difference:.3g} in probability "
                f"(more than tolerance={tolerance}); version {version} was not exported. "
                f"Received: tolerance={tolerance}"
            )
        if min_class_agreement is not None and not report["class_agreement"] >= min_class_agreement:
            raise ValueError(
                f"the exported model's class ids equal the float32 model's on {100 * report['class_agreement']:.2f}% "
                f"of {report['pixels']} pixels (fewer than min_class_agreement); version {version} was not exported. "
                f"Received: min_class_agreement={min_class_agreement}"
            )
        os.chmod(tmp_path, 0o755)  # servers may run as another user
        # Only exporters holding the reservation write this version; this catches anyone else
        # (a rename onto an empty folder would silently replace it).
        if version in list_versions(base_path):
            raise ValueError(
                f"version {version} appeared in {base_path} during the export. Received: version={version}"
            )
        os.rename(tmp_path, final_path)
    except BaseException:
        shutil.rmtree(tmp_path, ignore_errors=True)
        _remove_if_empty(base_path, made_base_path)
        raise
    result = ExportResult(final_path, version, difference, agreement, report)
    if verbose:
        print(
            f"Exported version {version} to {final_path}: reloaded SavedModel vs Keras model on a "
            f"{probe.shape[1]}x{probe.shape[2]} probe: max |probability difference| {difference:.3g}, "
            f"class ids agree on {100 * agreement:.2f}% of pixels"
        )
        if report is not None:
            line = (
                f"Against the float32 model: class ids agree on {100 * report['class_agreement']:.2f}% of "
                f"{report['pixels']} probe pixels; mean IU against its class ids {report['mean_iu_vs_reference']:.4f}"
            )
            if "mean_iu_difference" in report:
                line += (
                    f"; mean IU {report['mean_iu']:.4f} vs float32 {report['mean_iu_reference']:.4f} "
                    f"(difference {report['mean_iu_difference']:+.4f})"
                )
            print(line)
    return result


def _reserve_version(base_path: str, version: int | None) -> tuple[int, str]:
    """Reserves a version by making its hidden work folder `base_path/.export-<version>`.

    `os.mkdir` fails when the folder exists, so two concurrent exports never write the same
    version: without a `version`, the next free number is taken; with one, ValueError. The work
    folder is non-numeric (servers ignore it) and on the base path's file system (the final
    rename is atomic). Returns (version, work folder).
    """
    explicit = version is not None
    if version is None:
        version = (list_versions(base_path) or [0])[-1] + 1
    while True:
        if version in list_versions(base_path):
            if explicit:
                raise ValueError(f"version {version} already exists in {base_path}. Received: version={version}")
            version += 1
            continue
        work = os.path.join(base_path, f".export-{version}")
        try:
            os.mkdir(work)
        except FileExistsError:
            if explicit:
                raise ValueError(
                    f"version {version} is being exported to {base_path} by another export (or {work} was "
                    f"left by one that was killed). Received: version={version}"
                ) from None
            version += 1
            continue
        if version in list_versions(base_path):  # finished by another export since the check above
            os.rmdir(work)
            continue
        return version, work


def _remove_if_empty(path: str, made: bool) -> None:
    if made:
        try:
            os.rmdir(path)
        except OSError:
            pass


def softmax(logits) -> np.ndarray:
    """Softmax over the last axis in float64: the reference exported probabilities are checked against."""
    logits = np.asarray(logits, np.float64)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def write_warmup_requests(path: str, probe: np.ndarray, probe_png: bytes) -> None:
    """Writes one warm-up `PredictionLog` per signature (a TFRecord file TF Serving replays on load)."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    requests = [
        predict_pb2.PredictRequest(inputs={"images": tf.make_tensor_proto(probe)}),
        predict_pb2.PredictRequest(inputs={"image_bytes": tf.make_tensor_proto([probe_png])}),
        predict_pb2.PredictRequest(inputs={"image_bytes": tf.make_tensor_proto([probe_png])}),
    ]
    for request, name in zip(requests, (SERVING_DEFAULT, SERVE_ENCODED, SERVE_PNG), strict=True):
        request.model_spec.signature_name = name
    with tf.io.TFRecordWriter(path) as writer:
        for request in requests:
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())


def _compare_with_model(path: str, model, probe: np.ndarray, probe_png: bytes) -> tuple[float, float]:
    """Reloads the SavedModel at `path`; compares every signature with a numpy softmax of the model."""
    import tensorflow as tf

    expected = softmax(model(probe.astype(np.float32), training=False))
    loaded = tf.saved_model.load(path)
    answers = [
        loaded.signatures[SERVING_DEFAULT](images=tf.constant(probe)),
        loaded.signatures[SERVE_ENCODED](image_bytes=tf.constant([probe_png])),
    ]
    difference = max(float(np.abs(a["probabilities"].numpy() - expected).max()) for a in answers)
    class_maps = [a["class_ids"].numpy() for a in answers]
    png = loaded.signatures[SERVE_PNG](image_bytes=tf.constant([probe_png]))["class_map_png_bytes"]
    # decode_png rescales 8-bit images read as 16-bit: read each at the depth it was written with.
    depth = tf.uint8 if expected.shape[-1] <= 256 else tf.uint16
    class_maps.append(tf.io.decode_png(png[0], dtype=depth)[None, ..., 0].numpy())
    agreement = min(float(np.mean(ids == expected.argmax(-1))) for ids in class_maps)
    return difference, agreement


def _compare_with_reference(path: str, reference, probe_data) -> dict:
    """The exported `serving_default`'s class ids against the float32 `reference` model's, per image."""
    import tensorflow as tf

    serving_default = tf.saved_model.load(path).signatures[SERVING_DEFAULT]
    return compare_class_ids(
        lambda batch: serving_default(images=tf.constant(batch))["class_ids"].numpy(), reference, probe_data
    )


def compare_class_ids(run, reference, probe_data) -> dict:
    """Class ids of an exported model, `run(uint8 batch of one) -> (1, H, W)`, against `reference`'s, per image.

    Args:
        run: the exported model (a signature, an ONNX or LiteRT runner) answering class ids.
        reference: the Keras model it must agree with (logits).
        probe_data: `(images, masks)`: uint8 `(H, W, 3)` images, and their true class ids or None.

    Returns:
        `keras_fcn.precision.agreement_report` over all the pixels, plus `pixels` and `images`.

    Raises:
        ValueError: masks given, but not one per image.
    """
    from keras_fcn.precision import agreement_report

    images, masks = probe_data
    masks = [None] * len(images) if masks is None else list(masks)
    if len(masks) != len(images):
        raise ValueError(f"probe_data needs one mask per image. Received: {len(images)} images, {len(masks)} masks")
    got, expected = [], []
    for image in images:
        image = np.asarray(image, np.uint8)[None]
        got.append(np.asarray(run(image)).ravel())
        expected.append(np.asarray(reference(image.astype(np.float32), training=False)).argmax(-1).ravel())
    labels = None if masks[0] is None else np.concatenate([np.asarray(m).ravel() for m in masks])
    num_classes = int(reference.outputs[0].shape[-1])
    report = agreement_report(np.concatenate(expected), np.concatenate(got), num_classes, labels)
    report.update(pixels=int(sum(ids.size for ids in got)), images=len(images))
    return report

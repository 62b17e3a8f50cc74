"""ONNX and LiteRT (TFLite) exports: one file each, checked with its own runtime before it is put in place.

Both files hold the same function as the SavedModel's `serving_default`, preprocessing included:

- input `images`: uint8 `(N, H, W, 3)` RGB, any N, H and W (the dimensions are dynamic);
- outputs `class_ids` int32 `(N, H, W)` and `probabilities` float32 `(N, H, W, C)`.

`export_onnx(model, "fcn.onnx")` converts with tf2onnx (opset 17 by default) and runs the result with
onnxruntime; `export_litert(model, "fcn.tflite")` converts with `tf.lite.TFLiteConverter` (TFLite built-in
ops only, so the plain LiteRT runtime runs it) and runs it with `ai_edge_litert`'s interpreter. Each
writes a temporary file beside the output, compares it with the Keras model on probe images (one of
`probe_size`, and a batch of two at an odd size that exercises the dynamic dimensions), and renames
it into place only when the largest probability difference is within `tolerance`.

The extra packages come with `pip install "keras_fcn[onnx]"` and `pip install "keras_fcn[litert]"`.
tf2onnx's conversion takes tens of times the weights' size in memory (see the README).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Callable, Sequence

import numpy as np

from keras_fcn.atomic import replacing
from keras_fcn.export import (
    DEFAULT_TOLERANCE,
    LOW_PRECISION_TOLERANCE,
    SERVING_DEFAULT,
    build_serving_functions,
    softmax,
)

FORMATS = ("saved_model", "onnx", "litert")
DEFAULT_OPSET = 17  # old enough for every current runtime; onnxruntime runs it everywhere
MIN_OPSET = 17
# Metadata key of the ONNX file holding the class names, one a line.
ONNX_CLASS_NAMES_KEY = "class_names"


@dataclasses.dataclass(frozen=True)
class FileExportResult:
    """What `export_onnx` / `export_litert` wrote and how closely the runtime matches the Keras model.

    Attributes:
        path: the written file.
        max_abs_difference: largest |probability difference| between the runtime and the Keras model
            over the probe images.
        class_agreement: fraction of probe pixels whose class id agrees.
    """

    path: str
    max_abs_difference: float
    class_agreement: float


def _missing(format_name: str, extra: str, error: ImportError) -> ImportError:
    return ImportError(
        f"The {format_name} export needs packages that are not installed ({error.name or error}): "
        f'pip install "keras_fcn[{extra}]". Received: format={format_name.lower()!r}'
    )


def _resolve_tolerance(model, tolerance: float | None) -> float:
    if tolerance is None:
        low = any(getattr(layer, "compute_dtype", None) in ("float16", "bfloat16") for layer in model.layers)
        tolerance = LOW_PRECISION_TOLERANCE if low else DEFAULT_TOLERANCE
    if not tolerance >= 0:
        raise ValueError(f"tolerance must be a non-negative number. Received: tolerance={tolerance}")
    return float(tolerance)


def _check_output(path: str, suffix: str, force: bool) -> str:
    path = os.fspath(path)
    if not path.endswith(suffix):
        raise ValueError(f"Expected an output path ending in {suffix!r}. Received: output={path!r}")
    if os.path.isdir(path):
        raise ValueError(f"The output is a folder, not a file. Received: output={path!r}")
    if os.path.exists(path) and not force:
        raise FileExistsError(
            f"The output exists; pass force=True (--force) to overwrite it. Received: output={path!r}"
        )
    return path


def probe_images(probe_size: tuple[int, int] = (64, 64)) -> list[np.ndarray]:
    """The seeded uint8 probes a converted file is checked on: one `probe_size` image, two of an odd size."""
    height, width = (int(d) for d in probe_size)
    if height < 1 or width < 1:
        raise ValueError(f"probe_size must hold two positive sizes. Received: probe_size={probe_size}")
    rng = np.random.default_rng(0)
    odd = (max(height - 19, 1) | 1, max(width - 27, 1) | 1)  # not multiples of the stride 32
    return [
        rng.integers(0, 256, (1, height, width, 3), dtype=np.uint8),
        rng.integers(0, 256, (2, *odd, 3), dtype=np.uint8),
    ]


def compare_with_model(
    run: Callable[[np.ndarray], dict], model, probes: Sequence[np.ndarray], verbose: bool = True
) -> tuple[float, float]:
    """Runs `run(images) -> {"class_ids", "probabilities"}` on each probe against a numpy softmax of the model.

    Args:
        run: the converted model, called on a uint8 batch.
        model: the Keras model (logits).
        probes: uint8 batches `(N, H, W, 3)`.
        verbose: show a progress bar over the probes.

    Returns:
        (largest |probability difference|, smallest fraction of pixels whose class id agrees).

    Raises:
        ValueError: an output of the wrong shape (both shapes named).
    """
    import keras

    progress = keras.utils.Progbar(len(probes), unit_name="probe", verbose=int(verbose))
    difference, agreement = 0.0, 1.0
    for step, images in enumerate(probes, start=1):
        expected = softmax(keras.ops.convert_to_numpy(model(images.astype(np.float32), training=False)))
        got = run(images)
        probabilities, class_ids = np.asarray(got["probabilities"]), np.asarray(got["class_ids"])
        if probabilities.shape != expected.shape or class_ids.shape != expected.shape[:-1]:
            raise ValueError(
                f"The converted model answered shapes {probabilities.shape} and {class_ids.shape} for images of "
                f"shape {images.shape}; expected {expected.shape} and {expected.shape[:-1]}. "
                f"Received: images.shape={images.shape}"
            )
        difference = max(difference, float(np.abs(probabilities - expected).max()))  # NaN propagates
        if np.isnan(probabilities).any():
            difference = float("nan")
        agreement = min(agreement, float(np.mean(class_ids == expected.argmax(-1))))
        progress.update(step, values=[("max_difference", difference)])
    return difference, agreement


def _write_checked(
    path: str,
    content: bytes,
    run_file: Callable[[str], Callable[[np.ndarray], dict]],
    model,
    probes: Sequence[np.ndarray],
    tolerance: float,
    format_name: str,
    verbose: bool,
) -> FileExportResult:
    """Writes `content` to a temporary file beside `path`, checks it, then renames it to `path`."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with replacing(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(content)
        difference, agreement = compare_with_model(run_file(tmp), model, probes, verbose=verbose)
        if not difference <= tolerance:  # NaN fails too
            raise ValueError(
                f"the {format_name} file differs from the model by {difference:.3g} in probability (more than "
                f"tolerance={tolerance}); {path} was not written. Received: tolerance={tolerance}"
            )
    if verbose:
        sizes = ", ".join("x".join(str(d) for d in p.shape[:3]) for p in probes)
        print(
            f"Exported {format_name} to {path} ({os.path.getsize(path) / 1e6:.1f} MB): {format_name} runtime vs "
            f"Keras model on probes {sizes}: max |probability difference| {difference:.3g}, class ids agree on "
            f"{100 * agreement:.2f}% of pixels"
        )
    return FileExportResult(path, difference, agreement)


def export_onnx(
    model,
    path: str | os.PathLike,
    *,
    opset: int = DEFAULT_OPSET,
    class_names: Sequence[str] | None = None,
    probe_size: tuple[int, int] = (64, 64),
    tolerance: float | None = None,
    force: bool = False,
    verbose: bool = True,
) -> FileExportResult:
    """Writes `model` as an ONNX file (input `images` uint8, outputs `class_ids` and `probabilities`).

    Args:
        model: a Keras FCN (input RGB 0..255 `(N, H, W, 3)`, output logits `(N, H, W, C)`).
        path: the file to write, ending in `.onnx`.
        opset: the ONNX opset, at least 17.
        class_names: C names stored in the file's metadata under "class_names" (one a line); None: none.
        probe_size: (height, width) of the first probe image of the check.
        tolerance: the largest |probability difference| between onnxruntime and the model that the check
            accepts. None: 1e-4, or 5e-2 for a model computing in float16/bfloat16.
        force: overwrite an existing file.
        verbose: show the check's progress and print its result.

    Returns:
        A `FileExportResult`.

    Raises:
        ValueError: a bad argument, or a converted file that differs from the model by more than
            `tolerance` (nothing is written then). FileExistsError: `path` exists and not `force`.
        ImportError: tf2onnx, onnx or onnxruntime missing (`pip install "keras_fcn[onnx]"`).

    Example:
    >>> export_onnx(model, "fcn.onnx")  # doctest: +SKIP
    >>> session = onnxruntime.InferenceSession("fcn.onnx")  # doctest: +SKIP
    >>> class_ids, probabilities = session.run(None, {"images": uint8_images})  # doctest: +SKIP
    """
    path = _check_output(path, ".onnx", force)
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < MIN_OPSET:
        raise ValueError(f"opset must be an integer of at least {MIN_OPSET}. Received: opset={opset!r}")
    num_classes = int(model.outputs[0].shape[-1])
    if class_names is not None:
        class_names = [str(name) for name in class_names]
        if len(class_names) != num_classes or any("\n" in name for name in class_names):
            raise ValueError(
                f"class_names must hold {num_classes} names (one per model class) without newlines. "
                f"Received: class_names={class_names!r}"
            )
    tolerance = _resolve_tolerance(model, tolerance)
    probes = probe_images(probe_size)
    try:
        import onnxruntime
        import tf2onnx
    except ImportError as error:
        raise _missing("ONNX", "onnx", error) from None
    import logging

    import tensorflow as tf

    from keras_fcn.gemm_conv import with_plain_convolutions

    # ONNX has no ExtractImagePatches: fc6 goes out as the plain convolution it equals.
    function = build_serving_functions(with_plain_convolutions(model))[SERVING_DEFAULT]
    signature = [tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")]
    tf2onnx_logger = logging.getLogger("tf2onnx")
    level = tf2onnx_logger.level
    tf2onnx_logger.setLevel(logging.ERROR)  # one INFO line per rewrite otherwise
    try:
        proto, _ = tf2onnx.convert.from_function(function, signature, opset=opset)
    finally:
        tf2onnx_logger.setLevel(level)
    if class_names is not None:
        entry = proto.metadata_props.add()
        entry.key, entry.value = ONNX_CLASS_NAMES_KEY, "\n".join(class_names)

    def run_file(file_path):
        session = onnxruntime.InferenceSession(file_path, providers=["CPUExecutionProvider"])
        names = [output.name for output in session.get_outputs()]
        return lambda images: dict(zip(names, session.run(names, {"images": images}), strict=True))

    return _write_checked(path, proto.SerializeToString(), run_file, model, probes, tolerance, "ONNX", verbose)


def export_litert(
    model,
    path: str | os.PathLike,
    *,
    probe_size: tuple[int, int] = (64, 64),
    tolerance: float | None = None,
    force: bool = False,
    verbose: bool = True,
) -> FileExportResult:
    """Writes `model` as a LiteRT (TFLite) file with signature `serving_default` (TFLite built-in ops only).

    The input `images` is uint8 `(N, H, W, 3)` with dynamic N, H and W: the interpreter's signature
    runner resizes it to each call's images (`interpreter.resize_tensor_input` then `allocate_tensors`
    without it). Outputs: `class_ids` int32 `(N, H, W)`, `probabilities` float32 `(N, H, W, C)`.

    Args:
        model: a Keras FCN (input RGB 0..255 `(N, H, W, 3)`, output logits `(N, H, W, C)`).
        path: the file to write, ending in `.tflite`.
        probe_size: (height, width) of the first probe image of the check.
        tolerance: the largest |probability difference| between the LiteRT interpreter and the model that
            the check accepts. None: 1e-4, or 5e-2 for a model computing in float16/bfloat16.
        force: overwrite an existing file.
        verbose: show the check's progress and print its result.

    Returns:
        A `FileExportResult`.

    Raises:
        ValueError: a bad argument, or a converted file that differs from the model by more than
            `tolerance` (nothing is written then). FileExistsError: `path` exists and not `force`.
        ImportError: `ai_edge_litert` missing (`pip install "keras_fcn[litert]"`).

    Example:
    >>> export_litert(model, "fcn.tflite")  # doctest: +SKIP
    >>> runner = ai_edge_litert.interpreter.Interpreter("fcn.tflite").get_signature_runner()  # doctest: +SKIP
    >>> runner(images=uint8_images)["class_ids"]  # doctest: +SKIP
    """
    path = _check_output(path, ".tflite", force)
    tolerance = _resolve_tolerance(model, tolerance)
    probes = probe_images(probe_size)
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as error:
        raise _missing("LiteRT", "litert", error) from None
    import keras
    import tensorflow as tf

    # Converting from a SavedModel freezes the weights into the file; a concrete function's variables
    # would stay resource variables that the interpreter reads uninitialised.
    from keras_fcn.gemm_conv import with_plain_convolutions

    plain = with_plain_convolutions(model)  # TFLite's built-in ops have no ExtractImagePatches
    with tempfile.TemporaryDirectory(prefix="keras-fcn-litert-") as saved:
        archive = keras.export.ExportArchive()
        archive.track(plain)
        archive.add_endpoint(SERVING_DEFAULT, build_serving_functions(plain)[SERVING_DEFAULT])
        archive.write_out(saved, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved, signature_keys=[SERVING_DEFAULT])
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        content = converter.convert()

    def run_file(file_path):
        runner = Interpreter(model_path=file_path).get_signature_runner(SERVING_DEFAULT)
        return lambda images: runner(images=images)

    return _write_checked(path, content, run_file, model, probes, tolerance, "LiteRT", verbose)

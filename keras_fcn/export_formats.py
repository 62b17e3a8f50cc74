"""ONNX and LiteRT (TFLite) exports: one file each, checked with its own runtime before it is put in place.

Both files hold the same function as the SavedModel's `serving_default`, preprocessing included:

- input `images`: uint8 `(N, H, W, 3)` RGB, any N, H and W (the dimensions are dynamic);
- outputs `class_ids` int32 `(N, H, W)` and `probabilities` float32 `(N, H, W, C)`.

`export_onnx(model, "fcn.onnx")` writes the layers into an ONNX graph (`keras_fcn.onnx_graph`, opset 17 by
default) and runs the result with onnxruntime; `export_litert(model, "fcn.tflite")` converts with
`tf.lite.TFLiteConverter` (TFLite built-in ops only, so the plain LiteRT runtime runs it) and runs it with
`ai_edge_litert`'s interpreter. Each
writes a temporary file beside the output, compares it with the Keras model on probe images (one of
`probe_size`, and a batch of two at an odd size that exercises the dynamic dimensions), and renames
it into place only when the largest probability difference is within `tolerance`.

The extra packages come with `pip install "keras_fcn[onnx]"` and `pip install "keras_fcn[litert]"`.
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
QUANTIZATIONS = ("int8",)
# An int8 file whose class ids differ from the float32 model's on more pixels than this is refused.
INT8_MIN_CLASS_AGREEMENT = 0.99


@dataclasses.dataclass(frozen=True)
class FileExportResult:
    """What `export_onnx` / `export_litert` wrote and how closely the runtime matches the Keras model.

    Attributes:
        path: the written file.
        max_abs_difference: largest |probability difference| between the runtime and the Keras model
            over the probe images.
        class_agreement: fraction of probe pixels whose class id agrees.
        reference_report: for an int8 file, how its class ids compare with the float32 model's on the check
            images (`keras_fcn.precision.agreement_report`, plus `pixels`); None otherwise.
    """

    path: str
    max_abs_difference: float
    class_agreement: float
    reference_report: dict | None = None


def onnx_runner(path: str, outputs: Sequence[str] | None = None) -> Callable[[np.ndarray], dict]:
    """`images -> {output name: array}` of an ONNX file in onnxruntime's CPU session (`outputs`: all)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = list(outputs) if outputs else [output.name for output in session.get_outputs()]
    return lambda images: dict(zip(names, session.run(names, {"images": images}), strict=True))


def litert_runner(path: str, num_threads: int | None = None) -> Callable[[np.ndarray], dict]:
    """`images -> {output name: array}` of a LiteRT file's `serving_default` (the interpreter's default
    threads: one, unless `num_threads`)."""
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=path, num_threads=num_threads).get_signature_runner(SERVING_DEFAULT)
    return lambda images: runner(images=images)


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
    write: Callable[[str], None],
    run_file: Callable[[str], Callable[[np.ndarray], dict]],
    model,
    probes: Sequence[np.ndarray],
    tolerance: float,
    format_name: str,
    verbose: bool,
    gate: Callable | None = None,
) -> FileExportResult:
    """`write(tmp)`s a temporary file beside `path`, checks it, then renames it to `path`.

    `gate(run)`, when given, measures the file further and raises ValueError to refuse it; its report is
    the result's `reference_report`.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    report = None
    with replacing(path) as tmp:
        write(tmp)
        run = run_file(tmp)
        difference, agreement = compare_with_model(run, model, probes, verbose=verbose)
        if not difference <= tolerance:  # NaN fails too
            raise ValueError(
                f"the {format_name} file differs from the model by {difference:.3g} in probability (more than "
                f"tolerance={tolerance}); {path} was not written. Received: tolerance={tolerance}"
            )
        if gate is not None:
            report = gate(run)
    if verbose:
        sizes = ", ".join("x".join(str(d) for d in p.shape[:3]) for p in probes)
        print(
            f"Exported {format_name} to {path} ({os.path.getsize(path) / 1e6:.1f} MB): {format_name} runtime vs "
            f"Keras model on probes {sizes}: max |probability difference| {difference:.3g}, class ids agree on "
            f"{100 * agreement:.2f}% of pixels"
        )
        if report is not None:
            print(_report_line(report))
    return FileExportResult(path, difference, agreement, report)


def _report_line(report: dict) -> str:
    line = (
        f"int8 vs float32 on {report['images']} check images: class ids agree on "
        f"{100 * report['class_agreement']:.2f}% of {report['pixels']} pixels; mean IU against float32's class "
        f"ids {report['mean_iu_vs_reference']:.4f}"
    )
    if "mean_iu" in report:
        line += (
            f"; mean IU {report['mean_iu']:.4f} vs float32 {report['mean_iu_reference']:.4f} "
            f"({100 * report['mean_iu_difference']:+.2f} points)"
        )
    return line


def _int8_check(model, path, quantize, calibration_images, probe_data, min_class_agreement, tolerance):
    """(gate, tolerance) of an export: with int8, the class-id check against the float32 model, and no
    probability tolerance unless one is given; otherwise no gate and the usual tolerance."""
    if quantize not in (None, *QUANTIZATIONS):
        raise ValueError(f"quantize must be one of {QUANTIZATIONS} or None. Received: quantize={quantize!r}")
    if not quantize:
        if probe_data is not None or min_class_agreement is not None or calibration_images is not None:
            raise ValueError("calibration_images, probe_data and min_class_agreement go with quantize='int8'. "
                             "Received: quantize=None")  # fmt: skip
        return None, _resolve_tolerance(model, tolerance)
    if calibration_images is None or not len(calibration_images):
        raise ValueError("int8 quantization needs calibration images. Received: calibration_images=None")
    min_class_agreement = INT8_MIN_CLASS_AGREEMENT if min_class_agreement is None else min_class_agreement
    if not 0 <= min_class_agreement <= 1:
        raise ValueError(f"min_class_agreement must be a fraction in [0, 1]. "
                         f"Received: min_class_agreement={min_class_agreement}")  # fmt: skip
    gate = _agreement_gate(model, probe_data or (calibration_images, None), min_class_agreement, path)
    return gate, _resolve_tolerance(model, float("inf") if tolerance is None else tolerance)  # judged by class ids


def _agreement_gate(model, probe_data, min_class_agreement: float, path: str):
    """`gate(run)` for `_write_checked`: the file's class ids against the float32 model's on `probe_data`."""
    from keras_fcn.export import compare_class_ids

    if not len(probe_data[0]):
        raise ValueError("the int8 check needs images: probe_data holds none. Received: probe_data=([], ...)")

    def gate(run) -> dict:
        report = compare_class_ids(lambda batch: run(batch)["class_ids"], model, probe_data)
        if not report["class_agreement"] >= min_class_agreement:
            raise ValueError(
                f"{_report_line(report)}: fewer than min_class_agreement; {path} was not written. "
                f"Received: min_class_agreement={min_class_agreement}"
            )
        return report

    return gate


def quantize_onnx_int8(float_path: str, int8_path: str, calibration_images, num_classes: int) -> None:
    """Static int8 quantization of an FCN's ONNX file with onnxruntime (QDQ, per-channel int8 weights).

    Activations are uint8 with ranges from `calibration_images` (MinMax); weights int8 per output channel.
    The convolutions are quantized except the first (its input is the mean-subtracted pixels, whose three
    channels carry the image) and the score layers (the C-channel 1x1 convolutions whose outputs are the
    logits, and in the at-once net the inputs scaled by 1e-2 and 1e-4): on the demo's model, quantizing
    those too cost 3.0 mean IU points, keeping them in float32 cost nothing measurable.
    """
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    graph = onnx.load(float_path, load_external_data=False).graph
    shapes = {tensor.name: list(tensor.dims) for tensor in graph.initializer}
    convs = [node for node in graph.node if node.op_type == "Conv"]
    kept = [convs[0].name] + [node.name for node in convs if shapes[node.input[1]][0] == num_classes]
    del graph

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._images = iter(calibration_images)

        def get_next(self):
            image = next(self._images, None)
            return None if image is None else {"images": np.asarray(image, np.uint8)[None]}

    quantize_static(
        float_path, int8_path, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=["Conv"],
        nodes_to_exclude=kept,  # MinMax calibration keeps two scalars a tensor per image, not the tensors
    )  # fmt: skip


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
    quantize: str | None = None,
    calibration_images: Sequence[np.ndarray] | None = None,
    probe_data: tuple | None = None,
    min_class_agreement: float | None = None,
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
        quantize: "int8": static int8 quantization (`quantize_onnx_int8`); the outputs keep their types
            (`probabilities` float32, dequantized; `class_ids` int32). None: float32.
        calibration_images: with int8, uint8 `(H, W, 3)` images whose activations set the int8 ranges.
        probe_data: with int8, `(images, masks)` (masks may be None) on which the file's class ids are
            compared with the float32 model's, and both mean IUs when there are masks. Default: the
            calibration images, without masks.
        min_class_agreement: with int8, the smallest fraction of `probe_data` pixels whose class id must
            equal the float32 model's; below it nothing is written. Default 0.99.

    Returns:
        A `FileExportResult` (with int8, its `reference_report`).

    Raises:
        ValueError: a bad argument, a converted file that differs from the model by more than `tolerance`,
            or an int8 file below `min_class_agreement` (nothing is written then). FileExistsError: `path`
            exists and not `force`.
        ImportError: onnx or onnxruntime missing (`pip install "keras_fcn[onnx]"`).

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
    gate, tolerance = _int8_check(model, path, quantize, calibration_images, probe_data, min_class_agreement,
                                  tolerance)  # fmt: skip
    probes = probe_images(probe_size)
    try:
        import onnx  # noqa: F401 (the writer's and the runner's, checked before any work)
        import onnxruntime  # noqa: F401
    except ImportError as error:
        raise _missing("ONNX", "onnx", error) from None
    from keras_fcn.onnx_graph import model_to_onnx

    proto = model_to_onnx(model, opset)
    if class_names is not None:
        entry = proto.metadata_props.add()
        entry.key, entry.value = ONNX_CLASS_NAMES_KEY, "\n".join(class_names)

    def write(tmp: str) -> None:
        nonlocal proto
        float_path = tmp + ".float32.onnx" if quantize else tmp
        try:
            with open(float_path, "wb") as handle:
                handle.write(proto.SerializeToString())
            proto = None  # the weights' copy goes before the runtime loads its own
            if quantize:
                quantize_onnx_int8(float_path, tmp, calibration_images, num_classes)
        finally:
            if quantize and os.path.exists(float_path):
                os.remove(float_path)

    name = "ONNX int8" if quantize else "ONNX"
    return _write_checked(path, write, onnx_runner, model, probes, tolerance, name, verbose, gate)


def export_litert(
    model,
    path: str | os.PathLike,
    *,
    probe_size: tuple[int, int] = (64, 64),
    tolerance: float | None = None,
    force: bool = False,
    verbose: bool = True,
    quantize: str | None = None,
    calibration_images: Sequence[np.ndarray] | None = None,
    probe_data: tuple | None = None,
    min_class_agreement: float | None = None,
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
        quantize: "int8": post-training integer quantization (int8 weights and activations, ranges from a
            representative dataset, float kernels only where TFLite has no int8 one); the outputs keep
            their types. None: float32.
        calibration_images, probe_data, min_class_agreement: with int8, as in `export_onnx`.

    Returns:
        A `FileExportResult` (with int8, its `reference_report`).

    Raises:
        ValueError: a bad argument, a converted file that differs from the model by more than `tolerance`,
            or an int8 file below `min_class_agreement` (nothing is written then). FileExistsError: `path`
            exists and not `force`.
        ImportError: `ai_edge_litert` missing (`pip install "keras_fcn[litert]"`).

    Example:
    >>> export_litert(model, "fcn.tflite")  # doctest: +SKIP
    >>> runner = ai_edge_litert.interpreter.Interpreter("fcn.tflite").get_signature_runner()  # doctest: +SKIP
    >>> runner(images=uint8_images)["class_ids"]  # doctest: +SKIP
    """
    path = _check_output(path, ".tflite", force)
    gate, tolerance = _int8_check(model, path, quantize, calibration_images, probe_data, min_class_agreement,
                                  tolerance)  # fmt: skip
    probes = probe_images(probe_size)
    try:
        from ai_edge_litert.interpreter import Interpreter  # noqa: F401 (the runner's, checked before any work)
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
        if quantize:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = lambda: ({"images": np.asarray(image, np.uint8)[None]}
                                                        for image in calibration_images)  # fmt: skip
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
        content = converter.convert()

    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            handle.write(content)

    name = "LiteRT int8" if quantize else "LiteRT"
    return _write_checked(path, write, litert_runner, model, probes, tolerance, name, verbose, gate)

"""Inference in float32, bfloat16 or float16: pick a precision for the machine, rebuild a model in it.

`with_precision(model, "bfloat16")` rebuilds a model from its config with every layer but the outputs
in bfloat16 (weights stored in bfloat16 too: the compute rounds them to 8-bit mantissas either way, and
the fc6 kernel is then not cast on every call) and copies the weights. Outputs stay float32, so the
serving signatures keep uint8 images in and float32 probabilities out. Large-kernel plain Conv2D layers
(fc6 of models saved before `GEMMConv2D`) are rebuilt as `GEMMConv2D` on the way.

`auto` is bfloat16 on CPUs with AVX512_BF16 or AMX (their matrix units run bfloat16 at 2-16x the float32
rate), float16 on GPUs, float32 otherwise.
"""

from __future__ import annotations

import numpy as np

PRECISIONS = ("float32", "bfloat16", "float16", "auto")
# /proc/cpuinfo flags of CPUs with bfloat16 dot-product instructions (AVX-512) or tiles (AMX).
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(path: str = "/proc/cpuinfo") -> set[str]:
    """The CPU feature flags listed in `path` (empty where the file does not exist, e.g. off Linux)."""
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "flags":
                    return set(value.split())
    except OSError:
        pass
    return set()


def resolve_precision(precision: str, *, gpus: int | None = None, flags: set[str] | None = None) -> str:
    """The precision to compute in: `precision` itself, or for "auto" the machine's best.

    Args:
        precision: one of `PRECISIONS`.
        gpus: number of GPUs (default: those TensorFlow sees).
        flags: CPU flags (default: `cpu_flags()`).

    Returns:
        "float32", "bfloat16" or "float16".

    Raises:
        ValueError: for an unknown precision.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"Expected precision in {PRECISIONS}. Received: precision={precision!r}")
    if precision != "auto":
        return precision
    if gpus is None:
        import tensorflow as tf

        gpus = len(tf.config.list_physical_devices("GPU"))
    if gpus:
        return "float16"
    flags = cpu_flags() if flags is None else flags
    return "bfloat16" if any(flag in flags for flag in BF16_CPU_FLAGS) else "float32"


def model_precision(model) -> str:
    """The compute dtype of most of `model`'s weighted layers ("float32", "bfloat16" or "float16")."""
    dtypes = [layer.compute_dtype for layer in model.layers if layer.weights]
    return max(set(dtypes), key=dtypes.count) if dtypes else "float32"


def with_precision(model, precision: str):
    """`model` rebuilt to compute in `precision`, with the same weights; outputs stay float32.

    Args:
        model: a functional Keras model (an FCN from `keras_fcn.models` or a loaded `.keras` file).
        precision: one of `PRECISIONS` ("auto" is resolved by `resolve_precision`).

    Returns:
        `model` itself when it already computes in `precision` and has no Conv2D to swap for a
        `GEMMConv2D`; otherwise a new model.

    Raises:
        ValueError: for an unknown precision.

    Example:
    >>> fast = with_precision(keras.saving.load_model("fcn.keras"), "auto")  # doctest: +SKIP
    """
    import keras

    from keras_fcn.functional import ends
    from keras_fcn.gemm_conv import as_gemm_conv, wants_gemm

    precision = resolve_precision(precision)
    swap = [layer.name for layer in model.layers if wants_gemm(layer)]
    if model_precision(model) == precision and not swap:
        return model
    # The output layers keep their dtype (float32 logits: losses, softmax and argmax need the range).
    outputs = {id(model.get_layer(name)) for name in ends(model)[1]}

    def clone(layer):
        config = layer.get_config()
        if id(layer) not in outputs:
            config["dtype"] = precision
        return as_gemm_conv(layer) if wants_gemm(layer) else layer.__class__.from_config(config)

    rebuilt = keras.models.clone_model(model, clone_function=clone)
    if swap and precision != "float32":  # as_gemm_conv kept the old dtype; rebuild those in precision
        rebuilt = keras.models.clone_model(rebuilt, clone_function=clone)
    for source, target in zip(model.layers, rebuilt.layers, strict=True):
        target.set_weights([np.asarray(w) for w in source.get_weights()])
    return rebuilt


def agreement_report(reference_ids, ids, num_classes: int, labels=None) -> dict:
    """How far class ids `ids` are from a float32 model's `reference_ids` (same shapes, any layout).

    Args:
        reference_ids, ids: integer class ids of the float32 model and of the low-precision one.
        num_classes: number of classes.
        labels: true class ids, when known (255 ignored).

    Returns:
        `{"class_agreement": fraction of equal pixels, "mean_iu_vs_reference": mean IU of `ids` scored
        against `reference_ids`}`, plus with `labels`: `"mean_iu_reference"`, `"mean_iu"` and
        `"mean_iu_difference"` (low precision minus float32).
    """
    from keras_fcn.metrics import confusion_matrix, scores

    reference_ids, ids = np.asarray(reference_ids), np.asarray(ids)
    report = {
        "class_agreement": float(np.mean(reference_ids == ids)),
        "mean_iu_vs_reference": float(scores(confusion_matrix(reference_ids, ids, num_classes))["mean_iu"]),
    }
    if labels is not None:
        reference = scores(confusion_matrix(labels, reference_ids, num_classes))["mean_iu"]
        low = scores(confusion_matrix(labels, ids, num_classes))["mean_iu"]
        report.update(mean_iu_reference=float(reference), mean_iu=float(low), mean_iu_difference=float(low - reference))
    return report

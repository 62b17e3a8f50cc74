"""Export -> serve -> query over gRPC -> compare with the in-process model, in one call."""

from __future__ import annotations

import os
import time

import numpy as np

from .client import FCNClient
from .server import ModelServer


def roundtrip_check(model, images, workdir: str, model_name: str = "fcn", class_names=None) -> dict:
    """Exports `model`, serves it locally on free ports, queries it with `FCNClient` over gRPC and
    compares the answer with the in-process Keras prediction.

    Args:
        model: a Keras FCN (input `images` RGB 0..255, output logits).
        images: `(N, H, W, 3)` uint8 images of one size.
        workdir: a folder; the SavedModel goes to `workdir/<model_name>/<version>`.
        model_name: the served model's name.
        class_names: optional class names stored with the export.

    Returns:
        A dict: `export_path`, `version`, `export_max_abs_difference` (reloaded SavedModel vs
        model), `max_abs_difference` (gRPC probabilities vs the model's softmax),
        `class_agreement` (fraction of equal class ids, over the compact PNG class maps),
        `grpc_seconds` (one request's round trip) and `in_process_seconds` (the model call).
    """
    from keras_fcn.export import export_saved_model, softmax

    images = np.asarray(images, np.uint8)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be (N, H, W, 3) uint8. Received: images.shape={images.shape}")
    result = export_saved_model(model, os.path.join(workdir, model_name), class_names=class_names, verbose=False)
    started = time.perf_counter()
    logits = np.asarray(model(images.astype(np.float32), training=False))
    in_process_seconds = time.perf_counter() - started
    expected = softmax(logits)
    with ModelServer(model_name, os.path.dirname(result.path), port=0, rest_port=None) as server:
        with FCNClient(server.grpc_address, model_name, version=result.version) as client:
            started = time.perf_counter()
            compact = client.predict(images)
            grpc_seconds = time.perf_counter() - started
            full = client.predict(images, probabilities=True)
    return {
        "export_path": result.path,
        "version": result.version,
        "export_max_abs_difference": result.max_abs_difference,
        "max_abs_difference": float(np.abs(full.probabilities - expected).max()),
        "class_agreement": float(np.mean(compact.class_ids == expected.argmax(-1))),
        "grpc_seconds": grpc_seconds,
        "in_process_seconds": in_process_seconds,
    }

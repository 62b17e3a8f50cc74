"""REST writes float32 outputs as float32 text: the shortest decimals that read back as the same float32s."""

from __future__ import annotations

import json
import re
import urllib.request

import numpy as np
from serving_testing import build_test_model, random_images

from keras_fcn.export import export_saved_model
from keras_fcn.serving import FCNClient, ModelServer
from keras_fcn.serving.rest import float32_decimals


def _float32_values(rng: np.random.Generator) -> np.ndarray:
    """Probabilities, every magnitude (subnormals and the largest finite), random bit patterns, specials."""
    with np.errstate(all="ignore"):
        values = np.concatenate([
            rng.random(20000).astype(np.float32),
            (rng.standard_normal(20000) * 10.0 ** rng.integers(-45, 39, 20000)).astype(np.float32),
            rng.integers(0, 2**32, 20000, dtype=np.uint64).astype(np.uint32).view(np.float32),
            np.array([0.1, 1 / 3, 0.0, -0.0, 1e-45, -1.4e-45, 3.4028235e38, np.inf, -np.inf], np.float32),
        ])  # fmt: skip
    return values[~np.isnan(values)]  # JSON has one NaN: payload bits cannot round-trip


def test_json_text_reads_back_as_the_same_float32_bits():
    values = _float32_values(np.random.default_rng(0))
    text = json.dumps(float32_decimals(values).tolist())
    back = np.asarray(json.loads(text), np.float64).astype(np.float32)
    np.testing.assert_array_equal(back.view(np.uint32), values.view(np.uint32))


def test_digits_are_numpys_shortest_float32_repr():
    values = _float32_values(np.random.default_rng(1))
    values = values[np.isfinite(values)]
    # numpy's str of a float32 scalar is its shortest round-tripping repr (Dragon4).
    np.testing.assert_array_equal(float32_decimals(values), [float(str(v)) for v in values])
    assert json.dumps(float32_decimals(np.float32([0.1, 1 / 3])).tolist()) == "[0.1, 0.33333334]"


def test_nan_passes_through():
    assert np.isnan(float32_decimals(np.float32([np.nan]))[0])


def test_rest_predict_returns_the_served_float32_values(tmp_path):
    model = build_test_model(num_classes=4, seed=2, variant="fcn32s")
    export_saved_model(model, str(tmp_path / "fcn"), verbose=False)
    images = random_images(1, 24, 20, seed=5)
    with ModelServer("fcn", str(tmp_path / "fcn"), port=0, rest_port=0) as server:
        grpc_answer = FCNClient(server.grpc_address, "fcn", encoded=False).predict(images, probabilities=True)
        body = json.dumps({"signature_name": "serving_default", "instances": images.tolist()}).encode()
        request = urllib.request.Request(f"{server.rest_address}/v1/models/fcn:predict", data=body)
        with urllib.request.urlopen(request) as reply:
            text = reply.read().decode()
    probabilities = np.asarray([row["probabilities"] for row in json.loads(text)["predictions"]], np.float64)
    # gRPC carries the float32 bits; the JSON text parses back to exactly those values.
    np.testing.assert_array_equal(probabilities.astype(np.float32), grpc_answer.probabilities)
    assert not re.search(r"\d\.\d{10,}", text)  # no float64 text (up to 17 significant digits)

"""REST writes float32 outputs as float32 text (TF Serving's %g / %.9g), which reads back as the same float32s."""

from __future__ import annotations

import json
import re
import urllib.request

import numpy as np
from serving_testing import build_test_model, random_images

from keras_fcn.export import export_saved_model
from keras_fcn.serving import FCNClient, ModelServer
from keras_fcn.serving.wire import json_codec


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


def _texts(values: np.ndarray) -> list[str]:
    text = json_codec.tensors_json({"v": values}, row_format=False)
    return re.findall(r"[^\[\], }]+", text[text.index("[") :])


def test_json_text_reads_back_as_the_same_float32_bits():
    values = _float32_values(np.random.default_rng(0))
    texts = _texts(values)
    back = np.asarray([float(t.replace("Infinity", "inf")) for t in texts], np.float64).astype(np.float32)
    np.testing.assert_array_equal(back.view(np.uint32), values.view(np.uint32))


def test_float32_text_has_at_most_nine_significant_digits():
    # float64 text of a float32 needs up to 17 digits (0.1f is 0.10000000149011612 as a float64); nine always
    # identify a float32, and TF Serving writes %g, or %.9g where %g does not read back.
    values = _float32_values(np.random.default_rng(1))
    values = values[np.isfinite(values)]
    for text in _texts(values):
        mantissa = text.split("e")[0].lstrip("-").replace(".", "").lstrip("0")
        assert len(mantissa.rstrip("0")) <= 9, text
    assert _texts(np.float32([0.1, 3.0, 9e6])) == ["0.1", "3.0", "9e+06"]


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

"""ONNX and LiteRT exports: each file run by its own runtime against a numpy softmax of the Keras model."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime
import pytest
from ai_edge_litert.interpreter import Interpreter
from test_export import softmax, tiny_fcn
from testing import TINY, randomize_heads

import keras_fcn
from keras_fcn import export_formats
from keras_fcn.cli import main
from keras_fcn.export_formats import export_litert, export_onnx


def images(shape, seed=1):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def expected(model, batch):
    return softmax(model(batch.astype(np.float32)))


def run_onnx(path, batch):
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, {"images": batch}), strict=True))


def run_litert(path, batch):
    return Interpreter(model_path=path).get_signature_runner("serving_default")(images=batch)


@pytest.mark.parametrize("variant,geometry", [("fcn8s", "aligned"), ("fcn32s", "caffe")])
def test_onnx_matches_the_model_at_any_size(tmp_path, variant, geometry):
    model = randomize_heads(keras_fcn.build_fcn(variant, 4, geometry=geometry, **TINY), std=0.5)
    path = str(tmp_path / "fcn.onnx")
    result = export_onnx(model, path, class_names=["bg", "a", "b", "c"], verbose=False)
    assert result.path == path and result.max_abs_difference <= 1e-4
    assert sorted(os.listdir(tmp_path)) == ["fcn.onnx"]  # no temporary file left
    proto = onnx.load(path)
    assert proto.opset_import[0].version >= 17
    assert {p.key: p.value for p in proto.metadata_props}["class_names"] == "bg\na\nb\nc"
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    (image_input,) = session.get_inputs()
    assert image_input.name == "images" and image_input.type == "tensor(uint8)"
    assert [isinstance(d, str) for d in image_input.shape] == [True, True, True, False]  # dynamic N, H, W
    for shape in [(1, 33, 71, 3), (3, 50, 29, 3)]:  # sizes the check did not probe
        batch = images(shape)
        got, want = run_onnx(path, batch), expected(model, batch)
        assert got["probabilities"].shape == want.shape and got["class_ids"].dtype == np.int32
        np.testing.assert_allclose(got["probabilities"], want, atol=1e-4)
        np.testing.assert_array_equal(got["class_ids"], want.argmax(-1))


def test_litert_matches_the_model_at_any_size(tmp_path):
    model = tiny_fcn(num_classes=3)
    path = str(tmp_path / "fcn.tflite")
    result = export_litert(model, path, verbose=False)
    assert result.max_abs_difference <= 1e-4 and sorted(os.listdir(tmp_path)) == ["fcn.tflite"]
    interpreter = Interpreter(model_path=path)
    assert interpreter.get_signature_list() == {
        "serving_default": {"inputs": ["images"], "outputs": ["class_ids", "probabilities"]}
    }
    (detail,) = interpreter.get_input_details()
    assert detail["dtype"] == np.uint8 and list(detail["shape_signature"]) == [-1, -1, -1, 3]
    for shape in [(1, 33, 71, 3), (2, 50, 29, 3)]:
        batch = images(shape)
        got, want = run_litert(path, batch), expected(model, batch)
        np.testing.assert_allclose(got["probabilities"], want, atol=1e-4)
        np.testing.assert_array_equal(got["class_ids"], want.argmax(-1))


@pytest.mark.parametrize("export,name", [(export_onnx, "m.onnx"), (export_litert, "m.tflite")])
def test_a_file_that_does_not_match_is_not_written(tmp_path, monkeypatch, export, name):
    model = tiny_fcn(num_classes=3)
    # A converted file answering the wrong probabilities: what the check is there to catch.
    real = export_formats.compare_with_model

    def broken(run, model, probes, verbose=True):
        return real(lambda batch: {**run(batch), "probabilities": run(batch)["probabilities"] + 1e-2}, model, probes)

    monkeypatch.setattr(export_formats, "compare_with_model", broken)
    with pytest.raises(ValueError, match=r"differs from the model by 0.01 .* was not written. Received: tolerance="):
        export(model, str(tmp_path / name), verbose=False)
    assert os.listdir(tmp_path) == []


def test_bad_arguments(tmp_path):
    model = tiny_fcn(num_classes=3)
    (tmp_path / "old.onnx").write_bytes(b"old")
    with pytest.raises(FileExistsError, match="pass force=True"):
        export_onnx(model, str(tmp_path / "old.onnx"), verbose=False)
    assert (tmp_path / "old.onnx").read_bytes() == b"old"
    with pytest.raises(ValueError, match=r"ending in '.tflite'. Received: output="):
        export_litert(model, str(tmp_path / "m.onnx"))
    with pytest.raises(ValueError, match="Received: opset=13"):
        export_onnx(model, str(tmp_path / "m.onnx"), opset=13)
    with pytest.raises(ValueError, match="Received: class_names="):
        export_onnx(model, str(tmp_path / "m.onnx"), class_names=["one"])
    with pytest.raises(ValueError, match="Received: tolerance=-1"):
        export_litert(model, str(tmp_path / "m.tflite"), tolerance=-1)


def test_cli_export_formats(tmp_path, capsys):
    model = tiny_fcn(num_classes=3)
    model.save(tmp_path / "m.keras")
    base = ["export", "--model", str(tmp_path / "m.keras")]
    onnx_path = str(tmp_path / "out" / "m.onnx")
    assert main([*base, "--format", "onnx", "--output", onnx_path]) == 0
    out = capsys.readouterr().out
    assert "probe/probe" in out or "2/2" in out  # the check's progress bar
    assert "ONNX runtime vs Keras model" in out
    assert main([*base, "--format", "onnx", "--output", onnx_path]) == 2  # exists
    assert "pass force=True (--force)" in capsys.readouterr().err
    litert_path = tmp_path / "m.tflite"
    litert_path.write_bytes(b"old")
    assert main([*base, "--format", "litert", "--output", str(litert_path), "--quiet", "--force"]) == 0
    assert capsys.readouterr().out == ""
    litert_path = str(litert_path)
    np.testing.assert_allclose(
        run_litert(litert_path, images((1, 40, 40, 3)))["probabilities"],
        expected(model, images((1, 40, 40, 3))),
        atol=1e-4,
    )
    assert main([*base, "--format", "litert", "--output", str(tmp_path / "v.tflite"), "--version", "3"]) == 2
    assert "--version cannot be used with --format litert" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # argparse: not a choice
        main([*base, "--format", "tflite", "--output", litert_path])
    assert exit_info.value.code == 2

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


def run_litert_each(path, batch):
    """`run_litert` on one image a call, the answers concatenated."""
    answers = [run_litert(path, batch[i : i + 1]) for i in range(len(batch))]
    return {key: np.concatenate([answer[key] for answer in answers]) for key in answers[0]}


@pytest.mark.parametrize("geometry", ["aligned", "caffe"])
@pytest.mark.parametrize("variant", ["fcn32s", "fcn16s", "fcn8s", "fcn8s_at_once"])
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


def test_onnx_of_an_imported_caffe_model(tmp_path):
    import caffe_nets

    from keras_fcn import caffe

    _, caffemodel = caffe_nets.fcn_net("fcn8s", 21, at_once=True).write(str(tmp_path), (32, 32), stem="fcn8s")
    model = caffe.load_caffemodel(caffemodel)  # the reference's geometry: 100-pixel padding, crops, scales
    # This random net's logits reach ~1,900: float32 rounding (relative 1e-6) moves its probabilities by ~2e-4.
    result = export_onnx(model, str(tmp_path / "caffe.onnx"), tolerance=1e-3, verbose=False)
    batch = images((2, 47, 61, 3), seed=3)
    got, want = run_onnx(result.path, batch), expected(model, batch)
    np.testing.assert_allclose(got["probabilities"], want, atol=1e-3)
    sure = np.sort(want, axis=-1)[..., -1] - np.sort(want, axis=-1)[..., -2] > 1e-3
    assert sure.mean() > 0.95
    np.testing.assert_array_equal(got["class_ids"][sure], want.argmax(-1)[sure])


def test_onnx_of_a_bfloat16_model_computes_in_float32_and_unknown_layers_are_named(tmp_path):
    import keras

    from keras_fcn.precision import with_precision

    model = randomize_heads(keras_fcn.fcn8s(4, **TINY), std=0.5)
    fast = with_precision(model, "bfloat16")  # GEMMConv2D in fc6, bfloat16 compute
    result = export_onnx(fast, str(tmp_path / "bf16.onnx"), verbose=False)
    assert 0 < result.max_abs_difference <= 5e-2  # the low-precision tolerance
    # The file holds the bfloat16 weights as float32 and computes in float32 (onnxruntime's CPU kernels).
    assert {t.data_type for t in onnx.load(result.path).graph.initializer} <= {onnx.TensorProto.FLOAT,
                                                                             onnx.TensorProto.INT64}  # fmt: skip
    batch = images((1, 40, 36, 3))
    got = run_onnx(result.path, batch)["probabilities"]
    np.testing.assert_allclose(got, expected(fast, batch), atol=5e-2)
    np.testing.assert_allclose(got, expected(model, batch), atol=5e-2)
    inputs = keras.Input((None, None, 3))
    odd = keras.Model(inputs, keras.layers.BatchNormalization(name="bn")(keras.layers.Conv2D(3, 1)(inputs)))
    with pytest.raises(ValueError, match=r"does not know layer 'bn' \(BatchNormalization\)"):
        export_onnx(odd, str(tmp_path / "odd.onnx"), verbose=False)
    assert not os.path.exists(tmp_path / "odd.onnx")


@pytest.mark.slow
def test_full_size_fcn8s_exports_to_onnx_within_4_gb(tmp_path):
    import sys

    from testing import he_init, run_with_peak_rss

    model = he_init(keras_fcn.fcn8s(21), seed=3)  # VGG16's widths: 134.5 M parameters, 538 MB of float32
    model.save(tmp_path / "full.keras")
    onnx_path = str(tmp_path / "full.onnx")
    command = [sys.executable, "-m", "keras_fcn.cli", "export", "--model", str(tmp_path / "full.keras"),
               "--format", "onnx", "--output", onnx_path]  # fmt: skip
    code, output, peak_mib = run_with_peak_rss(command)
    assert code == 0, output[-3000:]
    assert peak_mib <= 4096, f"the export's process tree peaked at {peak_mib:.0f} MiB"
    assert "class ids agree on 100.00% of pixels" in output
    batch = images((1, 70, 90, 3), seed=5)
    want = expected(model, batch)
    assert len(np.unique(want.argmax(-1))) > 1  # weights that make the comparison mean something
    got = run_onnx(onnx_path, batch)
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


# --- int8 -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small FCN-8s trained for a few seconds on synthetic shapes (it tells 3 classes apart), saved."""
    from keras_fcn.demo import run_demo

    folder = tmp_path_factory.mktemp("int8")
    result = run_demo(str(folder / "demo"), image_size=64, train_examples=400, val_examples=16, epochs=4,
                      steps_per_epoch=40, batch_size=8, crop_size=48, overlays=0, serve=False, verbose=0)  # fmt: skip
    assert len(np.unique(result.predictions)) >= 3
    path = str(folder / "small.keras")
    result.model.save(path)
    return result, path


def _calibration(count=32, seed=0):
    from keras_fcn.data import synthetic

    source = synthetic(num_examples=count, image_size=(64, 64), num_classes=5, seed=seed)
    return [source.load(i)[0] for i in range(count)]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["int8.onnx", "int8.tflite"])
def test_int8_keeps_the_float32_models_class_ids(trained, tmp_path, name):
    result, _ = trained
    path = str(tmp_path / name)
    export = export_onnx if name.endswith(".onnx") else export_litert
    report = export(result.model, path, quantize="int8", calibration_images=_calibration(),
                    probe_data=(list(result.images), list(result.masks)), verbose=False).reference_report  # fmt: skip
    assert report["images"] == 16 and report["pixels"] == 16 * 64 * 64
    assert report["class_agreement"] >= 0.99 and abs(report["mean_iu_difference"]) <= 0.01
    # Recomputed here from the file and the Keras model, not taken from the report.
    batch = np.stack(result.images)
    got = run_onnx(path, batch) if name.endswith(".onnx") else run_litert_each(path, batch)
    want = expected(result.model, batch)
    assert got["class_ids"].dtype == np.int32 and got["probabilities"].dtype == np.float32
    assert np.mean(got["class_ids"] == want.argmax(-1)) == pytest.approx(report["class_agreement"])
    if name.endswith(".tflite"):
        kinds = {detail["dtype"] for detail in Interpreter(model_path=path).get_tensor_details()}
        assert np.int8 in kinds  # integer kernels, not only int8 storage of float weights
        return
    graph = onnx.load(path).graph
    convs = [node for node in graph.node if node.op_type == "Conv"]
    dequantized = {node.output[0] for node in graph.node if node.op_type == "DequantizeLinear"}
    quantized = [node.name for node in convs if node.input[1] in dequantized]
    # All but the first convolution and the three score layers (score_fr, score_pool4, score_pool3).
    assert len(quantized) == len(convs) - 4 and convs[0].name not in quantized
    assert not any(node_name.startswith("score") for node_name in quantized)
    float32 = export_onnx(result.model, str(tmp_path / "f.onnx"), verbose=False).path
    assert os.path.getsize(path) < 0.5 * os.path.getsize(float32)


@pytest.mark.slow
def test_int8_below_the_agreement_is_refused_and_the_cli_names_bad_calibration_data(trained, tmp_path, capsys):
    result, model_path = trained
    path = tmp_path / "refused.onnx"
    with pytest.raises(ValueError, match=r"fewer than min_class_agreement; .* was not written. Received: min_class"):
        export_onnx(result.model, str(path), quantize="int8", calibration_images=_calibration(8),
                    probe_data=(list(result.images), None), min_class_agreement=1.0, verbose=False)  # fmt: skip
    assert os.listdir(tmp_path) == []  # neither the file nor its float32 step
    base = ["export", "--model", model_path, "--format", "onnx", "--quantize", "int8", "--data-option",
            "image_size=[64,64]"]  # fmt: skip
    out = str(tmp_path / "cli.onnx")
    assert main([*base, "--calibration-data", "synthetic:16", "--calibration-limit", "8", "--output", out]) == 0
    printed = capsys.readouterr().out
    assert "int8 vs float32 on 16 check images: class ids agree on" in printed and "mean IU" in printed
    assert main([*base, "--calibration-data", "nowhere:data", "--output", str(tmp_path / "x.onnx")]) == 2
    assert "--calibration-data nowhere:data" in capsys.readouterr().err
    assert main([*base, "--output", str(tmp_path / "x.onnx")]) == 2
    assert "--quantize int8 needs --calibration-data" in capsys.readouterr().err
    assert main([*base[:4], "saved_model", *base[5:], "--calibration-data", "synthetic:4", "--output", "m"]) == 2
    assert "--quantize int8 writes --format onnx or litert" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["cli.onnx"]

"""SavedModel export: files, versions, signatures against a numpy softmax of the model, limits."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import zlib

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from tensorflow_serving.apis import prediction_log_pb2
from testing import TINY, randomize_heads

import keras_fcn
from keras_fcn import export as export_module
from keras_fcn.cli import main
from keras_fcn.export import export_saved_model, list_versions, read_class_names


def tiny_fcn(num_classes: int = 5, seed: int = 0, variant: str = "fcn8s") -> keras.Model:
    model = keras_fcn.build_fcn(variant, num_classes, **TINY)
    return randomize_heads(model, seed=seed, std=0.5)


def softmax(logits) -> np.ndarray:
    logits = np.asarray(logits, np.float64)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def images(n: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = tiny_fcn()
    base = str(tmp_path_factory.mktemp("export") / "fcn")
    result = export_saved_model(model, base, class_names=["bg", "a", "b", "c", "d"], verbose=False)
    return model, result, tf.saved_model.load(result.path)


def test_writes_a_numbered_version_atomically(exported):
    model, result, _ = exported
    base = os.path.dirname(result.path)
    assert result.version == 1 and result.path == os.path.join(base, "1")
    assert sorted(os.listdir(base)) == ["1"]  # no temporary folder left behind
    for name in (
        "saved_model.pb",
        "variables",
        "assets.extra/class_names.txt",
        "assets.extra/tf_serving_warmup_requests",
    ):
        assert os.path.exists(os.path.join(result.path, name)), name
    assert read_class_names(result.path) == ["bg", "a", "b", "c", "d"]
    assert result.max_abs_difference < 1e-5 and result.class_agreement > 0.99


def test_next_version_and_explicit_version(tmp_path):
    model = tiny_fcn(num_classes=3)
    base = str(tmp_path / "m")
    os.makedirs(os.path.join(base, "0007"))  # TF Serving reads 0007 as version 7
    os.makedirs(os.path.join(base, "notes"))  # non-numeric folders are ignored
    os.makedirs(os.path.join(base, "²"))  # a digit to str.isdigit, not a number to int()
    assert export_saved_model(model, base, verbose=False).version == 8
    assert export_saved_model(model, base, version=20, verbose=False).version == 20
    assert list_versions(base) == [7, 8, 20]
    with pytest.raises(ValueError, match="already exists"):
        export_saved_model(model, base, version=20, verbose=False)
    with pytest.raises(ValueError, match="Received: class_names"):
        export_saved_model(model, base, class_names=["one"], verbose=False)
    with pytest.raises(ValueError, match="Received: version"):
        export_saved_model(model, base, version=-1, verbose=False)
    assert sorted(os.listdir(base)) == ["0007", "20", "8", "notes", "²"]


def test_concurrent_exports_take_distinct_versions(tmp_path, monkeypatch):
    model = tiny_fcn(num_classes=3)
    base = str(tmp_path / "m")
    compare = export_module._compare_with_model
    started, nested = [], []

    def compare_while_another_export_runs(path, *args):
        if not started:  # a second export starts while the first is still being written
            started.append(path)
            nested.append(export_saved_model(model, base, verbose=False))
        return compare(path, *args)

    monkeypatch.setattr(export_module, "_compare_with_model", compare_while_another_export_runs)
    first = export_saved_model(model, base, verbose=False)
    assert (first.version, nested[0].version) == (1, 2)
    assert sorted(os.listdir(base)) == ["1", "2"]
    monkeypatch.setattr(export_module, "_compare_with_model", compare)
    os.makedirs(os.path.join(base, ".export-3"))  # an export of version 3 is under way
    with pytest.raises(ValueError, match="version 3 is being exported"):
        export_saved_model(model, base, version=3, verbose=False)
    assert export_saved_model(model, base, verbose=False).version == 4


def test_an_explicit_version_never_replaces_a_folder_that_appears_meanwhile(tmp_path, monkeypatch):
    model = tiny_fcn(num_classes=3)
    base = str(tmp_path / "m")
    compare = export_module._compare_with_model

    def compare_while_someone_makes_the_folder(path, *args):
        os.makedirs(os.path.join(base, "5"))  # an empty folder: os.rename would silently replace it
        return compare(path, *args)

    monkeypatch.setattr(export_module, "_compare_with_model", compare_while_someone_makes_the_folder)
    with pytest.raises(ValueError, match="version 5 appeared"):
        export_saved_model(model, base, version=5, verbose=False)
    assert sorted(os.listdir(base)) == ["5"] and not os.listdir(os.path.join(base, "5"))


def test_an_export_that_does_not_match_the_model_is_refused(tmp_path, monkeypatch):
    model = tiny_fcn(num_classes=3)
    with pytest.raises(ValueError, match="Received: tolerance=-1"):
        export_saved_model(model, str(tmp_path / "m"), tolerance=-1, verbose=False)
    new_base, old_base = str(tmp_path / "new"), str(tmp_path / "old")
    export_saved_model(model, old_base, verbose=False)
    reference_softmax = export_module.softmax
    # The reference drifts by about 1e-2: as if the SavedModel computed something else.
    monkeypatch.setattr(export_module, "softmax", lambda logits: reference_softmax(np.asarray(logits) * 1.1))
    for base in (new_base, old_base):
        with pytest.raises(ValueError, match="differs from the model"):
            export_saved_model(model, base, verbose=False)
    assert not os.path.exists(new_base) and sorted(os.listdir(old_base)) == ["1"]
    assert export_saved_model(model, new_base, tolerance=1.0, verbose=False).version == 1


def test_serving_default_matches_numpy_softmax(exported):
    model, _, loaded = exported
    batch = images(2, 37, 45, seed=1)  # odd sizes: the signature takes any H and W
    answer = loaded.signatures["serving_default"](images=tf.constant(batch))
    expected = softmax(model(batch.astype(np.float32)))
    assert answer["probabilities"].dtype == tf.float32 and answer["class_ids"].dtype == tf.int32
    np.testing.assert_allclose(answer["probabilities"].numpy(), expected, atol=1e-5)
    np.testing.assert_array_equal(answer["class_ids"].numpy(), expected.argmax(-1))


def test_serve_encoded_matches_and_returns_class_map_pngs(exported):
    model, _, loaded = exported
    batch = images(2, 30, 20, seed=2)
    answer = loaded.signatures["serve_encoded"](image_bytes=tf.constant([png(x) for x in batch]))
    expected = softmax(model(batch.astype(np.float32)))
    np.testing.assert_allclose(answer["probabilities"].numpy(), expected, atol=1e-5)
    maps = [np.asarray(Image.open(io.BytesIO(data))) for data in answer["class_map_png_bytes"].numpy()]
    np.testing.assert_array_equal(np.stack(maps), expected.argmax(-1))


def test_serve_png_answers_only_the_class_map(exported):
    model, _, loaded = exported
    function = loaded.signatures["serve_png"]
    assert set(function.structured_outputs) == {"class_map_png_bytes"}
    batch = images(2, 27, 33, seed=4)
    answer = function(image_bytes=tf.constant([png(x) for x in batch]))
    maps = [np.asarray(Image.open(io.BytesIO(data))) for data in answer["class_map_png_bytes"].numpy()]
    expected = np.asarray(model(batch.astype(np.float32))).argmax(-1)
    np.testing.assert_array_equal(np.stack(maps), expected)


def _fake_png(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ([png(images(1, 8, 8)[0]), png(images(1, 9, 8)[0])], "must share a size"),
        ([_fake_png(60_000, 60_000)], "images too large"),  # checked from the header, never decoded
        ([b"GIF89a not what we take"], "JPEG or PNG"),
        ([], "at least one image"),
    ],
    ids=["sizes", "pixels", "format", "none"],
)
@pytest.mark.parametrize("signature", ["serve_encoded", "serve_png"])
def test_encoded_signatures_refusals(exported, signature, payload, message):
    _, _, loaded = exported
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        loaded.signatures[signature](image_bytes=tf.constant(payload, dtype=tf.string))


def test_pixel_limit_and_16_bit_class_maps(tmp_path):
    model = tiny_fcn(num_classes=300)  # more classes than 8 bits hold
    result = export_saved_model(model, str(tmp_path), max_decoded_pixels=600, verbose=False)
    loaded = tf.saved_model.load(result.path)
    with pytest.raises(tf.errors.InvalidArgumentError, match="images too large"):
        loaded.signatures["serve_encoded"](image_bytes=tf.constant([png(images(1, 25, 25)[0])]))
    batch = images(1, 24, 25, seed=3)  # 600 pixels: allowed
    answer = loaded.signatures["serve_encoded"](image_bytes=tf.constant([png(batch[0])]))
    class_map = Image.open(io.BytesIO(answer["class_map_png_bytes"].numpy()[0]))
    assert class_map.mode.startswith("I")  # 16-bit greyscale
    np.testing.assert_array_equal(np.asarray(class_map), answer["class_ids"].numpy()[0])
    expected = softmax(model(batch.astype(np.float32))).argmax(-1)
    np.testing.assert_array_equal(answer["class_ids"].numpy(), expected)
    only_map = loaded.signatures["serve_png"](image_bytes=tf.constant([png(batch[0])]))["class_map_png_bytes"]
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(only_map.numpy()[0])))[None], expected)


def test_warmup_requests_replay(exported):
    _, result, loaded = exported
    path = os.path.join(result.path, "assets.extra", "tf_serving_warmup_requests")
    logs = [prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in tf.data.TFRecordDataset(path)]
    names = [log.predict_log.request.model_spec.signature_name for log in logs]
    assert sorted(names) == ["serve_encoded", "serve_png", "serving_default"]
    for log in logs:
        request = log.predict_log.request
        inputs = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
        outputs = loaded.signatures[request.model_spec.signature_name](**inputs)
        assert outputs["class_map_png_bytes" if "image_bytes" in inputs else "probabilities"].shape[0] == 1


def test_mixed_precision_outputs_stay_float32(tmp_path):
    keras.config.set_dtype_policy("mixed_bfloat16")
    model = tiny_fcn(num_classes=4)
    result = export_saved_model(model, str(tmp_path), verbose=False)
    loaded = tf.saved_model.load(result.path)
    answer = loaded.signatures["serving_default"](images=tf.constant(images(1, 16, 16)))
    assert answer["probabilities"].dtype == tf.float32
    # bfloat16 keeps 8 bits of mantissa: graph and eager round differently, the classes still agree.
    assert result.max_abs_difference < 0.05 and result.class_agreement > 0.95


def test_saved_model_cli_shows_the_signatures(exported):
    _, result, _ = exported
    command = [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli", "show", "--all", "--dir", result.path]
    shown = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout
    for text in (
        "signature_def['serving_default']",
        "signature_def['serve_encoded']",
        "signature_def['serve_png']",
        "inputs['image_bytes']",
        "outputs['class_map_png_bytes']",
        "dtype: DT_UINT8",
        "shape: (-1, -1, -1, 3)",
    ):
        assert text in shown, text


def test_cli_export(tmp_path, capsys):
    model = tiny_fcn(num_classes=3)
    model.save(tmp_path / "m.keras")
    (tmp_path / "names.txt").write_text("sky\nroad\ncar\n")
    base = str(tmp_path / "base")
    argv = ["export", "--model", str(tmp_path / "m.keras"), "--output", base, "--class-names"]
    assert main([*argv, str(tmp_path / "names.txt")]) == 0
    assert "max |probability difference|" in capsys.readouterr().out
    assert read_class_names(os.path.join(base, "1")) == ["sky", "road", "car"]
    assert main(["export", "--model", str(tmp_path / "none.keras"), "--output", base]) == 2
    assert main([*argv, str(tmp_path / "names.txt"), "--version", "1"]) == 2  # exists already
    assert main([*argv, str(tmp_path / "names.txt"), "--max-decoded-pixels", "0"]) == 2
    assert "Received: max_decoded_pixels=0" in capsys.readouterr().err
    (tmp_path / "a_file").write_text("")
    inside_a_file = ["export", "--model", str(tmp_path / "m.keras"), "--output", str(tmp_path / "a_file" / "b")]
    assert main(inside_a_file) == 2  # an OSError from the file system is reported, not raised
    assert "a_file" in capsys.readouterr().err
    assert main([*argv, str(tmp_path / "no_names.txt")]) == 2

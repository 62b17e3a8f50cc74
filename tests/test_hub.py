"""keras-hub presets: the FCN classes against the functional builders, preset round trips, built-in names.

References: the functional model `keras_fcn.build_fcn` builds (same weights), numpy's BGR-minus-mean, the
reference's class names, and `load_caffemodel` on the file a local HTTP server serves.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading

import caffe_nets
import keras
import keras_hub
import numpy as np
import pytest
from testing import TINY, he_init, randomize_heads, to_numpy

import keras_fcn
from keras_fcn import hub, presets
from keras_fcn.caffe import DATASETS, load_caffemodel
from keras_fcn.cli import main
from keras_fcn.labels import VOC_CLASSES
from keras_fcn.training.loop import load_init_from

MEAN = (101.5, 112.25, 125.75)  # BGR, not Keras's: a preset that dropped it would show
PRESET_FILES = {"config.json", "model.weights.h5", "task.json", "task.weights.h5", "preprocessor.json",
                "image_converter.json", "metadata.json"}  # fmt: skip


def _image(height=37, width=45, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (1, height, width, 3)).astype("uint8")


def _functional(variant, geometry, classes=3, seed=0):
    model = keras_fcn.build_fcn(variant, classes, geometry=geometry, mean=MEAN, **TINY)
    return randomize_heads(he_init(model, seed), seed)


def test_preset_round_trip_equals_the_functional_model(tmp_path):
    # The Caffe geometry: crops derived through the backbone's layers. (The aligned fcn8s goes through the same
    # path in test_cli_convert_model_then_predict_draws_what_the_keras_file_draws.)
    variant, geometry = "fcn16s", "caffe"
    model = _functional(variant, geometry)
    image = _image()
    expected = to_numpy(model(image))
    assert np.abs(expected).max() > 0
    names = ["sky", "tree", "road"]
    segmenter = hub.from_functional(model, class_names=names)
    assert isinstance(segmenter, keras_hub.models.ImageSegmenter)
    np.testing.assert_allclose(presets.segment(segmenter, image), expected, rtol=0, atol=1e-5)

    presets.save_preset(segmenter, tmp_path / "p")
    assert PRESET_FILES <= set(os.listdir(tmp_path / "p"))
    with open(tmp_path / "p" / "config.json", encoding="utf-8") as handle:
        assert json.load(handle)["registered_name"] == "keras_fcn>FCNBackbone"
    for loader in (keras_hub.models.ImageSegmenter, keras_fcn.FCNImageSegmenter):
        loaded = loader.from_preset(str(tmp_path / "p"))
        assert type(loaded) is hub.FCNImageSegmenter
        assert loaded.class_names == names and loaded.variant == variant
        converter = loaded.preprocessor.image_converter
        assert converter.mean == MEAN
        # The converter is the Caffe preprocessing: RGB -> BGR, minus the mean pixel.
        np.testing.assert_allclose(to_numpy(converter(image)), image[..., ::-1] - np.float32(MEAN), atol=1e-4)
        np.testing.assert_allclose(presets.segment(loaded, image), expected, rtol=0, atol=1e-5)
    # Back to the functional model every verb takes: same layers, same outputs, and it saves as .keras.
    back = hub.to_functional(loaded)
    assert [layer.name for layer in back.layers] == [layer.name for layer in model.layers]
    back.save(tmp_path / "back.keras")
    reloaded = keras.saving.load_model(tmp_path / "back.keras", compile=False)
    np.testing.assert_allclose(to_numpy(reloaded(image)), expected, rtol=0, atol=1e-5)


def test_configs_round_trip_the_init_arguments():
    backbone = hub.FCNBackbone(TINY["backbone_filters"], TINY["fc_units"], geometry="caffe", dropout=0.25)
    config = backbone.get_config()
    assert config["backbone_filters"] == list(TINY["backbone_filters"]) and config["geometry"] == "caffe"
    assert hub.FCNBackbone.from_config(config).get_config() == config
    converter = hub.FCNImageConverter(mean=MEAN, channel_order="rgb")
    assert hub.FCNImageConverter.from_config(converter.get_config()).get_config() == converter.get_config()
    segmenter = hub.FCNImageSegmenter(backbone, 4, variant="fcn32s", class_names=list("abcd"), palette=[[1, 2, 3]] * 4)
    config = segmenter.get_config()
    again = hub.FCNImageSegmenter.from_config(config)
    assert {k: v for k, v in again.get_config().items() if k != "backbone"} == {
        k: v for k, v in config.items() if k != "backbone"
    }
    assert again.backbone.get_config() == backbone.get_config()


def test_bad_arguments_name_the_value():
    backbone = hub.FCNBackbone(TINY["backbone_filters"], TINY["fc_units"])
    with pytest.raises(ValueError, match="Received: variant='fcn4s'"):
        hub.FCNImageSegmenter(backbone, 3, variant="fcn4s")
    with pytest.raises(ValueError, match="Received: class_names="):
        hub.FCNImageSegmenter(backbone, 3, class_names=["a"])
    with pytest.raises(ValueError, match="Received: channel_order='bgra'"):
        hub.FCNImageConverter(channel_order="bgra")
    with pytest.raises(ValueError, match="Received: geometry='valid'"):
        hub.FCNBackbone(geometry="valid")


def test_handles_pass_through_to_keras_hub():
    for handle in ("kaggle://org/fcn/keras/fcn8s_voc/2", "hf://org/fcn8s_voc"):
        assert presets.is_preset(handle) and presets.preset_path(handle) == handle


def test_bad_presets_are_refused_naming_the_problem(tmp_path, capsys):
    with pytest.raises(ValueError, match="Received: preset='fcn9s_voc'"):
        keras_fcn.FCNImageSegmenter.from_preset("fcn9s_voc")
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"registered_name": "keras_hub>VGGBackbone", "config": {}}))
    with pytest.raises(ValueError, match="registered_name='keras_hub>VGGBackbone'"):
        keras_fcn.FCNImageSegmenter.from_preset(str(other))
    segmenter = hub.from_functional(_functional("fcn32s", "aligned"))
    segmenter.save_to_preset(str(tmp_path / "p"))
    os.remove(tmp_path / "p" / "model.weights.h5")
    with pytest.raises(FileNotFoundError, match="model.weights.h5"):
        keras_fcn.FCNImageSegmenter.from_preset(str(tmp_path / "p"))
    # The CLI: exit code 2 and one line naming the preset and the file.
    assert main(["predict", "--model", str(tmp_path / "p"), "x.png", "--output", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "model.weights.h5" in error and str(tmp_path / "p") in error


class _Server:
    """Serves a folder on 127.0.0.1 and counts the requests."""

    def __init__(self, directory):
        self.requests = []
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self):  # counted before the reply, so the client never sees it before the count
                outer.requests.append(self.path)
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=directory))
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def served_fcn16s(tmp_path, monkeypatch):
    """fcn16s_voc served locally: a generated caffemodel of the reference's layout, with its real SHA-256."""
    files = tmp_path / "server"
    files.mkdir()
    _, caffemodel = caffe_nets.fcn_net("fcn16s", 21).write(str(files), (32, 32), stem="fcn16s-heavy-pascal")
    with open(caffemodel, "rb") as handle:
        digest = hashlib.sha256(handle.read()).hexdigest()
    server = _Server(str(files))
    entry = presets.BuiltinPreset(server.url + "fcn16s-heavy-pascal.caffemodel", digest, "test")
    monkeypatch.setitem(presets.BUILTIN_PRESETS, "fcn16s_voc", entry)
    monkeypatch.setattr(presets, "CACHE_DIR", str(tmp_path / "keras_home"))
    yield caffemodel, server
    server.close()


def test_builtin_name_downloads_checks_caches_and_converts(served_fcn16s, tmp_path):
    caffemodel, server = served_fcn16s
    segmenter = keras_fcn.FCNImageSegmenter.from_preset("fcn16s_voc")
    assert server.requests == ["/fcn16s-heavy-pascal.caffemodel"]
    assert segmenter.class_names == list(VOC_CLASSES) and segmenter.backbone.geometry == "caffe"
    assert segmenter.preprocessor.image_converter.mean == DATASETS["voc"].mean
    image = _image()
    expected = to_numpy(load_caffemodel(caffemodel)(image))
    np.testing.assert_allclose(presets.segment(segmenter, image), expected, rtol=0, atol=1e-5)
    cached = os.path.join(presets.preset_path("fcn16s_voc"), "model.weights.h5")
    assert cached.startswith(str(tmp_path / "keras_home"))
    stamp = os.stat(cached).st_mtime_ns
    # Second use: Keras's cache answers (no request) and the converted preset is kept.
    keras_hub.models.ImageSegmenter.from_preset(presets.preset_path("fcn16s_voc"))
    assert len(server.requests) == 1 and os.stat(cached).st_mtime_ns == stamp


def test_hash_mismatch_is_refused_and_not_cached(served_fcn16s, tmp_path, monkeypatch):
    _, server = served_fcn16s
    entry = presets.BUILTIN_PRESETS["fcn16s_voc"]
    monkeypatch.setitem(presets.BUILTIN_PRESETS, "fcn16s_voc", presets.BuiltinPreset(entry.url, "0" * 64, "test"))
    with pytest.raises(ValueError, match="hash.*Received: preset='fcn16s_voc'"):
        keras_fcn.FCNImageSegmenter.from_preset("fcn16s_voc")
    cache = tmp_path / "keras_home" / presets.CACHE_SUBDIR
    assert not (cache / "fcn16s-heavy-pascal.caffemodel").exists()
    assert not (tmp_path / "keras_home" / presets.PRESETS_SUBDIR / "fcn16s_voc").exists()


def test_vgg16_backbone_preset_starts_a_new_head(tmp_path):
    _, caffemodel = caffe_nets.vgg16_net(classes=7).write(str(tmp_path), (224, 224))
    classifier = load_caffemodel(caffemodel)
    presets.caffemodel_to_preset(caffemodel, tmp_path / "vgg", verbose=False)
    assert "task.json" not in os.listdir(tmp_path / "vgg")
    with pytest.raises(ValueError, match="num_classes=.*Received: preset="):
        keras_fcn.FCNImageSegmenter.from_preset(str(tmp_path / "vgg"))
    segmenter = keras_fcn.FCNImageSegmenter.from_preset(str(tmp_path / "vgg"), num_classes=5, variant="fcn32s")
    assert segmenter.preprocessor.image_converter.mean == classifier.get_layer("preprocess").mean
    for name in ("block1_conv1", "block5_conv3", "fc6", "fc7"):
        for got, want in zip(segmenter.get_layer(name).get_weights(), classifier.get_layer(name).get_weights(),
                             strict=True):  # fmt: skip
            np.testing.assert_array_equal(got, want)
    # train --init-from takes the backbone preset too.
    started = keras_fcn.build_fcn("fcn8s", 5, backbone_filters=(4, 6, 8, 8, 10), fc_units=12, geometry="caffe",
                                  init_from=load_init_from(str(tmp_path / "vgg")))  # fmt: skip
    fc7 = classifier.get_layer("fc7").get_weights()[0]
    np.testing.assert_array_equal(started.get_layer("fc7").get_weights()[0], fc7)


def test_cli_convert_model_then_predict_draws_what_the_keras_file_draws(tmp_path):
    """`keras-fcn convert --model NAME.keras --preset-dir D`, then `keras-fcn predict --model D`: the same
    class map and overlay as from the .keras file, the legend with the class names the preset carries.
    (The README runs `convert --caffemodel --preset-dir` and `predict --model D` as commands.)"""
    from PIL import Image

    model = _functional("fcn8s", "aligned")
    model.save(tmp_path / "m.keras")
    (tmp_path / "m.classes.txt").write_text("sky\ntree\nroad\n")
    Image.fromarray(_image()[0]).save(tmp_path / "a.png")
    assert main(["convert", "--model", str(tmp_path / "m.keras"), "--preset-dir", str(tmp_path / "P"), "--quiet"]) == 0
    for source, output in ((tmp_path / "m.keras", "from_keras"), (tmp_path / "P", "from_preset")):
        assert main(["predict", "--model", str(source), str(tmp_path / "a.png"), "--output", str(tmp_path / output),
                     "--quiet"]) == 0  # fmt: skip
    for name in ("a_classes.png", "a_overlay.png"):  # the overlay's legend shows the class names
        a = np.asarray(Image.open(tmp_path / "from_keras" / name))
        b = np.asarray(Image.open(tmp_path / "from_preset" / name))
        np.testing.assert_array_equal(a, b)
    with open(tmp_path / "P" / "task.json", encoding="utf-8") as handle:
        assert json.load(handle)["config"]["class_names"] == ["sky", "tree", "road"]
    # train --init-from takes the preset: its layers start a new model.
    started = keras_fcn.build_fcn("fcn8s", 3, init_from=load_init_from(str(tmp_path / "P")), **TINY)
    for name in ("block3_conv2", "fc6", "score_pool3", "upscore8"):
        np.testing.assert_array_equal(started.get_layer(name).get_weights()[0], model.get_layer(name).get_weights()[0])


def test_keras_hub_finds_the_classes_after_import_keras_fcn(tmp_path):
    """In a fresh process: `import keras_fcn` loads neither TensorFlow nor keras-hub, and importing keras-hub
    afterwards is enough for `ImageSegmenter.from_preset` to return our class."""
    hub.from_functional(_functional("fcn32s", "aligned"), class_names=["a", "b", "c"]).save_to_preset(
        str(tmp_path / "p")
    )
    script = (
        "import sys, keras_fcn; "
        "assert 'tensorflow' not in sys.modules and 'keras_hub' not in sys.modules, 'import keras_fcn is heavy'; "
        "import keras_hub; "
        "m = keras_hub.models.ImageSegmenter.from_preset(sys.argv[1]); "
        "print(type(m).__module__, type(m).__name__, m.class_names)"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "p")], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[-1] == "keras_fcn.hub FCNImageSegmenter ['a', 'b', 'c']"


def test_at_once_caffemodel_with_the_references_scales_becomes_a_preset(tmp_path):
    """The at-once net's Scale blobs hold float32 0.01 and 0.0001 (not Python's 0.01): still the reference's."""
    _, caffemodel = caffe_nets.fcn_net("fcn8s", 21, at_once=True, scales=(0.01, 0.0001)).write(str(tmp_path), (32, 32))
    presets.caffemodel_to_preset(caffemodel, tmp_path / "atonce", verbose=False)
    segmenter = keras_fcn.FCNImageSegmenter.from_preset(str(tmp_path / "atonce"))
    assert segmenter.variant == "fcn8s_at_once"
    image = _image()
    expected = to_numpy(load_caffemodel(caffemodel)(image))
    np.testing.assert_allclose(presets.segment(segmenter, image), expected, rtol=0, atol=1e-5 * np.abs(expected).max())

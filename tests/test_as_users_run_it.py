"""The product as users run it: every verb a fresh process, on files the command line itself wrote.

`keras-fcn train` writes a model; then `predict`, `evaluate`, `export` (each format this environment has),
`serve` + `query` and fresh interpreters in every import order load that file, each in a process of its
own, started from an empty folder (not the checkout, so an installed wheel is what runs). Each answer is
compared with this process's own copy of the model: class ids, probabilities, the metrics from a numpy
confusion matrix.

`KERAS_FCN_INSTALLED=wheel` (set by `.ci/run` after installing the built wheel) also checks that the
processes run the installed package, not the checkout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from PIL import Image
from testing import TINY, free_port, he_init, wait_until

import keras_fcn

pytestmark = pytest.mark.slow

CLI = os.path.join(os.path.dirname(sys.executable), "keras-fcn")
CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES = 5
SYNTHETIC = ["--data-option", "image_size=[40,52]"]


def environment() -> dict:
    """The user's environment: no PYTHONPATH into the checkout, TensorFlow's start-up logs quiet."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    return env


def run(cwd, *args, timeout=600) -> str:
    """Runs one command in a fresh process in `cwd`; its standard output, or the test fails with its log."""
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=environment(), capture_output=True, text=True, timeout=timeout
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(map(str, args))} exited {result.returncode}:\n{output[-4000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A model written by `keras-fcn train`, with images to segment, and this process's copy of it.

    Training starts from a saved FCN whose every layer holds seeded random weights (`--init-from`), so
    that the class ids vary across each image: a fresh FCN's zero score layers predict class 0 everywhere,
    and equal outputs would then prove nothing.
    """
    work = tmp_path_factory.mktemp("user")
    start = he_init(keras_fcn.fcn8s(NUM_CLASSES, **TINY), seed=7, bias_std=0.5)
    start.save(work / "start.keras")
    run(work, CLI, "train", "--train-data", f"synthetic:{8}", *SYNTHETIC, "--num-classes", NUM_CLASSES,
        "--backbone-filters", *TINY["backbone_filters"], "--fc-units", TINY["fc_units"],
        "--init-from", "start.keras", "--epochs", 1, "--steps-per-epoch", 2, "--batch-size", 2,
        "--crop-size", 32, "--learning-rate", 1e-6, "--output-dir", "run", "--verbose", 2)  # fmt: skip
    path = work / "run" / "final.keras"
    model = keras.saving.load_model(path, compile=False)
    rng = np.random.default_rng(0)
    images = {"small.png": (37, 45), "wide.png": (64, 96), "photo.jpg": (48, 40)}
    for name, shape in images.items():
        pixels = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(work / name, quality=95)
    return {"work": work, "path": path, "model": model, "images": list(images)}


def decoded(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def logits(model, image: np.ndarray) -> np.ndarray:
    return keras.ops.convert_to_numpy(model(image[None].astype("float32"), training=False))[0]


def expected_classes(trained, name) -> np.ndarray:
    return np.argmax(logits(trained["model"], decoded(trained["work"] / name)), -1)


def test_the_trained_model_predicts_several_classes(trained):
    # The precondition of every comparison below: class ids that differ from pixel to pixel.
    for name in trained["images"]:
        assert len(np.unique(expected_classes(trained, name))) >= 3, name


IMPORT_ORDERS = {
    "keras_fcn, keras": "import keras_fcn\nimport keras\nload = keras.models.load_model",
    "keras, keras_fcn": "import keras\nimport keras_fcn\nload = keras.models.load_model",
    "tensorflow, keras_fcn, keras": "import tensorflow as tf\nimport keras_fcn\nimport keras\n"
    "load = keras.models.load_model",
    "keras_fcn, tensorflow, keras": "import keras_fcn\nimport tensorflow as tf\nimport keras\n"
    "load = keras.models.load_model",
    "keras_fcn, tensorflow, tf.keras": "import keras_fcn\nimport tensorflow as tf\nload = tf.keras.models.load_model",
    "keras_fcn, keras_fcn.data, keras": "import keras_fcn\nfrom keras_fcn.data import DataError\nimport keras\n"
    "load = keras.models.load_model",
    "keras_fcn, keras.saving": "import keras_fcn\nimport keras\nload = keras.saving.load_model",
    "keras_fcn, register_keras_objects": "import keras_fcn\nimport keras\nkeras_fcn.register_keras_objects()\n"
    "load = keras.saving.load_model",
}


@pytest.fixture(scope="module")
def interpreters(trained):
    """One fresh interpreter per import order, all started at once (each spends seconds importing
    TensorFlow): each loads the model, runs it on small.png and saves the logits."""
    work, started = trained["work"], {}
    for order, imports in IMPORT_ORDERS.items():
        out = work / f"logits {order}.npy"
        code = imports + (
            "\nimport numpy as np\nfrom PIL import Image\n"
            f"model = load({str(trained['path'])!r})\n"  # compiled: the loss, metrics and optimizer too
            "image = np.asarray(Image.open('small.png').convert('RGB'), 'float32')[None]\n"
            f"np.save({str(out)!r}, np.asarray(model(image, training=False)))\n"
            "print(type(model.loss).__name__, type(model.optimizer).__name__)\n"
        )
        process = subprocess.Popen(
            [sys.executable, "-c", code], cwd=work, env=environment(), text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        started[order] = (process, out)
    yield started
    for process, _ in started.values():
        if process.poll() is None:  # a test that failed before waiting for it
            process.kill()
            process.communicate()


@pytest.mark.parametrize("order", IMPORT_ORDERS)
def test_a_fresh_interpreter_loads_the_model_in_every_import_order(trained, interpreters, order):
    process, out = interpreters[order]
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, f"{IMPORT_ORDERS[order]}\n{stderr[-4000:]}"
    assert stdout.split()[-2:] == ["SegmentationLoss", "SGD"]
    expected = logits(trained["model"], decoded(trained["work"] / "small.png"))
    np.testing.assert_allclose(np.load(out)[0], expected, atol=1e-5)


def test_predict_writes_the_class_ids_of_the_model(trained):
    work = trained["work"]
    output = run(work, CLI, "predict", "--model", trained["path"], "--output", "pred", *trained["images"])
    for name in trained["images"]:
        stem = os.path.splitext(name)[0]
        assert f"{stem}_classes.png" in output
        got = np.asarray(Image.open(work / "pred" / f"{stem}_classes.png"))
        np.testing.assert_array_equal(got, expected_classes(trained, name), err_msg=name)
        assert decoded(work / "pred" / f"{stem}_overlay.png").shape[1] >= got.shape[1]


def confusion(truth: np.ndarray, prediction: np.ndarray, n: int) -> np.ndarray:
    """The reference's `fast_hist`: a bincount of n * label + prediction over labelled pixels."""
    keep = (truth >= 0) & (truth < n)
    return np.bincount(n * truth[keep].astype(int) + prediction[keep], minlength=n * n).reshape(n, n)


def test_evaluate_prints_the_metrics_of_a_numpy_confusion_matrix(trained):
    work = trained["work"]
    run(work, CLI, "evaluate", "--model", trained["path"], "--data", "synthetic:6", *SYNTHETIC,
        "--json", "scores.json", "--quiet")  # fmt: skip
    scores = json.loads((work / "scores.json").read_text())
    source = keras_fcn.data.from_spec("synthetic:6", "val", num_classes=NUM_CLASSES, image_size=[40, 52])
    hist = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    for index in range(6):
        image, mask = source.load(index)
        hist += confusion(mask, np.argmax(logits(trained["model"], image), -1), NUM_CLASSES)
    with np.errstate(divide="ignore", invalid="ignore"):
        iu = np.diag(hist) / (hist.sum(1) + hist.sum(0) - np.diag(hist))
    assert scores["num_images"] == 6
    assert scores["pixel_accuracy"] == pytest.approx(np.diag(hist).sum() / hist.sum(), abs=1e-6)
    assert scores["mean_iu"] == pytest.approx(np.nanmean(iu), abs=1e-6)
    assert 0 < scores["mean_iu"] < 1


@pytest.fixture(scope="module")
def exported(trained):
    """`keras-fcn export` of the trained model: a SavedModel version folder under models/fcn."""
    run(trained["work"], CLI, "export", "--model", trained["path"], "--output", "models/fcn", "--quiet")
    return trained["work"] / "models" / "fcn"


def test_export_saved_model_answers_as_the_keras_model(trained, exported):
    import tensorflow as tf

    assert sorted(os.listdir(exported)) == ["1"]
    names = (exported / "1" / "assets.extra" / "class_names.txt").read_text().split()
    assert names == (trained["path"].parent / "classes.txt").read_text().split()
    serve = tf.saved_model.load(str(exported / "1")).signatures["serving_default"]
    for name in ("small.png", "wide.png"):
        image = decoded(trained["work"] / name)
        answer = serve(images=tf.constant(image[None]))
        np.testing.assert_array_equal(answer["class_ids"].numpy()[0], expected_classes(trained, name))
        probabilities = keras.ops.convert_to_numpy(keras.ops.softmax(logits(trained["model"], image)))
        np.testing.assert_allclose(answer["probabilities"].numpy()[0], probabilities, atol=1e-5)


def runtime_answer(fmt: str, path: str, image: np.ndarray) -> dict:
    """class_ids and probabilities from the format's own runtime."""
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        names = [output.name for output in session.get_outputs()]
        return dict(zip(names, session.run(None, {"images": image[None]}), strict=True))
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(path).get_signature_runner()(images=image[None])


@pytest.mark.parametrize("fmt", ["onnx", "litert"])
def test_export_files_answer_as_the_keras_model_in_their_runtime(trained, fmt):
    pytest.importorskip({"onnx": "onnxruntime", "litert": "ai_edge_litert"}[fmt])
    filename = f"fcn8s.{'onnx' if fmt == 'onnx' else 'tflite'}"
    run(trained["work"], CLI, "export", "--model", trained["path"], "--format", fmt, "--output", filename, "--quiet")
    image = decoded(trained["work"] / "wide.png")
    answer = runtime_answer(fmt, str(trained["work"] / filename), image)
    np.testing.assert_array_equal(answer["class_ids"][0], expected_classes(trained, "wide.png"))
    probabilities = keras.ops.convert_to_numpy(keras.ops.softmax(logits(trained["model"], image)))
    np.testing.assert_allclose(answer["probabilities"][0], probabilities, atol=1e-4)


def test_serve_and_query_answer_as_the_keras_model(trained, exported):
    work = trained["work"]
    grpc_port, rest_port = free_port(), free_port()
    log = open(work / "serve.log", "w+")  # noqa: SIM115 - read back after the server has stopped
    server = subprocess.Popen(
        [CLI, "serve", "--model-base-path", "models/fcn", "--model-name", "fcn", "--port", str(grpc_port),
         "--rest-port", str(rest_port)],
        cwd=work, env=environment(), stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        import urllib.request

        def available():
            with urllib.request.urlopen(f"http://127.0.0.1:{rest_port}/v1/models/fcn", timeout=5) as reply:
                return json.load(reply)["model_version_status"][0]["state"] == "AVAILABLE"

        wait_until(lambda: server.poll() is None and _quietly(available), 180, "the served model")
        run(work, CLI, "query", "--address", f"127.0.0.1:{grpc_port}", "--model", "fcn", "--output", "answers",
            "small.png", "photo.jpg", "--quiet")  # fmt: skip
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.seek(0)
        server_log = log.read()
        log.close()
    assert server.returncode == 0, server_log[-4000:]
    got = np.asarray(Image.open(work / "answers" / "small_class_ids.png"))
    np.testing.assert_array_equal(got, expected_classes(trained, "small.png"))
    # A JPEG is decoded by the server (TensorFlow, accurate DCT) and here by Pillow: the same pixels.
    got = np.asarray(Image.open(work / "answers" / "photo_class_ids.png"))
    np.testing.assert_array_equal(got, expected_classes(trained, "photo.jpg"))


def _quietly(check) -> bool:
    try:
        return check()
    except OSError:
        return False


def test_a_converted_caffe_model_is_loaded_by_predict(tmp_path):
    from caffe_nets import fcn_net

    _, caffemodel = fcn_net("fcn16s", 21).write(str(tmp_path), (32, 32))
    run(tmp_path, CLI, "convert", "--caffemodel", caffemodel, "--output", "voc-fcn16s.keras", "--quiet")
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (33, 41, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    run(tmp_path, CLI, "predict", "--model", "voc-fcn16s.keras", "--output", "pred", "a.png", "--quiet")
    model = keras.saving.load_model(tmp_path / "voc-fcn16s.keras", compile=False)
    expected = np.argmax(logits(model, decoded(tmp_path / "a.png")), -1)
    assert len(np.unique(expected)) >= 3
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "pred" / "a_classes.png")), expected)


PACKAGE_DATA = [
    ("keras_fcn.data", "seg11valid.txt"),
    ("keras_fcn.serving", "models.config"),
    ("keras_fcn.serving", "batching_parameters.txt"),
    ("keras_fcn.serving", "docker-compose.yml"),
    ("keras_fcn.serving", "web/index.html"),
    ("keras_fcn.serving", "web/app.js"),
    ("keras_fcn.serving", "web/style.css"),
]


def test_the_installed_package_has_its_data_and_license(tmp_path):
    code = (
        "import importlib.metadata, importlib.resources, json, os, keras_fcn\n"
        f"data = {PACKAGE_DATA!r}\n"
        "sizes = [importlib.resources.files(p).joinpath(f).stat().st_size for p, f in data]\n"
        "dist = importlib.metadata.distribution('keras_fcn')\n"
        "licenses = [f for f in dist.files or [] if os.path.basename(str(f)).startswith('LICENSE')]\n"
        "direct = dist.read_text('direct_url.json')\n"
        "print(json.dumps({'sizes': sizes, 'file': keras_fcn.__file__, 'license': dist.metadata['License'],\n"
        "    'license_expression': dist.metadata['License-Expression'], 'license_files': [str(f) for f in licenses],\n"
        "    'license_text': licenses[0].read_text() if licenses else '',\n"
        "    'editable': bool(direct and json.loads(direct).get('dir_info', {}).get('editable'))}))\n"
    )
    found = json.loads(run(tmp_path, sys.executable, "-c", code).strip().splitlines()[-1])
    assert all(size > 0 for size in found["sizes"]), found["sizes"]
    assert "Apache-2.0" in (found["license_expression"] or found["license"] or "")
    assert "Apache License" in found["license_text"] and "Version 2.0" in found["license_text"]
    if os.environ.get("KERAS_FCN_INSTALLED") == "wheel":
        assert not found["editable"]
        # site-packages' copy, not the checkout's keras_fcn/ (the virtual environment may live in the checkout)
        installed = os.path.dirname(os.path.abspath(found["file"]))
        assert installed != os.path.join(CHECKOUT, "keras_fcn"), installed
        assert "site-packages" in installed.split(os.sep), installed

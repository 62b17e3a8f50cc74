"""Batch segmentation with Beam (DirectRunner): outputs against `keras-fcn predict`'s, the manifest, the dead
letter, the rerun that skips finished work, one model load per worker, the verb in a fresh process.

One tiny FCN is exported once for the module, with a pixel cap of 48x64 so that one image (80x96) takes the
tiled path; the reference is `predict_files` (what `keras-fcn predict` runs) on the Keras model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from testing import TINY, he_init, load_tool

import keras_fcn
from keras_fcn.export import export_saved_model
from keras_fcn.predict import predict_files

pytest.importorskip("apache_beam")

import apache_beam as beam  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402

from keras_fcn.beam import ImageExample, InferenceError, SavedModelHandler, counts, segment_files  # noqa: E402

NUM_CLASSES = 5
CAP = 48 * 64  # the export's pixel cap: big.png (80x96) is past it
# `keras-fcn predict --tile-size 32` on big.png: the tiles the handler cuts for this cap (32, 3 a call)
TILING = {"tile_size": 32, "overlap": 0.25, "blend": "gaussian", "batch_size": 3, "tta": (), "scales": (1.0,)}
GOOD = {"a.png": (40, 52), "b.png": (40, 52), "c.jpg": (36, 44), "d.bmp": (33, 47), "sub/e.png": (40, 52),
        "g16.png": (35, 41)}  # g16.png: 16-bit grey, which Pillow clips to 8 bits (and TensorFlow would scale)
BAD = {"bad.png": b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "empty.jpg": b""}
SAME_STEM = ("x.jpg", "x.png")  # both would be written to x_classes.png
CLI = os.path.join(os.path.dirname(sys.executable), "keras-fcn")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The export, the inputs, and `keras-fcn predict`'s class ids for each good input (tiled for big.png)."""
    root = tmp_path_factory.mktemp("beam")
    model = he_init(keras_fcn.fcn8s(NUM_CLASSES, **TINY), seed=7, bias_std=0.5)
    version = export_saved_model(model, str(root / "fcn"), max_decoded_pixels=CAP, verbose=False).path
    inputs = root / "in"
    rng = np.random.default_rng(0)
    for name, shape in {**GOOD, "big.png": (80, 96), SAME_STEM[0]: (32, 32), SAME_STEM[1]: (32, 32)}.items():
        os.makedirs((inputs / name).parent, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8)).save(inputs / name, quality=95)
    Image.fromarray(rng.integers(0, 400, GOOD["g16.png"], dtype=np.uint16)).save(inputs / "g16.png")
    for name, data in BAD.items():
        (inputs / name).write_bytes(data)
    written = predict_files(model, [str(inputs / name) for name in GOOD], str(root / "predict"))  # one trace
    expected = {name: np.asarray(Image.open(classes_png)) for name, (classes_png, _) in zip(GOOD, written, strict=True)}
    ((classes_png, _),) = predict_files(model, [str(inputs / "big.png")], str(root / "predict" / "big"), tiling=TILING)
    expected["big.png"] = np.asarray(Image.open(classes_png))
    for ids in expected.values():
        assert len(np.unique(ids)) >= 3  # class ids that vary: equal maps then mean something
    return {"root": root, "version": version, "inputs": inputs, "expected": expected}


def run_pipeline(world, output, signature="serving_default", args=(), **options) -> dict:
    pattern = str(world["inputs"]) + "/**"
    with beam.Pipeline(options=PipelineOptions(list(args))) as pipeline:
        segment_files(pipeline, world["version"], pattern, str(output), signature=signature, max_pixels=CAP,
                      **options)  # fmt: skip
    return counts(pipeline.result)


def manifest(world, output, name="manifest.jsonl") -> dict[str, dict]:
    """The lines of the manifest (or the dead letter) by input name."""
    with open(os.path.join(output, name), encoding="utf-8") as handle:
        lines = [json.loads(line) for line in handle]
    by_input = {os.path.relpath(line["input"], world["inputs"]): line for line in lines}
    assert len(by_input) == len(lines)  # one line per input
    return by_input


def agreement(got: np.ndarray, expected: np.ndarray) -> float:
    assert got.shape == expected.shape
    return float(np.mean(got == expected))


@pytest.fixture(scope="module", params=["serving_default", "serve_png"])
def segmented(world, request):
    output = world["root"] / f"out_{request.param}"
    log = world["root"] / f"loads_{request.param}.txt"
    totals = run_pipeline(world, output, request.param, load_log=str(log))
    return {"output": output, "totals": totals, "loads": log.read_text().split()}


def test_outputs_equal_keras_fcn_predict(world, segmented):
    output = segmented["output"]
    for name, expected in world["expected"].items():
        stem = os.path.splitext(name)[0]
        got = np.asarray(Image.open(output / f"{stem}_classes.png"))
        assert agreement(got, expected) >= 0.999, name  # SavedModel against Keras, big.png in tiles
        with Image.open(output / f"{stem}_overlay.png") as picture:  # the image, then a legend strip
            assert picture.height >= got.shape[0] and picture.width > got.shape[1]


def test_manifest_lists_every_input(world, segmented):
    output, lines = segmented["output"], manifest(world, segmented["output"])
    assert set(lines) == {*world["expected"], *BAD, *SAME_STEM}
    for name in world["expected"]:
        line, stem = lines[name], os.path.splitext(name)[0]
        ids = np.asarray(Image.open(output / f"{stem}_classes.png"))
        assert line["status"] == "written" and line["error"] is None
        assert line["output"] == str(output / f"{stem}_classes.png")
        assert line["overlay"] == str(output / f"{stem}_overlay.png")
        assert line["size"] == list(ids.shape) == list(world["expected"][name].shape)
        assert line["classes"] == np.unique(ids).tolist()
    assert segmented["totals"] == {"written": len(world["expected"]), "skipped": 0, "failed": len(BAD) + 2}


def test_bad_files_go_to_the_dead_letter_with_the_reason(world, segmented):
    output = segmented["output"]
    dead = manifest(world, output, "dead_letter.jsonl")
    assert set(dead) == {*BAD, *SAME_STEM}
    for name in BAD:
        assert dead[name]["status"] == "failed" and dead[name]["output"] is None
        assert dead[name]["error"].startswith(f"Cannot read image file {world['inputs'] / name}")
        assert not (output / f"{os.path.splitext(name)[0]}_classes.png").exists()
    for name in SAME_STEM:
        assert "would all be written to" in dead[name]["error"] and str(output / "x_classes.png") in dead[name]["error"]
    assert not (output / "x_classes.png").exists()
    assert manifest(world, output)["bad.png"] == dead["bad.png"]


def test_one_model_load_for_the_in_process_worker(segmented):
    assert segmented["loads"] == [str(os.getpid())]  # all the pipeline's threads shared it


def test_rerun_does_only_what_is_left(world, tmp_path):
    output = tmp_path / "out"
    run_pipeline(world, output)
    first = manifest(world, output)
    os.remove(output / "c_overlay.png")  # as if the worker had died between c's two files
    mtimes = {name: os.stat(output / name).st_mtime_ns for name in os.listdir(output) if name.endswith(".png")}
    mtimes.update({f"sub/{n}": os.stat(output / "sub" / n).st_mtime_ns for n in os.listdir(output / "sub")})
    totals = run_pipeline(world, output)
    again = manifest(world, output)
    assert totals == {"written": 1, "skipped": len(world["expected"]) - 1, "failed": len(BAD) + 2}
    assert again["c.jpg"]["status"] == "written" and (output / "c_overlay.png").exists()
    for name in set(world["expected"]) - {"c.jpg"}:
        assert again[name]["status"] == "skipped"
        assert {k: again[name][k] for k in ("output", "size", "classes")} == {
            k: first[name][k] for k in ("output", "size", "classes")
        }
    for name, mtime in mtimes.items():
        if not name.startswith("c_"):
            assert os.stat(output / name).st_mtime_ns == mtime, name  # not written again


def test_multi_process_workers_load_the_model_once_each(world, tmp_path):
    log = tmp_path / "loads.txt"
    args = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
    totals = run_pipeline(world, tmp_path / "out", args=args, load_log=str(log), overlay=False)
    assert totals["written"] == len(world["expected"])
    loads = log.read_text().split()
    assert 1 <= len(loads) <= 2 and len(set(loads)) == len(loads)  # a load per worker process, never two
    assert str(os.getpid()) not in loads  # the workers are other processes
    ids = np.asarray(Image.open(tmp_path / "out" / "a_classes.png"))
    assert agreement(ids, world["expected"]["a.png"]) >= 0.999


def test_the_verb_in_a_fresh_process(world, tmp_path):
    base = os.path.dirname(world["version"])  # the base path: the verb takes its latest version
    args = [CLI, "batch-predict", "--model-dir", base, "--input", str(world["inputs"] / "*.png"),
            "--output", str(tmp_path / "out"), "--signature", "serve_png", "--no-overlay",
            "--max-decoded-pixels", str(CAP), "--direct_num_workers=1"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "5 written, 0 skipped (done before), 1 failed" in result.stderr  # a, b, big, g16, x; bad.png
    for unused in ("apitools not found", "Resource module is not available"):  # Beam's, about missing extras
        assert unused not in result.stderr
    big = np.asarray(Image.open(tmp_path / "out" / "big_classes.png"))
    assert agreement(big, world["expected"]["big.png"]) >= 0.999
    assert not (tmp_path / "out" / "a_overlay.png").exists()


def test_the_verb_names_the_extra_when_beam_is_missing(tmp_path):
    code = (
        "import sys\nsys.modules['apache_beam'] = None\nfrom keras_fcn.cli import main\n"
        "sys.exit(main(['batch-predict', '--model-dir', 'm', '--input', '*.jpg', '--output', 'o']))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert 'pip install "keras_fcn[beam]"' in result.stderr


class StubRunner:
    """Class ids = the red channel modulo 5; refuses a whole call holding an image whose first pixel is 255, as
    `serve_png` refuses bytes it cannot decode."""

    def __init__(self):
        self.calls = []

    def class_ids(self, examples):
        import tensorflow as tf

        self.calls.append([example.pixels.shape[:2] for example in examples])
        if any(example.pixels[0, 0, 0] == 255 for example in examples):
            raise tf.errors.InvalidArgumentError(None, None, "image_bytes must hold JPEG or PNG images")
        return np.stack([example.pixels[..., 0].astype(np.int32) % 5 for example in examples])


def test_batches_are_split_by_size_within_the_cap_and_a_refused_image_spares_the_others():
    rng = np.random.default_rng(0)
    shapes = [(8, 8), (6, 10), (8, 8), (8, 8), (6, 10)]
    batch = [ImageExample(rng.integers(0, 255, (*shape, 3), dtype=np.uint8)) for shape in shapes]
    batch[2].pixels[0, 0, 0] = 255  # refused
    runner = StubRunner()
    results = SavedModelHandler("unused", max_pixels=150).run_inference(batch, runner)
    for call in runner.calls:
        assert len(set(call)) == 1 and len(call) * call[0][0] * call[0][1] <= 150  # one size, within the cap
    assert all(result.example is example for result, example in zip(results, batch, strict=True))  # in order
    for index, result in enumerate(results):
        if index == 2:
            assert isinstance(result.inference, InferenceError) and "JPEG or PNG" in str(result.inference)
        else:
            np.testing.assert_array_equal(result.inference, batch[index].pixels[..., 0] % 5)


def test_unknown_flags_are_still_refused_by_other_verbs(capsys):
    from keras_fcn.cli import main

    with pytest.raises(SystemExit):
        main(["predict", "--model", "m.keras", "x.jpg", "--output", "o", "--direct_num_workers=2"])
    assert "unrecognized arguments: --direct_num_workers=2" in capsys.readouterr().err


def test_the_benchmark_measures_the_process_tree():
    tool = load_tool("benchmark_batch_predict")
    grandchild = "import time; x = b'x' * (300 << 20); time.sleep(1)"  # 300 MiB touched, held a second
    child = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {grandchild!r}])"
    seconds, peak_mib = tool.run_measured([sys.executable, "-c", child])
    assert seconds >= 1 and peak_mib >= 300  # the grandchild's 300 MiB counted

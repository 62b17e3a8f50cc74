"""The `.caffemodel` importer against OpenCV's dnn module, an independent Caffe implementation.

Nets are written in the reference's exact layer structure (tests/caffe_nets.py) with seeded random weights in
every layer, deconvolutions included, at tiny widths. OpenCV reads the same prototxt and caffemodel; each
stage of the imported model must equal OpenCV's within 1e-4 of that stage's scale, at odd input sizes.
Feeding convention: RGB uint8-range pixels into our model; BGR minus the mean pixel into OpenCV.
"""

from __future__ import annotations

import gc
import os

import caffe_nets
import cv2
import keras
import numpy as np
import pytest

import keras_fcn
from keras_fcn import caffe, caffe_proto, caffe_reader
from keras_fcn.cli import main

TOLERANCE = 1e-4
REFERENCE_MEAN_STR = str({"mean": (104.00699, 116.66877, 122.67892), "split": "train"})
BACKBONE_STAGES = [(f"pool{i}", f"block{i}_pool") for i in range(1, 6)] + [("relu6", "fc6"), ("relu7", "fc7")]
HEAD_STAGES = {
    "fcn32s": ["score_fr", "upscore", "score"],
    "fcn16s": ["score_fr", "upscore2", "score_pool4c", "fuse_pool4", "upscore16", "score"],
    "fcn8s": ["score_fr", "upscore2", "score_pool4c", "fuse_pool4", "upscore_pool4", "score_pool3c", "fuse_pool3",
              "upscore8", "score"],
}  # fmt: skip


def _caffe_name(keras_name: str, suffix: str) -> str:
    return f"{keras_name[:-1]}{suffix}c" if keras_name.endswith(("4c", "3c")) else keras_name + suffix


def _compare_stages(model, prototxt, caffemodel, stages, image, mean):
    """Checks each (OpenCV blob, Keras layer) pair in order; the first that differs is named."""
    net = cv2.dnn.readNetFromCaffe(prototxt, caffemodel)
    net.enableFusion(False)  # every stage as its own layer computes it
    blob = (image[0][..., ::-1] - np.asarray(mean, np.float32)).transpose(2, 0, 1)[None].copy()
    net.setInput(blob)
    expected = net.forward([caffe_stage for caffe_stage, _ in stages])
    probe = keras.Model(model.inputs, [model.get_layer(name).output for _, name in stages])
    got = probe.predict(image, verbose=0)
    for (caffe_stage, keras_name), want, have in zip(stages, expected, got, strict=True):
        want = want.transpose(0, 2, 3, 1) if want.ndim == 4 else want.reshape(have.shape)
        assert want.shape == have.shape, f"first differing stage: {caffe_stage} shape {have.shape} vs {want.shape}"
        scale = float(np.abs(want).max())
        assert scale > 0, f"stage {caffe_stage} is all zero: the test would not see a difference"
        error = float(np.abs(want - have).max())
        assert error <= TOLERANCE * scale, (
            f"first differing stage: {caffe_stage} (Keras {keras_name}): max |diff| {error:.3g} at scale {scale:.3g}"
        )


CASES = {
    # name: (fcn_net kwargs, classes, input (H, W))
    "voc-fcn32s": (dict(variant="fcn32s"), 21, (37, 45)),
    "voc-fcn16s": (dict(variant="fcn16s"), 21, (41, 35)),
    "voc-fcn8s": (dict(variant="fcn8s"), 21, (37, 45)),
    "voc-fcn8s-atonce": (dict(variant="fcn8s", at_once=True), 21, (33, 47)),
    "pascalcontext-fcn8s": (dict(variant="fcn8s"), 60, (35, 39)),
    "pascalcontext-fcn16s": (dict(variant="fcn16s"), 60, (29, 31)),
    "nyud-fcn32s-color": (dict(variant="fcn32s", group=40), 40, (43, 37)),  # a grouped deconvolution
    "siftflow-fcn8s": (dict(variant="fcn8s", siftflow=True), 33, (39, 41)),
    "siftflow-fcn32s": (dict(variant="fcn32s", siftflow=True), 33, (31, 33)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_imported_fcn_equals_opencv_at_every_stage(tmp_path, name):
    kwargs, classes, size = CASES[name]
    writer = caffe_nets.fcn_net(num_classes=classes, seed=len(name), **kwargs)
    prototxt, caffemodel = writer.write(str(tmp_path), size)
    found = caffe.inspect_caffemodel(caffemodel)
    assert found.name == name and found.num_classes == classes
    model = caffe.load_caffemodel(caffemodel, prototxt)
    dataset = caffe.DATASETS[name.split("-")[0]]
    assert model.get_layer("preprocess").mean == dataset.mean  # no data layer in the file: the dataset's
    image = np.random.default_rng(1).integers(0, 256, (1, *size, 3)).astype("float32")
    suffix = "_sem" if kwargs.get("siftflow") else ""
    heads = [(_caffe_name(n, suffix), n) for n in HEAD_STAGES[kwargs["variant"]]]
    if kwargs.get("at_once"):
        heads = [("scale_pool4", "scale_pool4"), ("scale_pool3", "scale_pool3"), *heads]
    _compare_stages(model, prototxt, caffemodel, BACKBONE_STAGES + heads, image, dataset.mean)
    assert model.output_shape[-1] == classes and model.predict(image, verbose=0).shape == (1, *size, classes)


def test_vgg16_classifier_in_legacy_layers_equals_opencv(tmp_path):
    prototxt, caffemodel = caffe_nets.vgg16_net(classes=7).write(str(tmp_path), (211, 197))
    net = caffe.read_caffemodel(caffemodel)
    assert net.legacy and net.by_name()["fc6"].blobs[0].shape == (1, 1, 12, 10 * 7 * 7)  # num/channels/h/w
    model = caffe.load_caffemodel(caffemodel)
    assert model.get_layer("fc6").kernel.shape == (7, 7, 10, 12)
    image = np.random.default_rng(2).integers(0, 256, (1, 211, 197, 3)).astype("float32")  # pool5: 7x7 (ceil)
    stages = BACKBONE_STAGES + [("fc8", "fc8")]
    _compare_stages(model, prototxt, caffemodel, stages, image, keras_fcn.layers.CAFFE_BGR_MEAN)
    # The convolutionalized classifier takes larger images too: a map of class scores.
    assert model.predict(np.zeros((1, 256, 288, 3)), verbose=0).shape == (1, 2, 3, 7)
    # Its backbone and fc6/fc7 initialise an FCN by name.
    fcn = keras_fcn.build_fcn("fcn32s", 5, backbone_filters=(4, 6, 8, 8, 10), fc_units=12, init_from=model)
    np.testing.assert_array_equal(fcn.get_layer("fc6").kernel.numpy(), model.get_layer("fc6").kernel.numpy())


def test_scale_values_and_mean_are_read_from_the_file(tmp_path):
    writer = caffe_nets.fcn_net("fcn8s", 21, at_once=True, scales=(0.03, 0.0007), python_param=str(
        {"mean": (101.5, 112.25, 120.0), "split": "train"}))  # fmt: skip
    _, caffemodel = writer.write(str(tmp_path), (32, 32))
    model = caffe.load_caffemodel(caffemodel)
    assert model.get_layer("scale_pool4").scale == pytest.approx(0.03)
    assert model.get_layer("scale_pool3").scale == pytest.approx(0.0007)
    assert model.get_layer("preprocess").mean == (101.5, 112.25, 120.0)
    assert "the file's data layer" in caffe.inspect_caffemodel(caffemodel).describe()


def _mapped(path: str) -> bool:
    with open("/proc/self/maps") as f:
        return os.path.realpath(path) in f.read()


def test_the_file_is_unmapped_once_its_weights_are_copied(tmp_path):
    from keras_fcn.caffe_reader import read_caffemodel

    _, caffemodel = caffe_nets.fcn_net("fcn16s", 21).write(str(tmp_path), (32, 32))
    net = read_caffemodel(caffemodel)
    held = net.layers[0].blobs[0].array  # a view on the mapped file, still held by the caller
    assert _mapped(caffemodel)
    net.close()  # does not unmap under the view ...
    assert _mapped(caffemodel) and np.isfinite(held).all()
    del held, net  # ... which the garbage collector closes once it is gone
    gc.collect()
    assert not _mapped(caffemodel)
    with read_caffemodel(caffemodel) as net:
        assert _mapped(caffemodel)
    assert not _mapped(caffemodel) and net.layers  # unmapped while the net itself is still held
    model = caffe.load_caffemodel(caffemodel)
    caffe.inspect_caffemodel(caffemodel)
    assert not _mapped(caffemodel) and model.get_layer("score_fr").get_weights()[0].any()


def test_geometric_head_is_left_out_and_said(tmp_path):
    _, caffemodel = caffe_nets.fcn_net("fcn16s", 33, siftflow=True).write(str(tmp_path), (32, 32))
    found = caffe.inspect_caffemodel(caffemodel)
    assert found.name == "siftflow-fcn16s" and "geometric head" in found.describe()
    assert found.class_names[0] == "awning" and len(found.class_names) == 33


def test_class_names_of_each_dataset():
    assert len(caffe.PASCAL_CONTEXT_CLASSES) == 60 and caffe.PASCAL_CONTEXT_CLASSES[59] == "wood"
    assert len(caffe.NYUD_CLASSES) == 40 and len(caffe.SIFT_FLOW_CLASSES) == 33
    assert caffe.PASCAL_CONTEXT_CLASSES[:21] == caffe.VOC_CLASSES  # background and VOC's 20 come first


def test_blob_reader_agrees_with_protobuf():
    array = np.random.default_rng(0).standard_normal((3, 2, 4, 5)).astype("float32")
    for legacy in (False, True):
        encoded = caffe_nets.blob_bytes(array, legacy)
        parsed = caffe_proto.BlobProto.FromString(encoded)  # protobuf's own parse of the same bytes
        blob = caffe_reader._read_blob(encoded, 0, len(encoded), "x")
        np.testing.assert_array_equal(blob.array.ravel(), np.asarray(parsed.data, np.float32))
        dims = (parsed.num, parsed.channels, parsed.height, parsed.width) if legacy else tuple(parsed.shape.dim)
        assert blob.shape == dims == (3, 2, 4, 5)


def test_grouped_deconvolution_is_block_diagonal():
    weight = np.arange(4 * 2 * 3 * 3, dtype="float32").reshape(4, 2, 3, 3)  # 4 in, group 2: 2 outputs a group
    full = caffe._expand_groups(weight, 2)
    assert full.shape == (4, 4, 3, 3)
    np.testing.assert_array_equal(full[:2, :2], weight[:2])
    np.testing.assert_array_equal(full[2:, 2:], weight[2:])
    assert not full[:2, 2:].any() and not full[2:, :2].any()


# --- preprocessing: the mean pixel --------------------------------------------------------------------------
def test_build_fcn_saves_its_mean_and_aligned_padding_uses_it(tmp_path):
    mean = keras_fcn.layers.REFERENCE_BGR_MEAN
    model = keras_fcn.build_fcn("fcn32s", 3, mean=mean, backbone_filters=(2, 2, 2, 2, 2), fc_units=4)
    path = str(tmp_path / "m.keras")
    model.save(path)
    assert keras.saving.load_model(path).get_layer("preprocess").mean == mean
    # An image padded by hand with the mean pixel (RGB) to the stride gives the same logits on its pixels.
    image = np.random.default_rng(0).uniform(0, 255, (1, 40, 50, 3)).astype("float32")
    padded = np.broadcast_to(np.asarray(mean[::-1], "float32"), (1, 64, 64, 3)).copy()
    padded[:, :40, :50] = image
    for weight in model.weights:  # random weights everywhere, so that padding shows
        weight.assign(np.random.default_rng(1).standard_normal(weight.shape).astype("float32") * 0.3)
    np.testing.assert_allclose(model.predict(image, verbose=0), model.predict(padded, verbose=0)[:, :40, :50],
                               rtol=1e-5, atol=1e-5)  # fmt: skip
    assert keras_fcn.build_fcn("fcn32s", 3, fc_units=4).get_layer("preprocess").mean == (103.939, 116.779, 123.68)


# --- end to end: .keras, class names, SavedModel --------------------------------------------------------------
def test_convert_writes_a_keras_model_that_exports_with_its_class_names(tmp_path, capsys):
    _, caffemodel = caffe_nets.fcn_net("fcn16s", 21, python_param=REFERENCE_MEAN_STR).write(str(tmp_path), (32, 32))
    output = tmp_path / "voc-fcn16s.keras"
    assert main(["convert", "--caffemodel", caffemodel, "--output", str(output)]) == 0
    out = capsys.readouterr().out
    assert "recognised voc-fcn16s" in out and "peak memory" in out and "self-check" in out
    reloaded = keras.saving.load_model(str(output))
    original = caffe.load_caffemodel(caffemodel)
    image = np.random.default_rng(3).integers(0, 256, (1, 35, 41, 3)).astype("uint8")
    np.testing.assert_array_equal(reloaded.predict(image, verbose=0), original.predict(image, verbose=0))

    base = tmp_path / "served"
    assert main(["export", "--model", str(output), "--output", str(base)]) == 0
    with open(base / "1" / "assets.extra" / "class_names.txt", encoding="utf-8") as handle:
        assert tuple(handle.read().split("\n")[:-1]) == caffe.VOC_CLASSES
    import tensorflow as tf

    served = tf.saved_model.load(str(base / "1")).signatures["serving_default"](images=tf.constant(image))
    expected = keras.ops.convert_to_numpy(keras.ops.softmax(original(image), axis=-1))
    np.testing.assert_allclose(served["probabilities"].numpy(), expected, atol=1e-4)  # export's own tolerance


def test_export_saved_model_of_an_imported_model(tmp_path):
    _, caffemodel = caffe_nets.fcn_net("fcn32s", 40).write(str(tmp_path), (32, 32))
    model = caffe.load_caffemodel(caffemodel)
    names = caffe.inspect_caffemodel(caffemodel).class_names
    result = keras_fcn.export_saved_model(model, str(tmp_path / "base"), class_names=names, verbose=False)
    assert result.max_abs_difference <= 1e-4
    import tensorflow as tf

    image = np.random.default_rng(4).integers(0, 256, (1, 33, 29, 3)).astype("uint8")
    served = tf.saved_model.load(result.path).signatures["serving_default"](images=tf.constant(image))
    np.testing.assert_array_equal(served["class_ids"].numpy(), np.argmax(model.predict(image, verbose=0), -1))


# --- bad input ----------------------------------------------------------------------------------------------
def _bad_files(tmp_path):
    good_proto, good = caffe_nets.fcn_net("fcn32s", 21).write(str(tmp_path), (32, 32))
    data = open(good, "rb").read()
    files = {}
    files["truncated"] = tmp_path / "truncated.caffemodel"
    files["truncated"].write_bytes(data[: len(data) * 2 // 3])
    files["random bytes"] = tmp_path / "random.caffemodel"
    files["random bytes"].write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    files["empty"] = tmp_path / "empty.caffemodel"
    files["empty"].write_bytes(b"")
    _, unknown = caffe_nets.fcn_net("fcn32s", 5).write(str(tmp_path), (32, 32), stem="five")  # 5 classes
    files["unknown net"] = unknown
    # Wrong shapes: score_pool4 fed by the wrong number of channels.
    writer = caffe_nets.fcn_net("fcn16s", 21)
    for params, blobs, _ in writer.layers:
        if params.name == "score_pool4":
            blobs[0] = blobs[0][:, :3]
    _, wrong = writer.write(str(tmp_path), (32, 32), stem="wrong")
    files["shapes"] = wrong
    return good_proto, good, files


MESSAGES = {"truncated": "truncated", "random bytes": "Not a", "empty": "empty", "unknown net": "5 classes",
            "shapes": "score_pool4"}  # fmt: skip


def test_bad_files_are_refused_naming_the_problem(tmp_path):
    _, good, files = _bad_files(tmp_path)
    for kind, path in files.items():
        with pytest.raises(caffe.CaffeModelError, match=MESSAGES[kind]):
            caffe.load_caffemodel(path)
    with pytest.raises(caffe.CaffeModelError, match="not found"):
        caffe.load_caffemodel(tmp_path / "nope.caffemodel")
    mismatched = tmp_path / "mismatched.prototxt"
    proto = open(str(good).replace(".caffemodel", ".prototxt")).read()
    mismatched.write_text(proto.replace("pad: 100", "pad: 99"))
    with pytest.raises(caffe.CaffeModelError, match="conv1_1"):
        caffe.load_caffemodel(good, mismatched)


def test_cli_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys):
    _, _, files = _bad_files(tmp_path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    for kind, path in files.items():
        code = main(["convert", "--caffemodel", str(path), "--output", str(out_dir / "m.keras")])
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1 and MESSAGES[kind] in err, (kind, err)
        assert os.listdir(out_dir) == []
    code = main(["convert", "--caffemodel", str(files["shapes"]), "--output", str(out_dir / "m.h5")])
    assert code == 2 and "'.keras'" in capsys.readouterr().err and os.listdir(out_dir) == []


def test_slice_by_slice_copy_equals_a_whole_copy(tmp_path, monkeypatch):
    prototxt, caffemodel = caffe_nets.vgg16_net(classes=5).write(str(tmp_path), (224, 224))
    whole = caffe.load_caffemodel(caffemodel)
    monkeypatch.setattr(caffe, "_SLICE_BYTES", 1)  # one output unit at a time, pages released after each
    sliced = caffe.load_caffemodel(caffemodel, prototxt)
    for a, b in zip(whole.weights, sliced.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


def test_nyud_hha_net_is_refused_when_its_data_layer_says_so(tmp_path):
    writer = caffe_nets.fcn_net("fcn32s", 40, python_param=str({"tops": ["hha", "label"], "split": "trainval"}))
    _, caffemodel = writer.write(str(tmp_path), (32, 32))
    with pytest.raises(caffe.CaffeModelError, match="hha"):
        caffe.load_caffemodel(caffemodel)


def test_cli_convert_with_prototxt_and_flag_errors(tmp_path, capsys):
    prototxt, caffemodel = caffe_nets.fcn_net("fcn32s", 21).write(str(tmp_path), (32, 32))
    output = tmp_path / "m.keras"
    assert main(["convert", "--caffemodel", caffemodel, "--prototxt", prototxt, "--output", str(output),
                 "--quiet"]) == 0  # fmt: skip
    assert capsys.readouterr().out == "" and output.exists() and (tmp_path / "m.classes.txt").exists()
    assert main(["convert", "--caffemodel", caffemodel, "--output", str(output)]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["convert", "--input", caffemodel, "--prototxt", prototxt, "--output", "x.weights.h5"]) == 2
    assert "--prototxt goes with --caffemodel" in capsys.readouterr().err


def test_a_class_count_of_no_reference_dataset_names_the_file(tmp_path):
    _, caffemodel = caffe_nets.fcn_net("fcn32s", 7).write(str(tmp_path), (32, 32), stem="seven")
    with pytest.raises(caffe.CaffeModelError, match="with 7 classes") as caught:
        caffe.load_caffemodel(caffemodel)
    assert f"Received: path={caffemodel!r}" in str(caught.value)


def test_crop_offsets_and_pooling_in_the_file_must_be_the_models(tmp_path):
    for layer_name, change, message in (("score", "offset", "offset 19"), ("pool2", "stride", "pool2")):
        writer = caffe_nets.fcn_net("fcn32s", 21)
        for params, _, _ in writer.layers:
            if params.name == layer_name and change == "offset":
                params.crop_param.offset[:] = [18]
            elif params.name == layer_name:
                params.pooling_param.stride = 1
        _, caffemodel = writer.write(str(tmp_path), (32, 32), stem=layer_name)
        with pytest.raises(caffe.CaffeModelError, match=message):
            caffe.load_caffemodel(caffemodel)

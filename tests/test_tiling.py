"""Sliding-window inference: the grid, the blend weights, exactness, a numpy reference, the memory bound."""

import tracemalloc

import keras
import numpy as np
import pytest
from testing import TINY, he_init

import keras_fcn
from keras_fcn.predict import predict_masks
from keras_fcn.tiling import blend_weights, predict_tiled, tile_count, tile_starts, tile_strides


def test_grid_is_mmsegmentations_with_the_last_tile_at_the_edge():
    rng = np.random.default_rng(0)
    for _ in range(200):
        tile = int(rng.integers(1, 50))
        length, stride = int(rng.integers(1, 300)), int(rng.integers(1, tile + 1))
        starts = tile_starts(length, tile, stride)
        # mmsegmentation's EncoderDecoder.slide_inference: max(H - h + sh - 1, 0) // sh + 1 windows per axis
        expected = [
            min(i * stride, max(length - tile, 0)) for i in range(max(length - tile + stride - 1, 0) // stride + 1)
        ]
        assert starts == sorted(set(expected))
        assert starts[0] == 0 and starts[-1] == max(length - tile, 0)
    assert tile_strides((512, 256), 0.25) == (384, 192) and tile_strides((512, 256), 64) == (448, 192)
    assert tile_count((1000, 700), 512, 0.25) == 3 * 2 and tile_count((100, 70), 512, 0.5) == 1


def test_gaussian_weights_are_monais_importance_map():
    weights = blend_weights((9, 16), "gaussian", sigma_scale=0.125)
    y, x = np.mgrid[0:9, 0:16]
    sy, sx = 0.125 * 9, 0.125 * 16
    expected = np.exp(-((y - 4) ** 2) / (2 * sy**2) - ((x - 7.5) ** 2) / (2 * sx**2))
    np.testing.assert_allclose(weights, np.maximum(expected / expected.max(), 1e-3), rtol=1e-6)
    assert weights.min() == pytest.approx(1e-3) and weights.max() == 1
    np.testing.assert_array_equal(blend_weights((3, 4), "mean"), np.ones((3, 4)))


@pytest.mark.parametrize("geometry", ["aligned", "caffe"])
def test_one_tile_covering_the_image_gives_the_models_class_ids(geometry):
    model = he_init(keras_fcn.fcn8s(7, geometry=geometry, **TINY), seed=7, bias_std=0.5)
    image = np.random.default_rng(1).integers(0, 256, (45, 70, 3), dtype=np.uint8)
    expected = predict_masks(model, [image])[0]
    assert len(np.unique(expected)) >= 3
    for tile in (70, 512, (64, 96)):
        np.testing.assert_array_equal(predict_tiled(model, image, tile_size=tile), expected)


@pytest.mark.parametrize(
    "variant,precision",
    [("fcn32s", "float32"), ("fcn16s", "float32"), ("fcn8s_at_once", "float32"), ("fcn8s", "bfloat16")],
)
def test_one_tile_is_the_model_in_every_variant_and_precision(variant, precision):
    from keras_fcn.precision import with_precision

    model = with_precision(he_init(keras_fcn.build_fcn(variant, 7, **TINY), seed=3, bias_std=0.5), precision)
    image = np.random.default_rng(2).integers(0, 256, (40, 52, 3), dtype=np.uint8)
    logits = np.asarray(model(image[None].astype(np.float32)), np.float32)[0]
    class_ids = predict_tiled(model, image, tile_size=64)
    assert len(np.unique(class_ids)) >= 3
    if precision == "float32":
        np.testing.assert_array_equal(class_ids, logits.argmax(-1))
    else:  # bfloat16 logits tie on some pixels: compare where the top two differ
        top = np.sort(logits, axis=-1)
        sure = top[..., -1] - top[..., -2] > 1e-3
        assert sure.mean() > 0.9
        np.testing.assert_array_equal(class_ids[sure], logits.argmax(-1)[sure])


def pointwise_model(classes=5, seed=0):
    """A per-pixel classifier (1x1 convolutions): its scores of a pixel do not depend on the tile around it."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((None, None, 3))
    hidden = keras.layers.Conv2D(8, 1, activation="tanh")(keras.layers.Rescaling(1 / 255)(inputs))
    return keras.Model(inputs, keras.layers.Conv2D(classes, 1)(hidden))


@pytest.mark.parametrize("blend", ["mean", "gaussian"])
@pytest.mark.parametrize("tile,overlap", [(32, 0.0), (40, 0.25), ((33, 47), 0.5), (48, 16)])
def test_every_pixel_is_scored_by_the_tiles_over_it(blend, tile, overlap):
    model = pointwise_model()
    image = np.random.default_rng(2).integers(0, 256, (101, 87, 3), dtype=np.uint8)
    whole = keras.ops.convert_to_numpy(keras.ops.softmax(model(image[None].astype("float32"))))[0]
    ids, probabilities = predict_tiled(
        model, image, tile_size=tile, overlap=overlap, blend=blend, batch_size=3, return_probabilities=True
    )
    np.testing.assert_allclose(probabilities, whole, atol=1e-6)
    np.testing.assert_array_equal(ids, whole.argmax(-1))


def tile_mean_model(tiles):
    """Probabilities constant over each tile and set by its content: (red mean, 1 - red mean) / 255."""
    red = tiles[..., 0].mean(axis=(1, 2), keepdims=True)[..., None] / 255  # (n, 1, 1, 1)
    return np.broadcast_to(np.concatenate([red, 1 - red], axis=-1), (*tiles.shape[:3], 2))


@pytest.mark.parametrize("blend", ["mean", "gaussian"])
def test_blend_equals_a_numpy_sum_over_all_tiles(blend):
    image = np.random.default_rng(3).integers(0, 256, (150, 97, 3), dtype=np.uint8)
    tile, overlap = (40, 32), 0.4
    _, got = predict_tiled(tile_mean_model, image, tile, overlap, blend, return_probabilities=True)
    # The reference: every tile's weighted scores added into whole-image arrays, then divided.
    strides, weights = tile_strides(tile, overlap), blend_weights(tile, blend)
    total, weight = np.zeros((150, 97, 2)), np.zeros((150, 97, 1))
    for y in tile_starts(150, tile[0], strides[0]):
        for x in tile_starts(97, tile[1], strides[1]):
            window = image[None, y : y + tile[0], x : x + tile[1]].astype(np.float32)
            total[y : y + tile[0], x : x + tile[1]] += tile_mean_model(window)[0] * weights[..., None]
            weight[y : y + tile[0], x : x + tile[1]] += weights[..., None]
    np.testing.assert_allclose(got, total / weight, atol=1e-6)
    assert np.ptp(got[..., 0]) > 0.01  # tiles differ, so the weights matter


def test_memory_is_one_strip_of_tiles_whatever_the_height():
    height, width, tile = 20_000, 64, 64
    calls = []

    def reader(top, bottom, left, right):
        calls.append((top, bottom, left, right))
        assert 0 <= top < bottom <= height and 0 <= left < right <= width
        return np.full((bottom - top, right - left, 3), top % 256, np.uint8)

    out = np.empty((height, width), np.int32)
    tracemalloc.start()
    predict_tiled(tile_mean_model, reader, tile_size=tile, overlap=0.5, image_shape=(height, width), out=out)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # The blended scores of the whole image would be 20,000 x 64 x 2 float32: 10 MB; one strip is 32 kB.
    assert peak < 1_000_000, peak
    assert len(calls) == tile_count((height, width), tile, 0.5) == (height - tile) // 32 + 1
    assert out[0, 0] == 1 and out[-1, -1] == 0  # class 1 where the red mean is below half


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"tile_size": 16}, "at least the network's stride, 32 pixels. Received: tile_size=16"),
        ({"tile_size": 0}, "positive integer"),
        ({"overlap": 1.0}, r"overlap must be a fraction in \[0, 1\)"),
        ({"overlap": 64}, "less than the tile's sides"),
        ({"blend": "max"}, "blend must be one of"),
        ({"batch_size": 0}, "Received: batch_size=0"),
        ({"out": np.empty((3, 3), np.int32)}, r"Received: out.shape=\(3, 3\)"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    image = np.zeros((40, 50, 3), np.uint8)
    with pytest.raises(ValueError, match=message):
        predict_tiled(tile_mean_model, image, **{"tile_size": 64, **kwargs})


def test_a_reader_needs_the_image_shape():
    with pytest.raises(ValueError, match="Received: image_shape=None"):
        predict_tiled(tile_mean_model, lambda *window: None, tile_size=64)


def test_cli_predict_in_tiles_writes_predict_tileds_class_ids(tmp_path):
    from PIL import Image

    from keras_fcn import cli

    model = he_init(keras_fcn.fcn8s(7, **TINY), seed=7, bias_std=0.5)
    model.save(tmp_path / "m.keras")
    image = np.random.default_rng(4).integers(0, 256, (150, 97, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "big.png")
    args = ["predict", "--model", str(tmp_path / "m.keras"), str(tmp_path / "big.png"), "--quiet"]
    tiles = ["--tile-size", "64", "--overlap", "16", "--blend", "mean"]
    assert cli.main([*args, "--output", str(tmp_path / "out"), *tiles]) == 0
    got = np.asarray(Image.open(tmp_path / "out" / "big_classes.png"))
    expected = predict_tiled(model, image, tile_size=64, overlap=16, blend="mean")
    np.testing.assert_array_equal(got, expected)
    assert len(np.unique(expected)) >= 3
    assert cli.main([*args, "--output", str(tmp_path / "bad"), "--tile-size", "16"]) == 2


def softmax_of(model, images):
    return keras.ops.convert_to_numpy(keras.ops.softmax(model(np.asarray(images, np.float32), training=False)))


def test_flip_tta_is_the_average_of_the_image_and_its_mirror():
    model = he_init(keras_fcn.fcn8s(7, **TINY), seed=7, bias_std=0.5)
    image = np.random.default_rng(5).integers(0, 256, (45, 70, 3), dtype=np.uint8)
    plain = softmax_of(model, image[None])[0]
    mirrored = softmax_of(model, image[None, :, ::-1])[0, :, ::-1]
    _, got = predict_tiled(model, image, tile_size=None, tta=("hflip",), return_probabilities=True)
    np.testing.assert_allclose(got, (plain + mirrored) / 2, atol=1e-5)
    upside_down = softmax_of(model, image[None, ::-1])[0, ::-1]
    _, got = predict_tiled(model, image, tile_size=None, tta=("hflip", "vflip"), return_probabilities=True)
    np.testing.assert_allclose(got, (plain + mirrored + upside_down) / 3, atol=1e-5)
    assert np.abs(mirrored - plain).max() > 0.05  # the model is not symmetric: the flip matters


def test_scale_tta_resizes_the_tile_and_its_probabilities_back():
    import tensorflow as tf

    model = he_init(keras_fcn.fcn8s(7, **TINY), seed=7, bias_std=0.5)
    image = np.random.default_rng(6).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    expected = softmax_of(model, image[None])[0]
    for scale in (0.75, 1.5):
        size = (round(40 * scale), round(56 * scale))
        scaled = tf.image.resize(image[None].astype("float32"), size, method="bilinear")
        expected += tf.image.resize(softmax_of(model, scaled), (40, 56), method="bilinear").numpy()[0]
    ids, got = predict_tiled(model, image, tile_size=None, scales=(1.0, 0.75, 1.5), return_probabilities=True)
    np.testing.assert_allclose(got, expected / 3, atol=1e-5)
    np.testing.assert_allclose(got.sum(-1), 1, atol=1e-5)  # still a distribution per pixel
    with pytest.raises(ValueError, match=r"Received: tta=\('rotate',\)"):
        predict_tiled(model, image, tta=("rotate",))
    with pytest.raises(ValueError, match=r"Received: scales=\(0,\)"):
        predict_tiled(model, image, scales=(0,))


def test_cli_flags_reach_predict_and_evaluate(tmp_path, monkeypatch, capsys):
    import json

    from PIL import Image

    from keras_fcn import cli
    from keras_fcn.data import from_spec
    from keras_fcn.metrics import confusion_matrix, scores

    model = he_init(keras_fcn.fcn8s(5, **TINY), seed=7, bias_std=0.5)
    model.save(tmp_path / "m.keras")
    image = np.random.default_rng(7).integers(0, 256, (50, 61, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "a.png")
    args = ["--model", str(tmp_path / "m.keras"), "--quiet"]
    assert cli.main(["predict", *args, str(tmp_path / "a.png"), "--output", str(tmp_path / "p"), "--tta", "hflip"]) == 0
    expected = predict_tiled(model, image, tile_size=None, tta=("hflip",))
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "p" / "a_classes.png")), expected)

    tiles = ["--tile-size", "32", "--overlap", "0.5", "--scales", "1,1.25"]
    data = ["--data", "synthetic:3", "--data-option", "image_size=[40,52]", "--json", str(tmp_path / "s.json")]
    assert cli.main(["evaluate", *args, *data, *tiles]) == 0
    hist = np.zeros((5, 5), np.int64)
    for image, mask in (from_spec("synthetic:3", "val", num_classes=5, image_size=[40, 52]).load(i) for i in range(3)):
        prediction = predict_tiled(model, image, tile_size=32, overlap=0.5, scales=(1.0, 1.25))
        hist += confusion_matrix(mask, prediction, 5)
    assert json.loads((tmp_path / "s.json").read_text())["mean_iu"] == pytest.approx(scores(hist)["mean_iu"])

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # the flag sets Pillow's global
    bomb = ["predict", *args, str(tmp_path / "a.png"), "--output", str(tmp_path / "b"), "--max-image-pixels", "1000"]
    capsys.readouterr()
    assert cli.main(bomb) == 2
    error = capsys.readouterr().err
    assert "decompression bombs" in error and "--max-image-pixels N" in error and "a.png" in error

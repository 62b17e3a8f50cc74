"""TensorFlow's decoding of image files in the pipeline gives Pillow's pixels; bad files still name the file."""

import io

import numpy as np
import pytest
import tensorflow as tf
from data_trees import save_palette_png
from PIL import Image

from keras_fcn import data
from keras_fcn.data import decode


def smooth_image(seed, size=(37, 53)):
    """A photo-like image (smooth rows with noise): JPEG's blocks and chroma subsampling both matter."""
    rng = np.random.default_rng(seed)
    steps = rng.integers(-9, 10, size=size + (3,))
    return np.clip(np.cumsum(steps, axis=1) + rng.integers(60, 200, size=(1, 1, 3)), 0, 255).astype(np.uint8)


def write_images(folder):
    """Image files in many encodings; returns their paths. Pillow's reading of each is the reference."""
    image = smooth_image(0)
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 256, size=image.shape, dtype=np.uint8)
    palette = Image.fromarray(noise).convert("P", palette=Image.Palette.ADAPTIVE)
    files = {
        "q75.jpg": (Image.fromarray(image), {"quality": 75}),  # 4:2:0 chroma subsampling
        "q95_444.jpg": (Image.fromarray(image), {"quality": 95, "subsampling": 0}),
        "q50_422.jpg": (Image.fromarray(image), {"quality": 50, "subsampling": 1}),
        "progressive.jpg": (Image.fromarray(image), {"progressive": True}),
        "gray.jpg": (Image.fromarray(image[..., 0]), {}),
        "cmyk.jpg": (Image.fromarray(image).convert("CMYK"), {}),
        "rgb.png": (Image.fromarray(noise), {}),
        "gray.png": (Image.fromarray(noise[..., 0]), {}),
        "gray_alpha.png": (Image.fromarray(noise[..., :2], "LA"), {}),
        "rgba.png": (Image.fromarray(np.concatenate([noise, noise[..., :1]], -1), "RGBA"), {}),
        "palette.png": (palette, {}),
        "palette_transparent.png": (palette, {"transparency": 3}),
        "one_bit.png": (Image.fromarray(noise[..., 0] > 128), {}),
        # Left to Pillow (see keras_fcn/data/decode.py): 16-bit PNG, BMP, GIF, TIFF.
        "sixteen_bit.png": (Image.fromarray(noise[..., 0].astype(np.uint16) * 257), {}),
        "palette.bmp": (palette, {}),
        "transparent.gif": (palette, {"transparency": 3}),
        "rgb.tif": (Image.fromarray(noise), {}),
        "png_named.jpg": (Image.fromarray(noise), {"format": "PNG"}),  # the content decides, not the name
    }
    paths = {}
    for name, (picture, options) in files.items():
        paths[name] = str(folder / name)
        picture.save(paths[name], **options)
    return paths


def test_decoded_pixels_equal_pillows(tmp_path, monkeypatch):
    paths = write_images(tmp_path)
    masks = tmp_path / "masks"
    masks.mkdir()
    pairs = []
    for name, path in paths.items():
        height, width = Image.open(path).size[::-1]
        save_palette_png(masks / f"{name}.png", np.zeros((height, width), np.uint8))
        pairs.append((path, str(masks / f"{name}.png")))
    source = data.FileSource(pairs, num_classes=2)
    expected = {name: np.asarray(Image.open(path).convert("RGB")) for name, path in paths.items()}

    # Which files reach Pillow: all but JPEG and 8-bit PNG.
    via_pillow, read_image = [], decode.read_image
    spy = lambda path, contents: via_pillow.append(path) or read_image(path, contents)  # noqa: E731
    monkeypatch.setattr(decode, "read_image", spy)
    for (image, mask), name in zip(source.dataset(), paths, strict=True):
        assert image.dtype == tf.uint8 and mask.shape == image.shape[:2], name
        np.testing.assert_array_equal(image.numpy(), expected[name], err_msg=name)
    left_to_pillow = ["sixteen_bit.png", "palette.bmp", "transparent.gif", "rgb.tif"]
    assert sorted(via_pillow) == sorted(paths[name] for name in left_to_pillow)


def test_decode_image_is_a_graph_function():
    buffer = io.BytesIO()
    Image.fromarray(smooth_image(2)).save(buffer, "JPEG", quality=90)
    decoded = tf.function(decode.decode_image)(tf.constant(buffer.getvalue()))
    np.testing.assert_array_equal(decoded.numpy(), np.asarray(Image.open(buffer).convert("RGB")))


def corrupted_pairs(tmp_path):
    """A good example and one whose image is `bad`, for each kind of damage."""
    folder = tmp_path / "files"
    folder.mkdir()
    mask = np.zeros((37, 53), np.uint8)
    save_palette_png(folder / "mask.png", mask)
    good = folder / "good.jpg"
    Image.fromarray(smooth_image(3)).save(good, quality=90)
    return folder, [(str(good), str(folder / "mask.png"))]


@pytest.mark.parametrize("kind", ["jpeg", "png"])
def test_truncated_image_names_the_file(tmp_path, kind):
    folder, pairs = corrupted_pairs(tmp_path)
    whole = folder / f"whole.{kind}"
    Image.fromarray(smooth_image(4)).save(whole)
    bad = folder / f"bad.{kind}"
    bad.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    source = data.FileSource(pairs + [(str(bad), str(folder / "mask.png"))], num_classes=2)
    match = rf"Cannot read image file .*bad\.{kind}"
    with pytest.raises(data.DataError, match=match):
        source.check()
    with pytest.raises(data.DataError, match=match):
        with data.data_errors():  # found without a second pass: a truncated file goes to Pillow
            list(data.make_dataset(source, batch_size=1, seed=0))


def test_corrupt_png_data_names_the_file(tmp_path):
    """Whole (signature and IEND intact) but broken inside: TensorFlow's error is traced to the file."""
    folder, pairs = corrupted_pairs(tmp_path)
    whole = folder / "whole.png"
    Image.fromarray(smooth_image(5)).save(whole)
    contents = bytearray(whole.read_bytes())
    contents[len(contents) // 2 : len(contents) // 2 + 64] = bytes(64)
    bad = folder / "bad.png"
    bad.write_bytes(bytes(contents))
    source = data.FileSource(pairs + [(str(bad), str(folder / "mask.png"))], num_classes=2)
    with pytest.raises(data.DataError, match=r"Cannot read image file .*bad\.png"):
        source.check()  # Pillow rejects it too
    make = lambda: data.make_dataset(source, batch_size=1, shuffle=False, seed=0)  # noqa: E731
    with pytest.raises(tf.errors.InvalidArgumentError, match="Invalid PNG data") as raised:
        with data.data_errors():  # not told the sources: TensorFlow's own error, which names no file
            list(make())
    assert "bad.png" not in str(raised.value)
    with pytest.raises(data.DataError, match=r"^Cannot read image file .*bad\.png: .*PNG"):
        with data.data_errors(source):
            list(make())

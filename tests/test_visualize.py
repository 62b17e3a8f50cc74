"""Palette, palette PNGs, overlays with a legend, training-curve plots."""

import numpy as np
import pytest
from data_trees import voc_palette as reference_palette
from PIL import Image

from keras_fcn import visualize


def test_palette_matches_the_voc_devkit_formula():
    np.testing.assert_array_equal(visualize.voc_palette().reshape(-1), reference_palette())
    assert visualize.voc_palette()[15].tolist() == [192, 128, 128]  # person


def test_class_png_round_trips_ids(tmp_path):
    mask = np.random.default_rng(0).integers(0, 21, (9, 13)).astype(np.uint8)
    mask[0] = 255
    visualize.save_class_png(mask, str(tmp_path / "m.png"))
    image = Image.open(tmp_path / "m.png")
    assert image.mode == "P"
    np.testing.assert_array_equal(np.asarray(image), mask)


def test_overlay_blends_and_adds_a_legend():
    image = np.full((20, 30, 3), 100, np.uint8)
    mask = np.zeros((20, 30), np.uint8)
    mask[5:10, 5:10] = 1
    picture = np.asarray(visualize.overlay(image, mask, ["background", "aeroplane"], alpha=0.5))
    assert picture.shape[0] >= 20 and picture.shape[1] > 30  # legend strip on the right
    np.testing.assert_array_equal(picture[0, 0], [100, 100, 100])  # background left clear
    np.testing.assert_array_equal(picture[7, 7], [114, 50, 50])  # half (128, 0, 0), half 100
    bare = visualize.overlay(image, mask, legend=False)
    assert bare.size == (30, 20)
    with pytest.raises(ValueError, match="Received: image.shape"):
        visualize.overlay(image, mask[:10])


def test_save_image_writes_the_format_of_the_extension_and_no_temporary(tmp_path):
    picture = visualize.overlay(np.full((6, 8, 3), 100, np.uint8), np.ones((6, 8), np.uint8), legend=False)
    visualize.save_image(picture, str(tmp_path / "overlay.png"))
    assert Image.open(tmp_path / "overlay.png").format == "PNG"
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "overlay.png")), np.asarray(picture))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["overlay.png"]


def test_plot_history_from_dict_and_csv(tmp_path):
    history = {"loss": [1.0, 0.5], "val_loss": [1.1, 0.6], "mean_iu": [0.2, 0.4], "val_mean_iu": [0.1, 0.3]}
    visualize.plot_history(history, str(tmp_path / "a.png"))
    (tmp_path / "h.csv").write_text("epoch,loss,mean_iu\n0,1.0,0.2\n1,0.5,0.4\n")
    assert visualize.read_history(str(tmp_path / "h.csv"))["mean_iu"] == [0.2, 0.4]
    visualize.plot_history(str(tmp_path / "h.csv"), str(tmp_path / "b.png"))
    for name in ("a.png", "b.png"):
        assert Image.open(tmp_path / name).size[0] > 300

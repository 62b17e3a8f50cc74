"""tools/benchmark_tiling.py on tiny sizes: every section completes, prints its table and writes its figures."""

import json

import numpy as np
import pytest
from testing import load_tool

from keras_fcn.tiling import tile_count


@pytest.mark.slow
def test_overhead_and_large_sections(tmp_path, capsys):
    tool = load_tool("benchmark_tiling")
    path = tmp_path / "overhead.json"
    tool.main(["overhead", "--narrow", "--size", "200x150", "--tile", "64", "--json", str(path)])
    row = json.loads(path.read_text())["overhead"]
    assert row["tiles"] == tile_count((150, 200), 64, 0.25) and row["ratio"] == row["tiled_s"] / row["model_calls_s"]
    ids = tmp_path / "ids.npy"
    report = tool.main(["large", "--size", "300x170", "--tile", "64", "--output", str(ids)])
    assert report["large"]["tiles"] == tile_count((170, 300), 64, 0.25)
    class_map = np.load(ids)
    assert class_map.shape == (170, 300) and class_map.max() < 5
    assert "peak RSS of this process" in capsys.readouterr().out


@pytest.mark.slow
def test_accuracy_and_tta_sections_on_a_saved_model(tmp_path):
    import keras_fcn

    tool = load_tool("benchmark_tiling")
    model_path = str(tmp_path / "narrow.keras")
    keras_fcn.fcn8s(5, **tool.NARROW).save(model_path)
    flags = ["--model", model_path, "--scenes", "96", "--count", "2"]
    rows = tool.main(["accuracy", *flags, "--tiles", "64,128"])["accuracy"]
    assert len(rows) == 1 + 2 * 3 * 2  # whole, then 2 tiles x 3 overlaps x 2 blends
    whole = rows[0]
    for row in rows[1:]:
        assert 0 <= row["agreement"] <= 1 and 0 <= row["mean_iu"] <= 1
        if row["tile"] == 128:  # a tile covering the 96x96 scene is the whole image
            assert row["agreement"] == 1 and row["mean_iu"] == whole["mean_iu"]
    rows = tool.main(["tta", *flags])["tta"]
    assert [row["augmentation"] for row in rows] == list(tool.TTA_CHOICES) * 2

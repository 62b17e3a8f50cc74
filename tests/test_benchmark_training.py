"""tools/benchmark_training.py --quick on a narrow net: it completes, counts the work right and writes every field."""

import json

import pytest
from testing import load_tool


@pytest.mark.slow
def test_quick_run_writes_every_field(tmp_path, capsys):
    import keras_fcn
    from keras_fcn.flops import forward_flops

    tool = load_tool("benchmark_training")
    path = tmp_path / "bench.json"
    tool.main(["--quick", "--narrow", "--json", str(path)])
    report = json.loads(path.read_text())
    assert {"cpu", "cpu_count", "tensorflow", "date"} <= set(report["machine"])
    rows = {row["precision"]: row for row in report["rows"]}
    assert set(rows) == {"float32", "mixed"}
    assert rows["float32"]["compute_dtype"] == "float32"
    assert rows["mixed"]["compute_dtype"] == "bfloat16"  # no GPU in CI: mixed_bfloat16
    # The work of a step is 3x the forward FLOPs of the same narrow model at the same batch and crop.
    model = keras_fcn.build_fcn("fcn8s", 21, **tool.NARROW)
    forward = sum(forward_flops(model, (2, 64, 64, 3)).values())
    for row in rows.values():
        assert row["gflop_per_step"] == pytest.approx(3 * forward / 1e9)
        assert row["step_seconds"] > 0 and row["ratio_to_gemm"] > 0
        assert row["images_per_second"] == pytest.approx(2 / row["step_seconds"])
    assert "x GEMM" in capsys.readouterr().out

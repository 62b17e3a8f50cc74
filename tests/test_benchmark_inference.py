"""tools/benchmark_inference.py --quick on a narrow net: it completes and its JSON holds every field."""

import json

import pytest
from testing import load_tool


@pytest.mark.slow
def test_quick_run_writes_every_field(tmp_path, capsys):
    tool = load_tool("benchmark_inference")
    path = tmp_path / "bench.json"
    tool.main(["--quick", "--narrow", "--geometries", "caffe", "--json", str(path)])  # the geometry with most layers
    report = json.loads(path.read_text())
    assert set(report["gemm_flops"]) == {"float32", "bfloat16"} and min(report["gemm_flops"].values()) > 0
    assert {"cpu", "cpu_count", "tensorflow", "date"} <= set(report["machine"])
    rows = report["rows"]
    combos = {(r["geometry"], r["precision"], r["path"]) for r in rows}
    expected = {("caffe", p, k) for p in ("float32", "bfloat16") for k in ("keras", "saved_model", "grpc")}
    expected |= {("caffe", "float32", k) for k in tool.FILE_PATHS}  # float32 rows only
    assert combos == expected
    for row in rows:
        assert row["ms_per_image"] > 0 and row["gflops"] > 0 and row["ratio_to_gemm"] > 0 and row["gflop"] > 0
        if row["path"] == "keras":
            assert set(row["stage_ms"]) == set(row["stage_gflops"]) == {"vgg", "fc6", "fc7", "head"}
            assert row["fc6_as_conv2d_ms"] > 0
    assert len(report["grpc_vs_in_process"]) == 2
    assert "gRPC round trip / in-process signature call" in capsys.readouterr().out

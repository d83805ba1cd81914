"""export.build's engine-stage options on a machine without TensorRT: --precision writes and validates the
mixed-precision graph, --batch/--profiles land in report.json, the engine stage is skipped with its reason
(exit 3 under --require-engine), and --bench measures the CPU backends. Real runs of the CLI on a tiny model."""

import json

import onnx
import pytest
from onnx import TensorProto

from engines.gate import main as gate_main
from engines.tensorrt.availability import engine_stage_status
from export.build import main
from tests.limits import no_checkpoint_reading

STAGE = engine_stage_status()  # cheap: no tensorrt import when it is absent, no CUDA init
needs_no_engine_stage = pytest.mark.skipif(
    STAGE["status"] == "available",
    reason=f"the engine stage can run here (TensorRT {STAGE.get('tensorrt')} and a GPU): this test checks what a "
    "machine without them reports (tests/engines/tensorrt/test_build_gpu.py covers the stage itself)",
)

BASE = ["--exporter", "torchscript", "--max-len", "48"]


def build(tiny_ckpt, out, *extra):
    code = main(["--model", str(tiny_ckpt), "--out", str(out), *BASE, *extra])
    return code, json.loads((out / "report.json").read_text())


def low_types(path):
    m = onnx.load(str(path))
    return {i.data_type for i in m.graph.initializer} & {TensorProto.FLOAT16, TensorProto.BFLOAT16}


@pytest.mark.parametrize(
    "rope,precision,checked,elem",
    [
        ("plugin", "fp16", "rope-plugin.fp16", TensorProto.FLOAT16),
        ("plugin", "bf16", "rope-plugin.bf16-emulated", TensorProto.BFLOAT16),
        ("onnx", "fp16", "rope-onnx.fp16", TensorProto.FLOAT16),
    ],
)
def test_precision_graph_is_written_and_validated(tiny_ckpt, tmp_path, rope, precision, checked, elem):
    out = tmp_path / precision
    code, r = build(tiny_ckpt, out, "--rope", rope, "--precision", precision)
    assert code == 0 and r["passed"]
    trt_file = out / r["artifacts"]["tensorrt-onnx"]
    assert trt_file.name == f"model.rope-{rope}.{precision}.onnx" and low_types(trt_file) == {elem}
    nodes = onnx.load(str(trt_file)).graph.node
    op = "RoformerRotary" if rope == "plugin" else "RotaryEmbedding"
    assert sum(n.op_type == op for n in nodes) == (2 if rope == "plugin" else 4)
    if rope == "onnx":  # the rotation stays fp32: RotaryEmbedding's output is cast, never computed low
        by_out = {o: n for n in nodes for o in n.output}
        rot = [n for n in nodes if n.op_type == op]
        assert all(
            by_out[n.input[0]].op_type == "Cast" and by_out[n.input[0]].attribute[0].i == TensorProto.FLOAT for n in rot
        )
    assert r["precision"]["precision"] == precision and set(r["precision"]["ops"]["MatMul"]) == {"low"}
    cases = [c for c in r["validation"] if c["graph"] == checked]
    assert cases and all(c["precision"] == precision and c["passed"] for c in cases)
    assert {c["seq"] for c in cases} == {1, 47, 48}  # validation_shapes(48): S=1, the largest prime <= 48, max_len
    assert {(c["batch"], c["padded_rows"]) for c in cases} >= {(1, 0), (3, 2)}
    if precision == "bf16":  # the emulated twin is plain fp32 (ORT runs it); the real file is for TensorRT
        assert low_types(out / r["artifacts"]["rope-plugin.bf16-emulated"]) == set()
    assert gate_main([str(out / "report.json")]) == 0


@needs_no_engine_stage
def test_profiles_in_report_and_engine_skipped_with_reason(tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "p"
    code, r = build(tiny_ckpt, out, "--batch", "1,4,8", "--profiles", "16,32")
    assert code == 0
    assert r["profiles"] == [
        {"index": 0, "batch": [1, 4, 8], "sequence": [1, 16, 16]},
        {"index": 1, "batch": [1, 4, 8], "sequence": [17, 32, 32]},
        {"index": 2, "batch": [1, 4, 8], "sequence": [33, 48, 48]},
    ]  # added up to --max-len
    assert r["engine"]["status"] == "skipped" and r["engine"]["reason"] == STAGE["reason"]
    assert r["engine"]["profiles"] == r["profiles"]
    assert "engine stage skipped" in capsys.readouterr().err
    assert "## Optimization profiles" in (out / "report.md").read_text()


def test_require_engine_exits_3_before_any_work(tiny_ckpt, tmp_path, capsys, monkeypatch):
    if engine_stage_status()["status"] == "available":
        pytest.skip("the engine stage can run here, so --require-engine does not refuse")
    out = tmp_path / "r"
    no_checkpoint_reading(monkeypatch)
    code = main(["--model", str(tiny_ckpt), "--out", str(out), "--max-len", "48", "--require-engine"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3 and len(err) == 1 and err[0].startswith("unavailable: --require-engine"), err
    assert "TensorRT" in err[0] and not out.exists()  # nothing written: decided before the checkpoint is loaded


def test_usage_errors_come_before_require_engine(tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "u"
    code = main(["--model", str(tiny_ckpt), "--out", str(out), "--precision", "int3", "--require-engine"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[0].startswith("error: --precision"), err


@needs_no_engine_stage
def test_bench_measures_cpu_backends(tiny_ckpt, tmp_path):
    out = tmp_path / "b"
    code, r = build(tiny_ckpt, out, "--rope", "onnx", "--batch", "1,2,2", "--bench", "--bench-iters", "3")
    assert code == 0
    rows = {(x["backend"], x["batch"], x["seq"]): x for x in r["bench"]["results"]}
    assert set(rows) == {(b, n, 48) for b in ("trt", "torch-fp32", "torch-fp16", "ort") for n in (1, 2)}
    for n in (1, 2):
        assert rows[("torch-fp32", n, 48)]["p50_ms"] > 0 and rows[("ort", n, 48)]["p50_ms"] > 0
        assert STAGE["reason"] in rows[("trt", n, 48)]["skipped"]
    assert r["bench"]["ort_graph"] == "model.rope-onnx.onnx"
    for key in ("json", "markdown", "plot"):
        assert (out / r["artifacts"][f"bench-{key}"]).stat().st_size > 0


@needs_no_engine_stage
def test_interrupted_bench_publishes_the_validated_build(tiny_ckpt, tmp_path, monkeypatch, capsys):
    """The benchmark is an addition: Ctrl-C during it (here after the first point is timed) exits 130 and leaves the
    validated build in place, whole and passing the gate, without bench results; it used to discard the build."""
    import engines.bench

    def interrupted(times_ms):
        raise KeyboardInterrupt

    monkeypatch.setattr(engines.bench, "percentiles", interrupted)
    out = tmp_path / "i"
    code = main(
        ["--model", str(tiny_ckpt), "--out", str(out), *BASE, "--rope", "onnx", "--bench", "--bench-iters", "1"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 130 and "validated build" in err[-1] and str(out) in err[-1], err
    r = json.loads((out / "report.json").read_text())
    assert r["passed"] and not r.get("bench") and not any(k.startswith("bench") for k in r["artifacts"])
    assert not (out / "bench").exists() and gate_main([str(out)]) == 0
    assert any(line.startswith("benchmark: 2 shapes x") and "about" in line for line in err), err  # the estimate


@pytest.mark.parametrize(
    "flags,why",
    [
        (["--batch", "abc"], "--batch"),
        (["--profiles", "9,3"], "--profiles"),
        (["--choices", "0"], "--choices"),
        (["--bench", "--bench-grid", "1y128"], "--bench-grid"),
    ],
)
def test_every_flag_is_checked_before_require_engine(tiny_ckpt, tmp_path, capsys, flags, why):
    """Usage (exit 2) before availability (exit 3), even for flags whose full check needs the checkpoint."""
    code = main(["--model", str(tiny_ckpt), "--out", str(tmp_path / "o"), *flags, "--require-engine"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and why in err[0], err
    assert not (tmp_path / "o").exists()


def test_missing_checkpoint_is_exit_2_before_require_engine(tmp_path, capsys):
    assert main(["--model", str(tmp_path / "nope.pt"), "--require-engine"]) == 2
    assert "does not exist" in capsys.readouterr().err

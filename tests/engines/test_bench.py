"""engines.bench smoke test: tiny model, ORT/CPU + PyTorch CPU, 2 iterations; outputs written."""

from __future__ import annotations

import json

import torch

from engines.bench import main, percentiles


def test_percentiles():
    p = percentiles([1.0, 2.0, 3.0, 4.0, 100.0])
    assert p["p50_ms"] == 3.0 and p["p90_ms"] > p["p50_ms"] and p["p99_ms"] <= 100.0


def test_bench_smoke(tmp_path):
    from export.onnx_export import export_onnx
    from tests.fixtures.checkpoints import make_model, tiny_config

    model = make_model(tiny_config(), "model")
    ckpt = tmp_path / "ckpt"
    model.save_pretrained(ckpt)
    onnx_path = tmp_path / "model.onnx"
    export_onnx(model, "model", onnx_path, 64, "torchscript", 17)  # the product's export, as export.build runs it
    out = tmp_path / "bench"
    rc = main(
        [
            "--checkpoint",
            str(ckpt),
            "--onnx",
            str(onnx_path),
            "--batch",
            "1,2",
            "--seq",
            "8",
            "--iters",
            "2",
            "--warmup",
            "1",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    data = json.loads((out / "bench.json").read_text())
    ran = {(r["backend"], r["batch"]) for r in data["results"] if r["p50_ms"] is not None}
    assert {("ort", 1), ("ort", 2), ("torch-fp32", 1), ("torch-fp32", 2)} <= ran
    skipped = {r["backend"]: r["skipped"] for r in data["results"] if r["skipped"]}
    if not torch.cuda.is_available():
        assert "fp16" in skipped["torch-fp16"] and skipped["trt"]
    assert "| ort |" in (out / "bench.md").read_text()
    assert (out / "bench.png").read_bytes()[:4] == b"\x89PNG"


def test_bench_bad_grid_exits_2(capsys):
    assert main(["--batch", "0", "--out", "unused"]) == 2
    assert capsys.readouterr().err.startswith("error: ")

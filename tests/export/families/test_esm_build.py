"""ESM-2 end to end on the tiny config (3 layers, hidden 32, Dh 16, the 33-token vocabulary, token dropout on): two
export.build runs, each made once per session (tests/conftest.py family_build), many assertions on each.

- "fp16-mean": base model, --precision fp16, --pooling mean, --rope plugin (one RoformerRotary node per layer,
  interleaved=0);
- "fp8-mlm": masked-LM head, --precision fp8, --rope onnx (two RotaryEmbedding nodes per layer).
fp8 in CI; int8 passes its gate on the tiny ESM too (scripts/results/families/precisions.md, not in CI: the
fallback needs its draws without the all-<mask> row, export/stages/quantize.py fallback_cases). "fp16-mean" is
exported by dynamo at opset 23 (tests/fixtures/opset23.py: the exporter's batch-1 rotary caches repaired, the raw
export failing ONNX Runtime at batch 3); "fp8-mlm" by TorchScript, to stay within CI's time.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engines.gate import main as gate
from export.report.persist import read_report
from tests.fixtures.opset23 import OPSET23, check_opset23_build

MAX_LEN = 96
LEN = ("--max-len", str(MAX_LEN))
BUILDS = {
    "fp16-mean": ("model", ("--precision", "fp16", "--pooling", "mean", *LEN, *OPSET23)),
    "fp8-mlm": ("masked-lm", ("--precision", "fp8", "--rope", "onnx", *LEN, "--exporter", "torchscript")),
}


def build_of(family_build, name: str):
    task, flags = BUILDS[name]
    return family_build("esm", task, *flags)


@pytest.fixture(scope="module", params=sorted(BUILDS))
def made(request, family_build):
    out, model = build_of(family_build, request.param)
    return request.param, out, model


def test_every_graph_matches_transformers_and_passes_the_gate(made):
    name, out, model = made
    report = read_report(out)
    cases = report.validation
    assert cases and all(c["passed"] for c in cases), [c for c in cases if not c["passed"]]
    assert {1, 61, MAX_LEN} <= {c["seq"] for c in cases}
    assert any(c["batch"] == 3 and c["padded_rows"] for c in cases) and any(c["batch"] == 1 for c in cases)
    assert {c["precision"] for c in cases} == {"fp32", name.split("-")[0]}
    fp32 = [c for c in cases if c["precision"] == "fp32"]
    assert all(o["scaled_error"] <= 1e-5 for c in fp32 for o in c["outputs"].values())  # the default fp32 rtol
    assert gate([str(out)]) == 0
    layers = model.config.num_hidden_layers
    rewrite = report.rewrite
    assert rewrite["found"] == rewrite["rewritten"] == rewrite["expected"] == 2 * layers  # query, key per layer
    assert rewrite["nodes"] == (layers if rewrite["mode"] == "plugin" else 2 * layers)


def test_the_opset_23_export_is_repaired_and_runs_at_every_batch(family_build):
    check_opset23_build(*build_of(family_build, "fp16-mean"))


def test_the_report_says_what_the_family_declares(made):
    _, out, model = made
    m = read_report(out).model
    assert m["family"] == "esm" and m["inputs"] == ["input_ids", "attention_mask"] and m["type_vocab_size"] is None
    assert m["table"] == "checkpoint"  # the stored inverse frequencies, checked against the formula
    assert m["token_dropout"] is True and m["mask_token_id"] == 32 and m["rope_theta"] == 10000.0
    assert [(r["layout"], r["dim"], r["theta"]) for r in m["rotary"]] == [("split-halves", 16, 10000.0)] * 3


def test_token_dropout_in_the_graph_follows_the_mask_tokens_of_each_row(made):
    """The fp32 TensorRT-bound graph on inputs full of <mask> (a third of some rows, none in others, padding
    after them) against transformers: the per-row 0.88 / (1 - observed ratio) is in the graph, not a constant."""
    from export.validate import OnnxFile, ort_session

    name, out, model = made
    report = read_report(out)
    mode = report.rewrite["mode"]
    graph = OnnxFile(out / report.artifacts[f"rope-{mode}"], rotary_function=mode == "plugin")
    rng = np.random.default_rng(1)
    ids = rng.integers(4, 24, size=(3, 40)).astype(np.int64)
    ids[0, ::3] = 32  # a third masked
    ids[2, 5:9] = 32
    mask = np.ones_like(ids)
    mask[2, 20:] = 0
    ids[2, 20:] = model.config.pad_token_id
    feeds = {"input_ids": ids, "attention_mask": mask}
    got = ort_session(graph).run(None, feeds)[0]
    with torch.no_grad():
        ref = model(**{k: torch.from_numpy(v) for k, v in feeds.items()})[0].numpy()
    keep = mask.astype(bool)
    assert np.abs(got - ref)[keep].max() <= 1e-5 * np.abs(ref[keep]).max()


def test_pooling_is_validated_against_sentence_transformers_rule(family_build):
    out, _ = build_of(family_build, "fp16-mean")
    r = read_report(out)
    assert r.pooling["mode"] == "mean"
    graded = [c for c in r.validation if "sentence_embedding" in c["outputs"]]
    assert graded and all(c["outputs"]["sentence_embedding"]["passed"] for c in graded)
    assert {c["precision"] for c in graded} == {"fp32", "fp16"}


def test_make_demo_checkpoint_writes_an_esm_folder(tmp_path):
    """scripts/make_demo_checkpoint.py --family esm --tiny: config, weights, the per-residue tokenizer.json; the
    demo config is esm2_t33_650M_UR50D's shape (asserted on the config alone)."""
    import importlib.util
    import json
    from pathlib import Path

    from export.families.registry import by_name

    path = Path(__file__).resolve().parents[3] / "scripts" / "make_demo_checkpoint.py"
    spec = importlib.util.spec_from_file_location("make_demo_checkpoint", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--family", "esm", "--tiny", "--task", "masked-lm", "--out", str(tmp_path / "esm")]) == 0
    assert sorted(p.name for p in (tmp_path / "esm").iterdir()) == [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    ]
    cfg = json.loads((tmp_path / "esm" / "config.json").read_text())
    assert cfg["model_type"] == "esm" and cfg["position_embedding_type"] == "rotary" and cfg["token_dropout"]
    demo = by_name("esm").demo()
    shape = (demo.num_hidden_layers, demo.hidden_size, demo.num_attention_heads, demo.intermediate_size)
    assert shape == (33, 1280, 20, 5120) and (demo.vocab_size, demo.max_position_embeddings) == (33, 1026)

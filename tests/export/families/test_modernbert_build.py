"""ModernBERT end to end on the tiny config (3 layers: global, local, local; local_attention 16 = half-window 8):
export.build of each head, validated against transformers at S = 1, 61 (above the window) and --max-len 96 with
right padding, judged by the default gate; then what the rest of the toolchain does with the build (Triton
repository, CPU serving, client) without a token_type_ids input.

Every build is made once per session (tests/conftest.py family_build) and many things are asserted on it.
Both rope modes: --rope plugin (one RoformerRotary node per layer, interleaved=0) and --rope onnx (two ai.onnx
RotaryEmbedding nodes per layer), each layer's table the family's (global theta 160000, local 10000).
"fp32-mean" is exported at opset 23 (tests/fixtures/opset23.py: the exporter's batch-1 rotary caches repaired, the
raw export failing ONNX Runtime at batch 3); two builds reuse its export (--rope none: model.onnx is then the
TensorRT-bound graph; the raw export: exit 1, never a crash).
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from engines.gate import main as gate
from export.build import main as build
from export.families.registry import by_name
from export.onnx_export import FAMILY_KEY, MAX_LEN_KEY
from export.report.persist import read_report
from export.report.schema import ONNX_KEY, TENSORRT_ONNX_KEY, precision_key
from tests.fixtures.opset23 import OPSET23, batch_3_failures, check_opset23_build, reusing_export

MAX_LEN = 96
FAST = ("--exporter", "torchscript")
LEN = ("--max-len", str(MAX_LEN))
BUILDS = {  # name -> (task, flags): each precision, head, pooling mode, rope mode and attention kernel at least once
    "fp32-mean": ("model", ("--pooling", "mean", *OPSET23, *LEN)),  # the dynamo exporter at opset 23, --rope plugin
    "fp16-cls": ("model", ("--pooling", "cls", "--precision", "fp16", "--rope", "onnx", *LEN, *FAST)),
    "bf16-mlm-sdpa": ("masked-lm", ("--precision", "bf16", "--attention", "sdpa", *LEN, *FAST)),
    "int8-classifier": ("sequence-classification", ("--precision", "int8", "--rope", "onnx", *LEN, *FAST)),
    "fp8-mean": ("model", ("--pooling", "mean", "--precision", "fp8", *LEN, *FAST)),
}


def build_of(family_build, name: str):
    task, flags = BUILDS[name]
    return family_build("modernbert", task, *flags)


@pytest.fixture(scope="module", params=sorted(BUILDS))
def made(request, family_build):
    out, model = build_of(family_build, request.param)
    return request.param, out, model


def test_every_build_matches_transformers_in_and_beyond_the_window_and_passes_the_gate(made):
    name, out, model = made
    report = read_report(out)
    cases = report.validation
    assert cases and all(c["passed"] for c in cases), [c for c in cases if not c["passed"]]
    seqs = {c["seq"] for c in cases}
    assert {1, 61, MAX_LEN} <= seqs and any(c["batch"] == 3 and c["padded_rows"] for c in cases)
    precision = name.split("-")[0]
    assert {c["precision"] for c in cases} == {"fp32", precision}
    assert gate([str(out)]) == 0
    rewrite = read_report(out).rewrite
    layers = model.config.num_hidden_layers
    assert rewrite["rewritten"] == rewrite["expected"] == 2 * layers  # query and key of every layer
    assert rewrite["nodes"] == (layers if rewrite["mode"] == "plugin" else 2 * layers)


def test_the_report_says_what_the_family_declares(made):
    name, out, model = made
    m = read_report(out).model
    assert m["family"] == "modernbert" and m["inputs"] == ["input_ids", "attention_mask"]
    assert m["type_vocab_size"] is None and m["table"] is None
    assert m["attn_implementation"] == ("sdpa" if "sdpa" in name else "eager")
    assert m["attention"] == ["full", "sliding, half-window 8", "sliding, half-window 8"]
    assert [(r["table"], r["theta"], r["layout"]) for r in m["rotary"]] == [
        ("global", 160000.0, "split-halves"),
        ("local", 10000.0, "split-halves"),
        ("local", 10000.0, "split-halves"),
    ]
    md = (out / "report.md").read_text()
    assert "full (layers 0); sliding, half-window 8 (layers 1, 2)" in md
    assert f"{m['attn_implementation']} attention" in md


def test_the_graph_takes_the_family_inputs_and_holds_the_window_in_its_mask(made):
    """No token_type_ids; the family and length in the metadata; the sliding window is in the graph's mask (one
    comparison |i - j| <= 8: an Abs against the constant 8, shared by the sliding layers), in the plain export and
    still in the rotary pass's graph."""
    from tests.fixtures.faults import resize_window

    _, out, _ = made
    report = read_report(out)
    rope = report.artifacts[f"rope-{report.rewrite['mode']}"]
    for name in ("model.onnx", rope):
        graph = onnx.load(str(out / name), load_external_data=False)
        assert [i.name for i in graph.graph.input] == ["input_ids", "attention_mask"]
        props = {p.key: p.value for p in graph.metadata_props}
        assert props[FAMILY_KEY] == "modernbert" and props[MAX_LEN_KEY] == str(MAX_LEN)
        resize_window(graph, 8, 8)  # raises when no such comparison is in the graph
        with pytest.raises(ValueError, match="no \\|i - j\\| <= 7 comparison"):
            resize_window(graph, 7, 8)


def test_the_opset_23_export_is_repaired_and_runs_at_every_batch(family_build):
    check_opset23_build(*build_of(family_build, "fp32-mean"))


def test_rope_none_at_opset_23_hands_tensorrt_the_repaired_export(family_build, hf_ckpt, tmp_path, monkeypatch):
    """--rope none: model.onnx itself is the TensorRT-bound graph and the fp16 graph's source; both run and pass at
    batch 3 with padding, their RotaryEmbedding nodes reading caches expanded to the batch."""
    source, model = build_of(family_build, "fp32-mean")
    reusing_export(monkeypatch, source)
    out, layers = tmp_path / "none", model.config.num_hidden_layers
    argv = ["--model", str(hf_ckpt("modernbert")[0]), "--out", str(out), *OPSET23, *LEN]
    assert build([*argv, "--rope", "none", "--precision", "fp16"]) == 0
    report = read_report(out)
    fp16 = report.artifacts[precision_key(ONNX_KEY, "fp16")]  # made from model.onnx: what TensorRT builds from
    assert report.rewrite is None and report.artifacts[TENSORRT_ONNX_KEY] == fp16
    assert report.export["rotary_caches_expanded"] == 2 * layers
    graphs = {c["graph"] for c in report.validation}
    assert len(graphs) == 2 and all(c["passed"] for c in report.validation)
    assert all(any(c["graph"] == g and c["batch"] == 3 and c["padded_rows"] for c in report.validation) for g in graphs)
    assert gate([str(out)]) == 0
    for name in ("model.onnx", fp16):
        graph = onnx.load(str(out / name), load_external_data=False).graph
        producers = {o: n.op_type for n in graph.node for o in n.output}
        rotary = [n for n in graph.node if n.op_type == "RotaryEmbedding"]
        assert len(rotary) == 2 * layers and all(len(n.input) == 3 for n in rotary), name
        assert all(producers[i] in ("Expand", "Cast") for n in rotary for i in n.input[1:3]), name


def test_a_graph_onnx_runtime_cannot_run_at_a_shape_it_declares_fails_the_build(
    family_build, hf_ckpt, tmp_path, monkeypatch, capsys
):
    """The raw export (the repair taken out) in the build: ONNX Runtime refuses it at batch 3, which is that case
    failed with the reason (exit 1, the report written), never a crash (exit 4)."""
    source, _ = build_of(family_build, "fp32-mean")
    reusing_export(monkeypatch, source, raw=True)
    out = tmp_path / "raw"
    argv = ["--model", str(hf_ckpt("modernbert")[0]), "--out", str(out), *OPSET23, *LEN, "--rope", "none"]
    assert build(argv) == 1
    assert "internal error" not in capsys.readouterr().err
    assert {c["graph"] for c in batch_3_failures(out)} == {"onnx"}


def test_pooling_modes_are_validated_against_sentence_transformers_rule(family_build):
    for name, mode in (("fp32-mean", "mean"), ("fp16-cls", "cls"), ("fp8-mean", "mean")):
        out, _ = build_of(family_build, name)
        r = read_report(out)
        assert r.pooling["mode"] == mode
        graded = [c for c in r.validation if "sentence_embedding" in c["outputs"]]
        assert graded and all(c["outputs"]["sentence_embedding"]["passed"] for c in graded)


def test_triton_repository_serves_the_graph_inputs(family_build, tmp_path):
    pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient[grpc] not installed")
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from engines.triton import __main__ as triton

    out, _ = build_of(family_build, "fp32-mean")
    repo = tmp_path / "repo"
    assert triton.main(["--build", str(out), "--out", str(repo), "--pooling", "mean"]) == 0
    cfg = model_config_pb2.ModelConfig()
    text_format.Parse((repo / "tiny_onnx" / "config.pbtxt").read_text(), cfg)
    assert [i.name for i in cfg.input] == ["input_ids", "attention_mask"]
    assert {o.name for o in cfg.output} == {"last_hidden_state", "sentence_embedding"}


def test_served_graph_embeds_text_from_tokenizer_json_like_transformers(family_build, hf_ckpt):
    """The CPU serving model of the build, fed by the checkpoint's tokenizer.json through export.inputs.text (what
    engines.client sends), gives the mean-pooled embedding of transformers' model on the same ids."""
    from engines.client import encode, load_tokenizer
    from engines.serving.ort_model import OrtEncoder
    from export.reference import sentence_embedding_ref

    out, model = build_of(family_build, "fp32-mean")
    folder, _ = hf_ckpt("modernbert")
    feeds = encode(load_tokenizer(folder / "tokenizer.json"), ["hello world", "the cat of the world is 今天"], 64)
    assert feeds["input_ids"][0, 0] == model.config.cls_token_id and feeds["attention_mask"][0, -1] == 0
    enc = OrtEncoder.from_build(out, threads=1)
    got = enc({k: feeds[k] for k in ("input_ids", "attention_mask")})["sentence_embedding"]
    with torch.no_grad():
        hidden = model(**{k: torch.from_numpy(feeds[k]) for k in ("input_ids", "attention_mask")}).last_hidden_state
    ref = sentence_embedding_ref(hidden.numpy(), feeds["attention_mask"], "mean")
    assert float(np.abs(got - ref).max()) <= 1e-4  # fp32 ORT vs PyTorch: optimum's BERT ATOL_FOR_VALIDATION


def test_serving_pools_as_the_build_or_its_family_says(family_build, built):
    """No --pooling: a pooled build serves its own pooling; an unpooled one its family's default."""
    from engines.serving.ort_model import load_build
    from export.passes.pooling import Pooling, declared_pooling

    out, _ = build_of(family_build, "fp16-cls")
    assert declared_pooling(load_build(out, None)[0]) == Pooling("cls", normalize=False)
    family = by_name(read_report(built).model["family"])
    assert declared_pooling(load_build(built, None)[0]) == Pooling(family.default_pooling, normalize=False)


def test_client_sends_only_the_inputs_the_model_declares(hf_ckpt, monkeypatch):
    """engines.client asks the server which inputs the model has: a ModernBERT model gets no token_type_ids."""
    from engines import client

    sent = {}

    class StandIn:  # the server side of TritonEncoderClient: metadata and infer, recorded
        def __init__(self, url, model, protocol="http"):
            pass

        def input_names(self):
            return ["input_ids", "attention_mask"]

        def max_sequence_length(self):
            return 64

        def infer(self, feeds, outputs):
            sent.update(feeds)
            return {outputs[0]: np.zeros((len(feeds["input_ids"]), 4), np.float32)}

    monkeypatch.setattr(client, "TritonEncoderClient", StandIn)
    folder, _ = hf_ckpt("modernbert")
    enc = client.TextEncoder(folder / "tokenizer.json", "host:1", "m")
    assert enc.embed(["hello"]).shape == (1, 4) and sorted(sent) == ["attention_mask", "input_ids"]


def test_make_demo_checkpoint_writes_a_modernbert_folder_export_build_reads(tmp_path, capsys):
    """scripts/make_demo_checkpoint.py --family modernbert --tiny: an HF folder (config.json, model.safetensors,
    tokenizer.json) whose config is the family's tiny one; the demo size is the same code with the demo config
    (asserted on the config alone: never a demo-size model in a test)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[3] / "scripts" / "make_demo_checkpoint.py"
    spec = importlib.util.spec_from_file_location("make_demo_checkpoint", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--family", "modernbert", "--tiny", "--out", str(tmp_path / "mb")]) == 0
    with pytest.raises(SystemExit):  # an HF folder is never written over files already there
        script.main(["--family", "modernbert", "--tiny", "--out", str(tmp_path / "mb")])
    assert sorted(p.name for p in (tmp_path / "mb").iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    cfg = json.loads((tmp_path / "mb" / "config.json").read_text())
    assert cfg["model_type"] == "modernbert" and cfg["local_attention"] == 16
    demo = by_name("modernbert").demo()
    shape = (demo.num_hidden_layers, demo.hidden_size, demo.num_attention_heads, demo.local_attention)
    assert shape == (22, 768, 12, 128)
    assert (demo.vocab_size, demo.rope_parameters["full_attention"]["rope_theta"]) == (50368, 160000.0)
    assert demo.rope_parameters["sliding_attention"]["rope_theta"] == 10000.0


def test_the_int8_cpu_twin_of_a_layer_norm_without_bias_is_made_and_close(family_build, tmp_path):
    """ModernBERT's dynamo export writes LayerNormalization without its optional bias; ONNX Runtime 1.32's
    SkipLayerNormalization fusion indexed that bias (IndexError: `--precision int8` of the default export stopped
    with exit 4). The twin is made with that fusion off for such graphs and follows the fp32 graph."""
    from export.passes.quantize.cpu_twin import write_cpu_twin
    from export.validate import Shape, make_inputs, ort_session

    source, model = build_of(family_build, "fp32-mean")
    graph = onnx.load(str(source / "model.onnx"), load_external_data=False).graph
    assert any(n.op_type == "LayerNormalization" and len(n.input) < 3 for n in graph.node)
    for name in ("model.onnx", "model.onnx.data"):
        (tmp_path / name).write_bytes((source / name).read_bytes())
    cfg = model.config
    dst = tmp_path / "model.int8-cpu.onnx"
    write_cpu_twin(tmp_path / "model.onnx", dst, cfg.num_attention_heads, cfg.hidden_size)
    twin = onnx.load(str(dst))
    onnx.checker.check_model(twin, full_check=True)
    assert any(n.op_type in ("MatMulInteger", "DynamicQuantizeLinear") for n in twin.graph.node)
    feeds = make_inputs(Shape(3, 61, 2), cfg.vocab_size, None)
    ref = ort_session(tmp_path / "model.onnx").run(None, feeds)[0]
    got = ort_session(twin).run(None, feeds)[0]
    assert float(np.abs(got - ref).max() / np.abs(ref).max()) < 0.1

"""GTE, NomicBERT and EuroBERT end to end on their tiny configs: export.build of each head from an HF folder in the
checkpoints' original key names, validated against transformers at S = 1, 61 and --max-len 96, batch 1 and 3 with
right padding, judged by the default gate; what the rest of the toolchain does with the builds.

Every build is made once per session (tests/conftest.py family_build) and many things are asserted on it.
fp32 and fp16 on every family; int8 on GTE, bf16 on NomicBERT, fp8 on EuroBERT. Both rope modes on every family
(--rope plugin: one RoformerRotary node per layer; --rope onnx: two RotaryEmbedding nodes per layer), both attention
kernels and every head at least once; the TorchScript exporter, the dynamo exporter at its default opset on EuroBERT,
and at opset 23 on one build of each family (tests/fixtures/opset23.py: the exporter's batch-1 rotary caches repaired,
the raw export failing ONNX Runtime at batch 3).
The particularities in the tiny configs: GTE's rotary table is rope_type linear (its original fixed-NTK scaling),
NomicBERT's theta is 1000 and its FFN SwiGLU, EuroBERT's key and value have 2 heads for 4 query heads.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from engines.gate import main as gate
from export.families.registry import by_name
from export.report.persist import read_report
from tests.fixtures.opset23 import OPSET23, check_opset23_build

MAX_LEN = 96
FAST = ("--exporter", "torchscript")
LEN = ("--max-len", str(MAX_LEN))
BUILDS = {  # (family, name) -> (task, flags)
    ("gte", "fp32-cls"): ("model", ("--pooling", "cls", *LEN, *OPSET23)),  # --rope plugin
    ("gte", "fp16-mlm-onnx"): ("masked-lm", ("--precision", "fp16", "--rope", "onnx", *LEN, *FAST)),
    ("gte", "int8-mean"): ("model", ("--precision", "int8", "--pooling", "mean", *LEN, *FAST)),
    ("gte", "fp32-classifier-sdpa"): (
        "sequence-classification",
        ("--attention", "sdpa", "--rope", "onnx", *LEN, *FAST),
    ),
    ("nomic_bert", "fp32-mean"): ("model", ("--pooling", "mean", *LEN, *OPSET23)),
    ("nomic_bert", "fp16-tokens-onnx"): (
        "token-classification",
        ("--precision", "fp16", "--rope", "onnx", *LEN, *FAST),
    ),
    ("nomic_bert", "bf16-mlm-sdpa"): ("masked-lm", ("--precision", "bf16", "--attention", "sdpa", *LEN, *FAST)),
    ("eurobert", "fp32-mean"): ("model", ("--pooling", "mean", *LEN)),  # the defaults: dynamo, --rope plugin
    ("eurobert", "fp16-classifier-onnx"): (
        "sequence-classification",
        ("--precision", "fp16", "--rope", "onnx", *LEN, *FAST),
    ),
    ("eurobert", "fp8-mean"): ("model", ("--precision", "fp8", "--pooling", "mean", *LEN, *FAST)),
    ("eurobert", "fp32-tokens-sdpa"): ("token-classification", ("--attention", "sdpa", *LEN, *OPSET23)),  # Attention-23
}
ROTARY = {  # family -> what report.json model.rotary says of each layer: table, theta, rope type, parameters, heads
    "gte": ("default", 160000.0, "linear", {"factor": pytest.approx(8 ** (2 / 16))}, [2, 2]),
    "nomic_bert": ("default", 1000.0, "default", {}, [2, 2]),
    "eurobert": ("default", 250000.0, "default", {}, [4, 2]),
}


def build_of(family_build, family: str, name: str):
    task, flags = BUILDS[(family, name)]
    return family_build(family, task, *flags)


@pytest.fixture(scope="module", params=sorted(BUILDS), ids=lambda k: "-".join(k))
def made(request, family_build):
    family, name = request.param
    out, model = build_of(family_build, family, name)
    return family, name, out, model


def test_every_build_matches_transformers_and_passes_the_gate(made):
    family, name, out, model = made
    report = read_report(out)
    cases = report.validation
    assert cases and all(c["passed"] for c in cases), [c for c in cases if not c["passed"]]
    assert {1, 61, MAX_LEN} <= {c["seq"] for c in cases}
    assert any(c["batch"] == 3 and c["padded_rows"] for c in cases) and any(c["batch"] == 1 for c in cases)
    precision = name.split("-")[0]
    assert {c["precision"] for c in cases} == {"fp32", precision}
    fp32 = {c["graph"] for c in cases if c["precision"] == "fp32"}
    assert {"onnx", f"rope-{report.rewrite['mode']}"} <= fp32  # the plain export and the rotary pass's graph
    assert gate([str(out)]) == 0
    rewrite = report.rewrite
    layers = model.config.num_hidden_layers
    assert rewrite["found"] == rewrite["rewritten"] == rewrite["expected"] == 2 * layers  # query and key, each layer
    assert rewrite["nodes"] == (layers if rewrite["mode"] == "plugin" else 2 * layers) and not rewrite["skipped"]


OPSET23_BUILDS = [key for key, (_, flags) in BUILDS.items() if "--opset" in flags]


@pytest.mark.parametrize("key", OPSET23_BUILDS, ids="-".join)
def test_the_opset_23_export_is_repaired_and_runs_at_every_batch(family_build, key):
    out, model = build_of(family_build, *key)
    check_opset23_build(out, model, BUILDS[key][0])


def test_the_report_says_what_the_family_declares(made):
    family, name, out, model = made
    m = read_report(out).model
    fam = by_name(family)
    assert m["family"] == family and m["inputs"] == list(fam.inputs) and m["task"] == BUILDS[(family, name)][0]
    assert m["attn_implementation"] == ("sdpa" if "sdpa" in name else "eager")
    assert m["attention"] == ["full"] * model.config.num_hidden_layers
    table, theta, rope_type, parameters, heads = ROTARY[family]
    for r in m["rotary"]:
        assert (r["layout"], r["table"], r["theta"], r["rope_type"]) == ("split-halves", table, theta, rope_type)
        assert r["rope_parameters"] == parameters and r["heads"] == heads and r["sites"] == ["query", "key"]
    assert m["prompts"] == dict(fam.prompts)
    assert (m["type_vocab_size"] is None) == ("token_type_ids" not in fam.inputs)


def test_the_graph_takes_the_family_inputs_and_the_rewrite_reads_its_tables(made):
    """The rewritten graph's rotary nodes read the family's table (GTE: the linear one) for --max-len rows; with
    --rope onnx the key's RotaryEmbedding runs on the key heads (EuroBERT: 2) and the query's on 4."""
    import onnx
    from onnx import numpy_helper

    family, _, out, model = made
    report = read_report(out)
    graph = onnx.load(str(out / report.artifacts[f"rope-{report.rewrite['mode']}"]), load_external_data=False)
    assert [i.name for i in graph.graph.input] == list(by_name(family).inputs)
    table = by_name(family).rotaries(model.config)[0].table
    cos, sin = table.cos_sin(MAX_LEN)
    inits = {t.name: numpy_helper.to_array(t) for t in graph.graph.initializer if t.data_location == 0}
    want = [sin, cos] if report.rewrite["mode"] == "onnx" else [np.concatenate([sin, cos], axis=1)]
    for w in want:
        assert any(v.shape == w.shape and np.array_equal(v, w) for v in inits.values())


def test_pooled_output_follows_the_sentence_transformers_rule(family_build):
    """sentence_embedding of every pooled build graded against sentence-transformers' rule (export.reference) on
    PyTorch's hidden states, within the precision's thresholds; the pooling the report names is the build's."""
    for (family, name), (_, flags) in BUILDS.items():
        if "--pooling" not in flags:
            continue
        out, _ = build_of(family_build, family, name)
        r = read_report(out)
        assert r.pooling["mode"] == flags[flags.index("--pooling") + 1]
        graded = [c for c in r.validation if "sentence_embedding" in c["outputs"]]
        assert graded and all(c["outputs"]["sentence_embedding"]["passed"] for c in graded), (family, name)


def test_served_embedding_of_tokenizer_json_text_is_transformers_pooled_as_the_family_says(family_build, hf_ckpt):
    """The CPU serving model of each family's fp32 build (pooled with the family's default: GTE cls, NomicBERT and
    EuroBERT mean) embeds the ids of the checkpoint's tokenizer.json as transformers' model pooled does."""
    from engines.client import encode, load_tokenizer
    from engines.serving.ort_model import OrtEncoder
    from export.reference import sentence_embedding_ref

    for family in ("gte", "nomic_bert", "eurobert"):
        out, model = build_of(family_build, family, "fp32-cls" if family == "gte" else "fp32-mean")
        folder, _ = hf_ckpt(family)
        inputs = list(by_name(family).inputs)
        feeds = encode(load_tokenizer(folder / "tokenizer.json"), ["hello world", "the cat of the world is 今天"], 64)
        assert feeds["attention_mask"][0, -1] == 0  # right padding
        got = OrtEncoder.from_build(out, None, threads=1)({k: feeds[k] for k in inputs})["sentence_embedding"]
        with torch.no_grad():
            hidden = model(**{k: torch.from_numpy(feeds[k]) for k in inputs}).last_hidden_state
        mode = by_name(family).default_pooling
        ref = sentence_embedding_ref(hidden.numpy(), feeds["attention_mask"], mode)
        assert float(np.abs(got - ref).max()) <= 1e-4, family  # fp32 ORT vs PyTorch: optimum's ATOL_FOR_VALIDATION


def test_triton_repository_publishes_the_family_prompts(family_build, tmp_path):
    """NomicBERT's build publishes its task prefixes in the model's config (parameter prompts, JSON); GTE's, which
    declares none, publishes no such parameter."""
    pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient[grpc] not installed")
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from engines.triton import __main__ as triton
    from engines.triton.config import PROMPTS

    for family, build in (("nomic_bert", "fp32-mean"), ("gte", "fp32-cls")):
        out, _ = build_of(family_build, family, build)
        repo = tmp_path / family
        assert triton.main(["--build", str(out), "--out", str(repo)]) == 0
        cfg = model_config_pb2.ModelConfig()
        text_format.Parse((repo / "tiny_onnx" / "config.pbtxt").read_text(), cfg)
        assert [i.name for i in cfg.input] == list(by_name(family).inputs)
        if by_name(family).prompts:
            assert json.loads(cfg.parameters[PROMPTS].string_value) == dict(by_name(family).prompts)
        else:
            assert PROMPTS not in cfg.parameters


def test_served_python_model_config_publishes_the_prompts(family_build):
    from engines.serving.ort_model import load_build
    from engines.serving.python_repository import python_config_text
    from engines.triton.config import PROMPTS, prompts_parameter

    out, _ = build_of(family_build, "nomic_bert", "fp32-mean")
    model, limits, _ = load_build(out, None)
    extra = prompts_parameter(read_report(out).model)
    text = python_config_text("m", model, limits, 4, None, None, extra)
    assert PROMPTS in text and "search_query: " in text
    assert prompts_parameter({"prompts": {}}) == {} and prompts_parameter(None) == {}


def test_the_text_prefixes_reach_the_server_as_sentence_transformers_adds_them(family_build, hf_ckpt, monkeypatch):
    """engines.client with --prompt: the served model's published prefix is prepended to each text before
    tokenizing (sentence-transformers' encode(prompt_name=)); a per-call prompt_name overrides the encoder's; an
    unknown name is refused with the names the model has, before anything is sent."""
    from engines import client
    from engines.triton.config import prompts_parameter
    from export.errors import UsageError

    out, _ = build_of(family_build, "nomic_bert", "fp32-mean")
    params = prompts_parameter(read_report(out).model) | {"max_sequence_length": str(MAX_LEN)}
    sent: list[dict] = []

    class StandIn:  # the server side of TritonEncoderClient: metadata, config parameters, infer (recorded)
        def __init__(self, url, model, protocol="http"):
            self.model = model

        def input_names(self):
            return ["input_ids", "attention_mask", "token_type_ids"]

        def parameters(self):
            return dict(params)

        max_sequence_length = client.TritonEncoderClient.max_sequence_length
        prompts = client.TritonEncoderClient.prompts

        def infer(self, feeds, outputs):
            sent.append(feeds)
            return {outputs[0]: np.zeros((len(feeds["input_ids"]), 4), np.float32)}

        def close(self):
            pass

    monkeypatch.setattr(client, "TritonEncoderClient", StandIn)
    folder, _ = hf_ckpt("nomic_bert")
    tok = client.load_tokenizer(folder / "tokenizer.json")
    enc = client.TextEncoder(folder / "tokenizer.json", "host:1", "m", prompt_name="search_query")
    enc.embed(["hello world"])
    enc.embed(["hello world"], prompt_name="clustering")
    enc.embed(["search_query: hello world"], prompt_name=None)  # the encoder's own prompt again
    expect = [
        client.encode(tok, [text], MAX_LEN)["input_ids"]
        for text in ("search_query: hello world", "clustering: hello world", "search_query: search_query: hello world")
    ]
    assert all(np.array_equal(s["input_ids"], e) for s, e in zip(sent, expect, strict=True))
    assert len(expect[0][0]) > len(client.encode(tok, ["hello world"], MAX_LEN)["input_ids"][0])
    with pytest.raises(UsageError, match=r"--prompt 'query': model m publishes no such prompt \(it has: classif"):
        client.TextEncoder(folder / "tokenizer.json", "host:1", "m", prompt_name="query")
    params.pop("prompts")
    with pytest.raises(UsageError, match=r"publishes no such prompt \(it has: none\)"):
        client.TextEncoder(folder / "tokenizer.json", "host:1", "m", prompt_name="search_query")
    assert len(sent) == 3


def test_client_cli_takes_prompt(monkeypatch, capsys, hf_ckpt):
    from engines import client

    seen = {}

    class StandIn:
        def __init__(self, vocab, url, model, protocol, *, max_length, prompt_name, wait_s):
            seen["prompt"] = prompt_name

        def embed(self, texts):
            return np.zeros((len(texts), 2), np.float32)

        def close(self):
            pass

    monkeypatch.setattr(client, "TextEncoder", StandIn)
    folder, _ = hf_ckpt("nomic_bert")
    argv = ["--vocab", str(folder / "tokenizer.json"), "--model", "m", "--prompt", "search_document", "a text"]
    assert client.main(argv) == 0 and seen["prompt"] == "search_document"
    assert json.loads(capsys.readouterr().out)["embeddings"] == [[0.0, 0.0]]


@pytest.mark.parametrize("family", ["gte", "nomic_bert", "eurobert"])
def test_make_demo_checkpoint_writes_each_family(family, tmp_path):
    """scripts/make_demo_checkpoint.py --family F --tiny: an HF folder export.build reads; the demo size is the
    same code with the demo config, shaped like the real checkpoint (asserted on the config alone)."""
    import importlib.util
    from pathlib import Path

    from export.checkpoint.rebuild import inspect_checkpoint

    path = Path(__file__).resolve().parents[3] / "scripts" / "make_demo_checkpoint.py"
    spec = importlib.util.spec_from_file_location("make_demo_checkpoint", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--family", family, "--tiny", "--out", str(tmp_path / "ck")]) == 0
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert json.loads((tmp_path / "ck" / "config.json").read_text())["model_type"] == family
    assert inspect_checkpoint(tmp_path / "ck").family.name == family
    demo = by_name(family).demo()
    shape = (demo.num_hidden_layers, demo.hidden_size, demo.num_attention_heads, demo.vocab_size)
    assert (
        shape
        == {"gte": (12, 768, 12, 250048), "nomic_bert": (12, 768, 12, 30528), "eurobert": (12, 768, 12, 128256)}[family]
    )
    theta = {"gte": 160000.0, "nomic_bert": 1000.0, "eurobert": 250000.0}[family]
    assert demo.rope_parameters["rope_theta"] == theta and demo.max_position_embeddings == (
        2048 if family == "nomic_bert" else 8192
    )


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_the_client_reads_prompts_and_positions_from_either_protocol_config(protocol):
    """TritonEncoderClient.parameters() reads the config as tritonclient returns it: a JSON dict over HTTP, a
    ModelConfigResponse over gRPC; a prompts value that is not a JSON object of strings is ignored."""
    from engines import client

    published = {"max_sequence_length": "64", "prompts": json.dumps({"search_query": "search_query: "})}
    if protocol == "http":
        cfg = {"parameters": {k: {"string_value": v} for k, v in published.items()}}
    else:
        service_pb2 = pytest.importorskip("tritonclient.grpc.service_pb2", reason="tritonclient[grpc] not installed")
        cfg = service_pb2.ModelConfigResponse()
        for k, v in published.items():
            cfg.config.parameters[k].string_value = v

    class Server:
        def get_model_config(self, model):
            return cfg

    c = client.TritonEncoderClient.__new__(client.TritonEncoderClient)
    c._client, c.model, c.protocol = Server(), "m", protocol
    assert c.parameters() == published and c.max_sequence_length() == 64
    assert c.prompts() == {"search_query": "search_query: "}
    for bad in ('["search_query: "]', '{"a": 1}', "not json"):
        assert client.parse_prompts(bad) == {}
    assert client.parse_prompts(None) == {}

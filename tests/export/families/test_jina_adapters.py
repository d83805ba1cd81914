"""jina-embeddings-v3's task adapters as data: `--task` merges one task's LoRA adapter into the weights before export.

The reference: `reference_model(folder, task)` merges the adapter the way jinaai/xlm-roberta-flash-implementation's
modeling_lora.py applies it (`LoRAParametrization.lora_forward`: X + matmul(*swap((lora_B[t], lora_A[t]))).view(X.shape)
* scaling, swap for nn.Embedding, scaling = lora_alpha / lora_rank, t = the task's index in
config.lora_adaptations), written here independently of export/families/jina_lora.py, on the original tensors, and
lets transformers itself convert the merged weights (from_pretrained of its save layout). Every check below is
against that model: the loader's merge, each task's graph, the faults.

Two builds of the tiny original checkpoint (tests/fixtures/jina_original.py: the original names and shapes, five
tasks, rank 4), each made once: `--task all --precision fp16 --pooling mean` (--rope plugin) and `--task
text-matching --precision bf16 --rope onnx`, the latter exported by dynamo at opset 23 (tests/fixtures/opset23.py:
the exporter's batch-1 rotary caches repaired, the raw export failing ONNX Runtime at batch 3).
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from safetensors.torch import load_file, save_file

from engines.gate import main as gate
from export.build import main as build
from export.checkpoint.rebuild import load_checkpoint
from export.families.jina_lora import PREFIXES, TASKS
from export.folder.ownership import Ownership
from export.onnx_export import export_onnx
from export.report.persist import read_report
from export.report.thresholds import DEFAULTS, Thresholds
from export.validate import OnnxFile, Shape, TorchReference, make_inputs, validate_graphs
from tests.export.families.test_modernbert_faults import judged
from tests.fixtures.opset23 import OPSET23, check_opset23_build
from tests.helpers import one_line

MAX_LEN = 96
WRAPPER, ORIGINAL = "roberta.", ".parametrizations.weight.original"
EMBEDDING_MODULES = ("embeddings.word_embeddings", "embeddings.token_type_embeddings")  # nn.Embedding in the original


def reference_state(folder, task: str) -> dict:
    """The original weights with `task`'s adapter applied as modeling_lora.py's lora_forward does, in the save layout
    transformers reads (wrapper prefix and parametrization names dropped)."""
    state = load_file(str(folder / "model.safetensors"))
    config = json.loads((folder / "config.json").read_text())
    t = config["lora_adaptations"].index(task)
    scaling = config["lora_alpha"] / config["lora_rank"]
    out = {}
    for key, x in state.items():
        if "lora_" in key:
            continue
        if not key.endswith(ORIGINAL):
            out[key.removeprefix(WRAPPER)] = x
            continue
        module = key.removesuffix(ORIGINAL)
        lora_a = state[module + ".parametrizations.weight.0.lora_A"]
        lora_b = state[module + ".parametrizations.weight.0.lora_B"]
        fan_in_fan_out = module.endswith(EMBEDDING_MODULES)
        swap = (lambda p: (p[1], p[0])) if fan_in_fan_out else (lambda p: p)
        out[module.removeprefix(WRAPPER) + ".weight"] = (
            x + torch.matmul(*swap((lora_b[t], lora_a[t]))).view(x.shape) * scaling
        )
    return out


def reference_model(folder, task: str, tmp_path):
    """transformers' JinaEmbeddingsV3Model from the reference-merged weights (its own conversion of the layout)."""
    from transformers import JinaEmbeddingsV3Config, JinaEmbeddingsV3Model

    config = json.loads((folder / "config.json").read_text())
    hf = JinaEmbeddingsV3Config(
        **{
            k: config[k]
            for k in (
                "vocab_size",
                "hidden_size",
                "num_hidden_layers",
                "num_attention_heads",
                "intermediate_size",
                "max_position_embeddings",
                "type_vocab_size",
                "layer_norm_eps",
                "pad_token_id",
            )
        },  # fmt: skip
        rope_parameters={"rope_type": "default", "rope_theta": config["rotary_emb_base"]},
    )
    where = tmp_path / f"reference-{task}"
    where.mkdir()
    hf.save_pretrained(where)
    save_file({k: v.contiguous() for k, v in reference_state(folder, task).items()}, str(where / "model.safetensors"))
    return JinaEmbeddingsV3Model.from_pretrained(where, attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def references(jina_original, tmp_path_factory):
    folder, _, _ = jina_original()
    tmp = tmp_path_factory.mktemp("jina-references")
    return {t: reference_model(folder, t, tmp) for t in TASKS}


def close(a, b) -> float:
    """Largest |a - b| over every weight, relative to that weight's largest |value|."""
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return max(float((sa[k] - sb[k]).abs().max() / sa[k].abs().max().clamp(min=1e-30)) for k in sa)


def test_the_merge_of_every_task_is_the_reference_merge(jina_original, references):
    """Each --task gives transformers' model of the reference merge (fp32 rounding apart); the tasks differ from each
    other and from the base weights (so a wrong index or a skipped module cannot pass)."""
    folder, base, lora = jina_original()
    assert set(lora) >= {"embeddings.word_embeddings", "encoder.layers.2.mixer.Wqkv", "pooler.dense"}
    for task in TASKS:
        ck = load_checkpoint(folder, adapter_task=task)
        assert close(ck.model, references[task]) <= 1e-6
        assert ck.adapter["task"] == task and ck.adapter["index"] == TASKS.index(task) and ck.adapter["scaling"] == 0.25
        assert ck.adapter["prefix"] == PREFIXES[task] and ck.adapter["weights_merged"] == len(lora) == 15
    assert min(close(references[a], references[b]) for a in TASKS for b in TASKS if a != b) > 1e-2
    none = load_checkpoint(folder, adapter_task="none")
    assert none.adapter == {"task": None, "tasks": list(TASKS), "kind": "LoRA"} and close(none.model, base) == 0.0
    assert close(none.model, references["retrieval.query"]) > 1e-2


@pytest.mark.parametrize(
    "edit,task,fragment",
    [
        (None, None, "holds 5 task adapters (retrieval.query, retrieval.passage, separation, classification, "
         "text-matching); pass --task NAME to build one, --task all for one sub-folder each, or --task none"),
        (None, "retrieval", "--task retrieval: {folder} holds the task adapters retrieval.query"),
        ("rank-3", "separation", "adapter of embeddings.word_embeddings has lora_A (5, 99, 3), lora_B (5, 3, 32); "
         "expected (5, 99, 4), (5, 4, 32)"),
        ("no-tasks", "separation", "config lora_adaptations is None; it must list the task of each adapter slice"),
        ("no-alpha", "separation", "config lora_rank 4 / lora_alpha None"),
        ("four-tasks", "separation", "lora_A (5, 1, 4), lora_B (5, 4, 32); expected (4, 1, 4), (4, 4, 32) for 4"),
        ("lone-B", "separation", "adapter of pooler.dense is incomplete"),
    ],
)  # fmt: skip
def test_a_task_the_checkpoint_cannot_give_is_refused_in_one_line(
    jina_original, tmp_path, capsys, edit, task, fragment
):
    """Through export.build: exit 2, one line, nothing written."""
    folder, _, _ = jina_original()
    if edit is not None:
        state = load_file(str(folder / "model.safetensors"))
        config = json.loads((folder / "config.json").read_text())
        a = WRAPPER + "embeddings.word_embeddings.parametrizations.weight.0.lora_A"
        b = a.replace("lora_A", "lora_B")
        if edit == "rank-3":
            state[a], state[b] = state[a][..., :3].contiguous(), state[b][:, :3].contiguous()
        elif edit == "lone-B":
            del state[WRAPPER + "pooler.dense.parametrizations.weight.0.lora_A"]
        config = {
            "no-tasks": {**config, "lora_adaptations": None},
            "no-alpha": {**config, "lora_alpha": None},
            "four-tasks": {**config, "lora_adaptations": list(TASKS[:4])},
        }.get(edit, config)
        folder = tmp_path / "ckpt"
        folder.mkdir()
        save_file(state, str(folder / "model.safetensors"))
        (folder / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    flags = ["--task", task] if task else []
    assert build(["--model", str(folder), "--out", str(out), "--max-len", "32", *flags]) == 2
    err = one_line(capsys)
    assert fragment.format(folder=folder) in err, err
    assert not out.exists()


# ---- the builds ------------------------------------------------------------------------------------------------

LEN = ("--max-len", str(MAX_LEN))
BUILDS = {
    "all-fp16": ("--task", "all", "--precision", "fp16", "--pooling", "mean", *LEN, "--exporter", "torchscript"),
    "text-matching-bf16": ("--task", "text-matching", "--precision", "bf16", "--rope", "onnx", *LEN, *OPSET23),
}


@pytest.fixture(scope="module")
def builds(jina_original, tmp_path_factory):
    folder, _, _ = jina_original()
    made = {}
    for name, flags in BUILDS.items():
        out = tmp_path_factory.mktemp(f"jina-{name}") / "out"
        assert build(["--model", str(folder), "--out", str(out), *flags]) == 0, name
        made[name] = out
    return made


def test_task_all_writes_one_gated_build_per_task_under_one_manifest(builds):
    out = builds["all-fp16"]
    index = json.loads((out / "tasks.json").read_text())["tasks"]
    assert [t["task"] for t in index] == list(TASKS) and all(t["passed"] for t in index)
    assert [t["prefix"] for t in index] == [PREFIXES[t] for t in TASKS]
    assert index[0]["validated"] == "every shape"
    assert all(t["validated"] == "one shape (B=3 S=61 pad=2), same graph as retrieval.query" for t in index[1:])
    owned = set(Ownership(out).files())
    for k, task in enumerate(TASKS):
        report = read_report(out / task)
        assert report.adapter["task"] == task and report.adapter["index"] == k
        assert {f"{task}/{p}" for p in report.artifacts_sha256} | {f"{task}/report.json"} <= owned
        assert gate([str(out / task)]) == 0
        seqs = {c["seq"] for c in report.validation}
        assert seqs == ({1, 61, MAX_LEN} if k == 0 else {61}) and all(c["passed"] for c in report.validation)
        graded = [c for c in report.validation if "sentence_embedding" in c["outputs"]]
        assert graded and {c["precision"] for c in graded} == {"fp32", "fp16"}
        assert "## Task adapter" in (out / task / "report.md").read_text()
        assert report.rewrite["found"] == report.rewrite["rewritten"] == report.rewrite["expected"] == 6
    assert "tasks.json" in owned and not (out / "report.json").exists()


def test_every_task_graph_matches_the_reference_merge(builds, references):
    """The fp32 TensorRT-bound graph of each task against transformers' model of that task's reference merge, at
    batch 3 with padding and at --max-len: within the default fp32 thresholds; against the next task's reference,
    far outside them (the graphs hold their own task)."""
    from export.passes.pooling import Pooling

    out = builds["all-fp16"]
    mean = Pooling("mean", normalize=False)
    for k, task in enumerate(TASKS):
        report = read_report(out / task)
        outputs = ("last_hidden_state", "sentence_embedding")
        graph = OnnxFile(out / task / report.artifacts["rope-plugin"], rotary_function=True, outputs=outputs)
        for ref, want in ((task, True), (TASKS[(k + 1) % len(TASKS)], False)):
            shapes = [Shape(3, 61, 2), Shape(1, MAX_LEN, 0)] if want else [Shape(3, 61, 2)]
            reference = TorchReference(references[ref], "model", pooling=mean)
            cases = validate_graphs({"g": (graph, "fp32")}, reference, shapes, Thresholds.defaults(), 99, None)
            assert {n for c in cases for n in c["outputs"]} == set(outputs)
            assert all(c["passed"] for c in cases) is want, (task, ref)


def test_one_task_at_bf16_with_rope_onnx(builds):
    out = builds["text-matching-bf16"]
    report = read_report(out)
    assert report.adapter["task"] == "text-matching" and report.adapter["index"] == 4 and report.adapter["prefix"] == ""
    cases = report.validation
    assert {c["precision"] for c in cases} == {"fp32", "bf16"} and {1, 61, MAX_LEN} <= {c["seq"] for c in cases}
    assert all(c["passed"] for c in cases) and gate([str(out)]) == 0
    assert report.rewrite["mode"] == "onnx" and report.rewrite["rewritten"] == report.rewrite["expected"] == 6


def test_the_opset_23_export_is_repaired_and_runs_at_every_batch(builds, references):
    check_opset23_build(builds["text-matching-bf16"], references["text-matching"])


def test_the_structure_check_sees_a_different_graph(builds, tmp_path):
    from export.build_tasks import same_structure

    out = builds["all-fp16"]
    first, other = out / TASKS[0], out / TASKS[1]
    assert same_structure(first, other, ["model.onnx", "model.rope-plugin.fp16.onnx"]) is None
    changed = tmp_path / "changed"
    changed.mkdir()
    g = onnx.load(str(other / "model.onnx"), load_external_data=False)
    g.graph.node[5].name += "_renamed"
    onnx.save(g, str(changed / "model.onnx"))
    assert "differs in structure" in same_structure(first, changed, ["model.onnx"])


# ---- the wrong adapter, caught and located ----------------------------------------------------------------------


def exported(model, tmp_path, name: str) -> onnx.ModelProto:
    path = tmp_path / name / "model.onnx"
    path.parent.mkdir()
    export_onnx(model, "model", path, MAX_LEN, "torchscript")
    return onnx.load(str(path))


def test_the_wrong_adapter_is_caught_and_located(jina_original, references, tmp_path):
    """A graph of retrieval.passage's merge judged against retrieval.query's reference fails the default fp32 gate,
    first seen at the embeddings (the word embeddings carry an adapter too); a graph with only layer 1's weights
    from the wrong task departs at layer 1."""
    from export.diagnose import diagnose_model

    folder, _, _ = jina_original()
    query, passage = (load_checkpoint(folder, adapter_task=t) for t in ("retrieval.query", "retrieval.passage"))
    ref = references["retrieval.query"]
    ref_ck = type(query)(ref, query.config, "model", query.source_format, None, family=query.family)
    assert judged(ref_ck, exported(query.model, tmp_path, "query"))[0]
    feeds = make_inputs(Shape(2, 61, 1), 99, None)
    wrong = exported(passage.model, tmp_path, "passage")
    ok, scaled = judged(ref_ck, wrong)
    assert not ok and scaled > DEFAULTS["fp32"].rtol
    first = diagnose_model(ref, "model", wrong, feeds).first_divergence
    assert (first["stage"], first["point"]) == ("embeddings", "embeddings"), first
    mixed = {
        k: (passage.model.state_dict()[k] if k.startswith("layers.1.") else v) for k, v in ref.state_dict().items()
    }
    one_layer = type(ref)(ref.config).eval()
    one_layer.load_state_dict(mixed)
    bad = exported(one_layer, tmp_path, "layer1")
    ok, scaled = judged(ref_ck, bad)
    assert not ok and scaled > DEFAULTS["fp32"].rtol
    first = diagnose_model(ref, "model", bad, feeds).first_divergence
    assert (first["stage"], first["layer"]) == ("layer", 1) and first["point"] == "attention_input", first
    assert np.isfinite(scaled)


def test_the_task_prefix_reaches_the_served_model_through_the_client(builds, references, jina_original, monkeypatch):
    """retrieval.query's build publishes its prefix under its task name (report model.prompts, the Triton config's
    `prompts`); engines.client --prompt retrieval.query prepends it, and the build's CPU serving model then gives the
    mean-pooled embedding of transformers' model of the reference merge on the prefixed text. A task without a
    prefix publishes "" under its name; the base weights (--task none) publish none."""
    from engines import client
    from engines.serving.ort_model import OrtEncoder
    from engines.triton.config import prompts_parameter
    from export.reference import sentence_embedding_ref

    out = builds["all-fp16"] / "retrieval.query"
    assert read_report(out).model["prompts"] == {"retrieval.query": PREFIXES["retrieval.query"]}
    assert read_report(builds["text-matching-bf16"]).model["prompts"] == {"text-matching": ""}
    params = prompts_parameter(read_report(out).model) | {"max_sequence_length": str(MAX_LEN)}
    served = OrtEncoder.from_build(out, threads=1)
    sent: list[dict] = []

    class StandIn:  # Triton's side: the config parameters, and infer on the build's own CPU serving model
        def __init__(self, url, model, protocol="http"):
            self.model = model

        def input_names(self):
            return ["input_ids", "attention_mask"]

        def parameters(self):
            return dict(params)

        max_sequence_length = client.TritonEncoderClient.max_sequence_length
        prompts = client.TritonEncoderClient.prompts

        def infer(self, feeds, outputs):
            sent.append(feeds)
            return {o: served(feeds)[o] for o in outputs}

        def close(self):
            pass

    monkeypatch.setattr(client, "TritonEncoderClient", StandIn)
    folder, _, _ = jina_original()
    enc = client.TextEncoder(folder / "tokenizer.json", "host:1", "q", prompt_name="retrieval.query")
    got = enc.embed(["hello world", "the query of the world"])
    tok = client.load_tokenizer(folder / "tokenizer.json")
    texts = [PREFIXES["retrieval.query"] + t for t in ("hello world", "the query of the world")]
    feeds = client.encode(tok, texts, MAX_LEN)
    assert np.array_equal(sent[0]["input_ids"], feeds["input_ids"])
    with torch.no_grad():
        hidden = references["retrieval.query"](
            input_ids=torch.from_numpy(feeds["input_ids"]), attention_mask=torch.from_numpy(feeds["attention_mask"])
        ).last_hidden_state.numpy()
    want = sentence_embedding_ref(hidden, feeds["attention_mask"], "mean")
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    from export.build_report import prompts

    assert prompts(load_checkpoint(folder, adapter_task="none")) == {}

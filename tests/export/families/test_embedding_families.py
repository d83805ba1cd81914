"""GTE, NomicBERT and EuroBERT's family files against transformers' own models; their rotary tables from
rope_parameters (default, linear, dynamic) against transformers' rope init functions and the formulas they come
from; their config checks; and their checkpoints, which transformers 5.25 writes (and the hub holds) in the
original code's key names, loaded key by key with today's safety."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from export.build import main as build
from export.checkpoint.rebuild import inspect_checkpoint, load_checkpoint
from export.errors import UsageError
from export.families import gte
from export.families.registry import by_name, family_of
from export.families.rope_parameters import rotary_table
from export.families.spec import FULL, SPLIT_HALVES, RotaryTable
from tests.helpers import one_line

FAMILIES = ("gte", "nomic_bert", "eurobert")
EPS32 = float(np.finfo(np.float32).eps)
LLAMA3 = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}
HEADS = {"gte": ("model", "masked-lm", "sequence-classification", "token-classification")}
HEADS |= {"nomic_bert": HEADS["gte"], "eurobert": HEADS["gte"]}


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].float(), sb[k].float()) for k in sa)


@pytest.mark.parametrize(
    "family,overrides",
    [
        ("gte", {}),
        ("gte", {"rope_parameters": {"rope_type": "default", "rope_theta": 160000.0}}),  # arctic-embed-m-v2.0's
        ("gte", {"rope_parameters": {"rope_type": "dynamic", "rope_theta": 20000.0, "factor": 4.0}}),
        ("nomic_bert", {}),
        ("nomic_bert", {"rope_parameters": {"rope_type": "linear", "rope_theta": 1000.0, "factor": 2.0}}),
        ("eurobert", {}),
        ("eurobert", {"num_key_value_heads": 1}),
    ],
)
def test_specs_are_what_transformers_computes(family, overrides):
    """Per layer: split halves over the whole head, the table's inverse frequencies are the model's own buffer
    (transformers' ROPE_INIT_FUNCTIONS), the key's heads are the key projection's, attention is full."""
    fam = by_name(family)
    cfg = fam.make_config(fam.tiny(**overrides).to_dict(), "cfg")
    torch.manual_seed(0)
    model = fam.model_class("model")(cfg).eval()
    hf_inv = model.rotary_emb.inv_freq.double().numpy()
    for k, (rot, att) in enumerate(zip(fam.rotaries(cfg), fam.attentions(cfg), strict=True)):
        attn = model.layers[k].self_attn
        assert rot.layout == SPLIT_HALVES and rot.dim == rot.head_dim == attn.head_dim and att.kind == FULL
        np.testing.assert_allclose(rot.table.inv_freq(), hf_inv, rtol=3 * EPS32)
        heads = dict(rot.heads)
        assert heads["query"] == attn.q_proj.out_features // attn.head_dim == cfg.num_attention_heads
        assert heads["key"] == attn.k_proj.out_features // attn.head_dim
        assert rot.table.scaling == model.rotary_emb.attention_scaling == 1.0
    if family == "eurobert":
        assert heads["key"] == cfg.num_key_value_heads < heads["query"]


def test_gte_fixed_ntk_is_rope_type_linear_exactly():
    """GTE's original scaling (Alibaba-NLP/new-impl NTKScalingRotaryEmbedding with mixed_b None; vLLM and
    text-embeddings-inference compute it alike): base theta*f, then inv_freq / f**(2/R). Written here from that
    formula in float64, it is the linear table gte.ntk_as_linear describes, at both head sizes the files use."""
    for theta, f, dim in ((20000.0, 8.0, 64), (20000.0, 8.0, 16), (10000.0, 2.0, 32)):
        j = np.arange(0, dim, 2, dtype=np.float64)
        original = 1.0 / (theta * f) ** (j / dim) / f ** (2 / dim)
        params = gte.ntk_as_linear(theta, f, dim)
        table = rotary_table("t", params, dim, 8192, "cfg")
        assert table.rope_type == "linear"
        np.testing.assert_allclose(table.inv_freq(), original, rtol=1e-14)
        np.testing.assert_allclose(table.angles(50)[49], 49 * original, rtol=1e-13)


def test_dynamic_is_the_default_table_up_to_max_positions_and_changes_beyond():
    """transformers' dynamic NTK at a sequence within max_position_embeddings gives the default table, so the
    constant table is right there; at twice that length it gives another one: why a longer --max-len is refused."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    fam = by_name("gte")
    params = {"rope_type": "dynamic", "rope_theta": 20000.0, "factor": 4.0}
    cfg = fam.make_config(fam.tiny(rope_parameters=params).to_dict(), "cfg")
    table = fam.rotary(cfg, 0).table
    assert table.max_rows == cfg.max_position_embeddings == 128
    within, _ = ROPE_INIT_FUNCTIONS["dynamic"](cfg, seq_len=128)
    beyond, _ = ROPE_INIT_FUNCTIONS["dynamic"](cfg, seq_len=256)
    np.testing.assert_allclose(table.inv_freq(), within.double().numpy(), rtol=3 * EPS32)
    np.testing.assert_allclose(table.inv_freq(), RotaryTable("d", 16, 20000.0).inv_freq(), rtol=1e-15)
    assert np.max(np.abs(beyond.double().numpy() / table.inv_freq() - 1)) > 0.1
    assert table.angles(128).shape == (128, 8)
    with pytest.raises(ValueError, match="changes its table with the sequence length above 128 positions"):
        table.angles(129)


@pytest.mark.parametrize(
    "params,fragment",
    [
        ({"rope_type": "ntk", "rope_theta": 20000.0, "factor": 8.0}, "rope_type 'ntk' is no transformers rope type"),
        (
            {"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0, "original_max_position_embeddings": 64},
            "rope_type is 'yarn'; this toolchain builds the tables of default, linear, dynamic only",
        ),
        ({"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5}, "partial_rotary_factor is 0.5"),
        ({"rope_type": "linear", "rope_theta": 1e4, "factor": 0.5}, "factor is 0.5; rope_type 'linear' needs"),
        ({"rope_type": "linear", "rope_theta": 1e4}, "factor is None"),
        ({"rope_type": "default", "rope_theta": float("nan")}, "rope_theta is nan"),
    ],
)
def test_rope_parameters_the_tables_do_not_implement_are_refused_with_the_reason(params, fragment):
    with pytest.raises(UsageError, match=re.escape(fragment)):
        rotary_table("default", params, 16, 128, "cfg")


@pytest.mark.parametrize(
    "family,change,fragment",
    [
        ("gte", {"type_vocab_size": 2}, "takes 0 or 1 token types"),
        ("gte", {"rope_parameters": dict(rope_type="llama3", rope_theta=1e4, **LLAMA3)}, "rope_type is 'llama3'"),
        ("gte", {"num_attention_heads": 3}, "does not divide hidden_size 32"),
        ("nomic_bert", {"head_dim": 3}, "head_dim 3 is odd"),  # transformers refuses odd sizes above 4 itself
        ("nomic_bert", {"layer_norm_eps": -1.0}, "layer_norm_eps is -1.0"),
        ("eurobert", {"num_attention_heads": 4, "num_key_value_heads": 3}, "not a multiple of num_key_value_heads 3"),
        ("eurobert", {"classifier_pooling": "max"}, "classifier_pooling 'max' is not one of"),
        ("eurobert", {"rope_parameters": {"rope_type": "default", "rope_theta": -5.0}}, "rope_theta is -5.0"),
    ],
)
def test_what_a_family_file_does_not_implement_is_refused_with_the_reason(family, change, fragment):
    fam = by_name(family)
    with pytest.raises(UsageError, match=re.escape(fragment)):
        fam.make_config({**fam.tiny().to_dict(), **change}, "cfg")


@pytest.mark.parametrize("family", FAMILIES)
def test_hf_folders_of_every_head_load_from_the_original_key_names(hf_ckpt, family):
    """transformers 5.25's save_pretrained writes GTE's and NomicBERT's original names (GTE
    `encoder.layer.N.attention.qkv_proj`, `mlp.up_gate_proj`; NomicBERT `encoder.layers.N.attn.Wqkv`, `fc11`, ...),
    as the real checkpoints have them; the loader applies transformers' conversion mapping (renames, fused QKV and
    up/gate split) and gets every weight back, for every head."""
    from safetensors import safe_open

    originals = {"gte": ".attention.qkv_proj.weight", "nomic_bert": ".attn.Wqkv.weight", "eurobert": ".q_proj.weight"}
    for task in HEADS[family]:
        folder, model = hf_ckpt(family, task)
        with safe_open(str(folder / "model.safetensors"), "pt") as f:
            assert any(k.endswith(originals[family]) for k in f.keys()), (family, task, list(f.keys())[:4])
        ck = load_checkpoint(folder)
        assert (ck.task, ck.family.name, ck.attn_implementation) == (task, family, "eager")
        assert same_weights(ck.model, model), (family, task)


def test_bare_weights_without_model_type_are_recognised_by_their_keys(hf_ckpt, tmp_path):
    """A config without model_type: GTE (post-MLP norm, Q bias), NomicBERT (post-MLP norm, no Q bias), EuroBERT
    (RMSNorm layers, no token types, its mask_token_id / classifier_pooling fields): exactly one family each."""
    for family in FAMILIES:
        folder, model = hf_ckpt(family)
        keys = set(model.state_dict())
        config = {k: v for k, v in json.loads((folder / "config.json").read_text()).items() if k != "model_type"}
        assert family_of(config, keys, "c") is by_name(family)
        with pytest.raises(UsageError, match="no model_type and matches none"):
            family_of({}, {"w"}, "c")


def test_a_fused_projection_of_the_wrong_size_is_refused_in_one_line(hf_ckpt, tmp_path, capsys):
    """The conversion splits what the file holds; a QKV matrix that does not split into the config's shapes is
    refused with the key and shapes, exit 2, nothing written."""
    from safetensors.torch import load_file, save_file

    folder, _ = hf_ckpt("gte")
    bad = tmp_path / "ckpt"
    bad.mkdir()
    state = load_file(str(folder / "model.safetensors"))
    key = next(k for k in state if k.endswith("layer.0.attention.qkv_proj.weight"))
    state[key] = torch.zeros(state[key].shape[0] - 3, state[key].shape[1])
    save_file(state, str(bad / "model.safetensors"))
    (bad / "config.json").write_text((folder / "config.json").read_text())
    out = tmp_path / "out"
    assert build(["--model", str(bad), "--out", str(out)]) == 2
    err = one_line(capsys)
    assert err.startswith("error: ") and "layers.0.self_attn" in err and "has shape" in err, err
    assert not out.exists() or not any(out.iterdir())


def test_max_len_beyond_a_dynamic_table_is_refused_and_within_it_builds(hf_ckpt, tmp_path, capsys):
    """rope_type dynamic: --max-len above max_position_embeddings is refused with the reason (exit 2, one line,
    nothing written); the default --max-len (max_position_embeddings) builds, validated against transformers,
    whose dynamic table is the default one there."""
    params = {"rope_type": "dynamic", "rope_theta": 20000.0, "factor": 4.0}
    folder, _ = hf_ckpt("gte", rope_parameters=params, max_position_embeddings=64)
    out = tmp_path / "out"
    assert build(["--model", str(folder), "--out", str(out), "--max-len", "65", "--exporter", "torchscript"]) == 2
    err = one_line(capsys)
    assert "--max-len 65: rope_type 'dynamic'" in err and "pass --max-len 64 or less" in err, err
    assert not out.exists() or not any(out.iterdir())
    assert build(["--model", str(folder), "--out", str(out), "--exporter", "torchscript"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["export"]["max_len"] == 64 and report["passed"]
    assert {c["seq"] for c in report["validation"]} >= {1, 61, 64}
    assert [r["rope_type"] for r in report["model"]["rotary"]] == ["dynamic", "dynamic"]


def test_inspection_names_the_original_names_it_could_not_place(hf_ckpt, tmp_path):
    """A key neither transformers' mapping nor the class knows is still named in the refusal (after conversion)."""
    from safetensors.torch import load_file, save_file

    folder, _ = hf_ckpt("nomic_bert")
    state = load_file(str(folder / "model.safetensors"))
    state["encoder.layers.0.attn.extra.weight"] = torch.zeros(2)
    bad = tmp_path / "ck"
    bad.mkdir()
    save_file(state, str(bad / "model.safetensors"))
    (bad / "config.json").write_text((folder / "config.json").read_text())
    with pytest.raises(UsageError, match=r"unexpected 1 keys \['layers.0.attn.extra.weight'\]"):
        inspect_checkpoint(bad)

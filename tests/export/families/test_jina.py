"""jina-embeddings-v3's family file against transformers' own JinaEmbeddingsV3Model: the rotary spec, the weight
layouts it reads (transformers' own save layout and the original checkpoint's, converted as transformers converts
them), the original remote-code config read as data while every other remote-code config is still refused, its
config check, and its tokenizer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from export.checkpoint.rebuild import load_checkpoint
from export.errors import UsageError
from export.families.registry import by_name, family_of
from export.families.spec import FULL, SPLIT_HALVES

JINA = by_name("jina_embeddings_v3")


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_specs_are_what_transformers_computes():
    cfg = JINA.make_config(JINA.tiny().to_dict(), "cfg")
    model = JINA.model_class("model")(cfg).eval()
    hf_inv = model.rotary_emb.inv_freq.double().numpy()
    for rot, att in zip(JINA.rotaries(cfg), JINA.attentions(cfg), strict=True):
        assert rot.layout == SPLIT_HALVES and rot.dim == rot.head_dim == 16 and att.kind == FULL
        assert rot.table.theta == 20000.0 and dict(rot.heads) == {"query": 2, "key": 2}
        np.testing.assert_allclose(rot.table.inv_freq(), hf_inv, rtol=2 * np.finfo(np.float32).eps)
    assert model.layers[0].self_attn.scaling == 16**-0.5
    assert JINA.facts(cfg).type_vocab_size is None and JINA.inputs == ("input_ids", "attention_mask")


@pytest.mark.parametrize("task", ["model", "masked-lm"])
def test_transformers_save_layout_loads_as_transformers_loads_it(hf_ckpt, task):
    """transformers 5.25 saves this model type in the original names (emb_ln, encoder.layers.N.mixer.Wqkv...);
    our conversion gives the model its own from_pretrained gives."""
    folder, model = hf_ckpt("jina_embeddings_v3", task)
    assert "emb_ln.weight" in {k.removeprefix("roberta.") for k in load_file(str(folder / "model.safetensors"))}
    ck = load_checkpoint(folder)
    ref = JINA.model_class(task).from_pretrained(folder).eval()
    assert ck.task == task and ck.adapter is None and same_weights(ck.model, ref) and same_weights(ck.model, model)


def test_the_original_checkpoint_without_adapters_loads(jina_original, tmp_path):
    """The original layout (roberta. prefix, parametrized weights) with its adapter tensors removed: the base model."""
    folder, model, _ = jina_original()
    state = {k: v for k, v in load_file(str(folder / "model.safetensors")).items() if "lora_" not in k}
    save_file(state, str(tmp_path / "model.safetensors"))
    config = json.loads((folder / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "lora_adaptations": None}))
    ck = load_checkpoint(tmp_path)
    assert ck.adapter is None and same_weights(ck.model, model)
    with pytest.raises(UsageError, match="holds no task adapters"):
        load_checkpoint(tmp_path, adapter_task="retrieval.query")


def test_the_original_config_is_read_as_data_and_other_remote_code_is_still_refused(jina_original):
    folder, _, _ = jina_original()
    original = json.loads((folder / "config.json").read_text())
    assert original["auto_map"] and original["model_type"] == "xlm-roberta"
    assert family_of(original, set(), "c") is JINA
    cfg = JINA.make_config(original, "c")
    assert cfg.rope_parameters["rope_theta"] == original["rotary_emb_base"] == 20000.0
    assert cfg.hidden_size == 32 and not hasattr(cfg, "auto_map")
    other = {**original, "auto_map": {"AutoModel": "someone/other-code--modeling.X"}}
    with pytest.raises(UsageError, match="it asks for model code from its repository"):
        family_of(other, set(), "c")
    no_adapters = {k: v for k, v in original.items() if k != "lora_adaptations"}
    with pytest.raises(UsageError, match="it asks for model code from its repository"):
        family_of(no_adapters, set(), "c")  # an xlm-roberta remote-code config is not jina's by its auto_map alone


@pytest.mark.parametrize(
    "change,fragment",
    [
        ({"position_embedding_type": "absolute"}, "position_embedding_type is 'absolute'; jina-embeddings-v3"),
        ({"pad_vocab_size_multiple": 8}, "pad_vocab_size_multiple is set"),
        ({"num_attention_heads": 3}, "does not divide hidden_size 32"),
        ({"layer_norm_eps": 0.0}, "layer_norm_eps is 0.0"),
    ],
)
def test_what_the_file_does_not_implement_is_refused_with_the_reason(jina_original, change, fragment):
    folder, _, _ = jina_original()
    config = {**json.loads((folder / "config.json").read_text()), **change}
    with pytest.raises(UsageError, match=fragment):
        JINA.make_config(config, "cfg")


def test_a_scaled_rope_type_is_refused():
    config = {**JINA.tiny().to_dict(), "rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 2e4}}
    with pytest.raises(UsageError, match="implements the default rotary table only"):
        JINA.make_config(config, "cfg")


def test_the_tokenizer_is_xlm_r_shaped(jina_original):
    """<s> text </s>, <pad> 1, <mask> the last id, SentencePiece-style pieces: what the client's prefixes go through."""
    from tokenizers import Tokenizer

    folder, model, _ = jina_original()
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    enc = tok.encode("Represent the query for retrieving evidence documents: hello world")
    assert enc.ids[0] == 0 and enc.ids[-1] == 2 and "▁hello" in enc.tokens and "▁world" in enc.tokens
    assert tok.token_to_id("<pad>") == model.config.pad_token_id == 1
    assert tok.token_to_id("<mask>") == model.config.vocab_size - 1 and tok.get_vocab_size() == model.config.vocab_size


def test_make_demo_checkpoint_writes_the_original_layout_with_adapters(tmp_path):
    """scripts/make_demo_checkpoint.py --family jina_embeddings_v3 --tiny: the original config (auto_map, adapters)
    and weights (roberta., parametrized, lora_A / lora_B), which export.build --task reads; the demo config is
    jina-embeddings-v3's shape (asserted on the config alone)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[3] / "scripts" / "make_demo_checkpoint.py"
    spec = importlib.util.spec_from_file_location("make_demo_checkpoint", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "jina"
    assert script.main(["--family", "jina_embeddings_v3", "--tiny", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "xlm-roberta" and config["lora_adaptations"][0] == "retrieval.query"
    keys = set(load_file(str(out / "model.safetensors")))
    assert "roberta.encoder.layers.0.mixer.Wqkv.parametrizations.weight.0.lora_A" in keys
    assert load_checkpoint(out, adapter_task="classification").adapter["index"] == 3
    demo = JINA.demo()
    shape = (demo.num_hidden_layers, demo.hidden_size, demo.num_attention_heads, demo.intermediate_size)
    assert shape == (24, 1024, 16, 4096) and (demo.vocab_size, demo.max_position_embeddings) == (250002, 8194)
    assert demo.rope_parameters["rope_theta"] == 20000.0


def test_a_config_without_model_type_is_recognised_by_its_keys(hf_ckpt, jina_original):
    """The class's keys (post-MLP norm with fc1/fc2: not GTE's gated MLP), the original keys (mixer.Wqkv), or the
    adapter fields: jina-v3's, and no other family's."""
    folder, model = hf_ckpt("jina_embeddings_v3")
    assert family_of({}, set(model.state_dict()), "c") is JINA
    assert family_of({}, set(load_file(str(folder / "model.safetensors"))), "c") is JINA
    original, _, _ = jina_original()
    assert family_of({}, set(load_file(str(original / "model.safetensors"))), "c") is JINA
    assert family_of({"lora_adaptations": ["a"]}, set(), "c") is JINA

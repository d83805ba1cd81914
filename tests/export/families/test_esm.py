"""ESM-2's family file against transformers' own ESM: the rotary spec, the query scaling it relies on, token dropout,
its config check, the key layouts ESM-2 checkpoints are stored in, and its per-residue tokenizer against
transformers' EsmTokenizer."""

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

ESM = by_name("esm")


def test_specs_are_what_transformers_computes():
    """Every layer: split halves over the whole head, theta rope_theta, inv_freq the model's own buffer; the query
    is scaled by head_dim^-0.5 inside the attention (scaling 1.0 there), so the rotary pass sees a scaled query."""
    cfg = ESM.make_config(ESM.tiny(rope_theta=20000.0).to_dict(), "cfg")
    model = ESM.model_class("model")(cfg).eval()
    hf_inv = model.rotary_embeddings.inv_freq.double().numpy()
    dh = cfg.hidden_size // cfg.num_attention_heads
    for k, (rot, att) in enumerate(zip(ESM.rotaries(cfg), ESM.attentions(cfg), strict=True)):
        assert rot.layout == SPLIT_HALVES and rot.dim == rot.head_dim == dh and att.kind == FULL
        assert rot.table.theta == 20000.0 and dict(rot.heads) == {"query": 2, "key": 2}
        np.testing.assert_allclose(rot.table.inv_freq(), hf_inv, rtol=2 * np.finfo(np.float32).eps)
        assert model.encoder.layer[k].attention.self.scaling == 1.0  # the query carries the 1/sqrt(Dh)


def test_token_dropout_is_what_the_family_says():
    """transformers' embeddings equal the rule written out: <mask> rows zeroed, every row times
    0.88 / (1 - mask tokens / real tokens) of its sequence (0.88 without a mask), padding rows zero."""
    from export.families.esm import MASK_RATIO_TRAIN

    cfg = ESM.make_config(ESM.tiny().to_dict(), "cfg")
    torch.manual_seed(0)
    model = ESM.model_class("model")(cfg).eval()
    ids = torch.tensor([[0, 5, 32, 7, 32, 2], [0, 5, 6, 7, 2, 1], [0, 32, 2, 1, 1, 1]])
    mask = (ids != cfg.pad_token_id).long()
    with torch.no_grad():
        got = model.embeddings(input_ids=ids, attention_mask=mask)
        raw = model.embeddings.word_embeddings(ids).double()
    is_mask = (ids == cfg.mask_token_id).double()
    ratio = is_mask.sum(-1) / mask.sum(-1)
    want = raw * (1 - is_mask)[..., None] * (1 - MASK_RATIO_TRAIN) / (1 - ratio)[:, None, None] * mask[..., None]
    assert MASK_RATIO_TRAIN == pytest.approx(0.12) and ratio.tolist() == [2 / 6, 0.0, 1 / 3]
    np.testing.assert_allclose(got.double().numpy(), want.numpy(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    "change,fragment",
    [
        ({"position_embedding_type": "absolute"}, "learned absolute positions (ESM-1b, ESM-1v) have no rotary"),
        ({"is_folding_model": True}, "is an ESMFold model"),
        ({"is_decoder": True}, "is_decoder is set: only the bidirectional ESM encoder"),
        ({"mask_token_id": None}, "token_dropout is on but mask_token_id is missing"),
        ({"num_attention_heads": 3}, "does not divide hidden_size 32"),
        ({"rope_theta": 0.0}, "rope_theta is 0.0"),
    ],
)
def test_what_the_file_does_not_implement_is_refused_with_the_reason(change, fragment):
    config = {**ESM.tiny().to_dict(), **change}
    with pytest.raises(UsageError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        ESM.make_config(config, "cfg")


def test_a_config_without_model_type_is_recognised():
    assert family_of({"token_dropout": True}, set(), "c") is ESM
    assert family_of({}, {"esm.contact_head.regression.weight"}, "c") is ESM


@pytest.mark.parametrize("task", ["model", "masked-lm"])
def test_the_published_key_layout_loads_to_the_same_model(hf_ckpt, tmp_path, task):
    """The names ESM-2 checkpoints carry (and transformers 5.25's save_pretrained writes): LayerNorm gamma/beta, the
    inverse frequencies once per layer (5.25 writes `layer.*`), plus an arange position_ids buffer and an unused
    absolute position table; loaded, the model is the saved one, inv_freq the formula's."""
    folder, model = hf_ckpt("esm", task)
    saved = load_file(str(folder / "model.safetensors"))
    assert any(k.endswith("LayerNorm.gamma") for k in saved)  # what 5.25 writes: the published names
    prefix = "esm." if task != "model" else ""
    inv = next(v for k, v in saved.items() if k.endswith("rotary_embeddings.inv_freq"))
    state = {k: v for k, v in saved.items() if not k.endswith("rotary_embeddings.inv_freq")}
    state |= {f"{prefix}encoder.layer.{i}.attention.self.rotary_embeddings.inv_freq": inv.clone() for i in range(3)}
    state[f"{prefix}embeddings.position_ids"] = torch.arange(128)[None]
    state[f"{prefix}embeddings.position_embeddings.weight"] = torch.zeros(128, 32)
    out = tmp_path / "published"
    out.mkdir()
    save_file(state, str(out / "model.safetensors"))
    (out / "config.json").write_text((folder / "config.json").read_text())
    ck = load_checkpoint(out)
    assert ck.task == task and ck.table == "checkpoint"
    a, b = model.state_dict(), ck.model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a if not k.endswith("inv_freq"))
    inv_key = f"{prefix}rotary_embeddings.inv_freq"
    np.testing.assert_array_equal(b[inv_key].numpy(), ESM.rotaries(ck.config)[0].table.inv_freq().astype(np.float32))


@pytest.mark.parametrize(
    "edit,fragment",
    [
        ("theta", "differs from 1/theta^(2j/R) (theta 10000.0)"),
        ("layers-disagree", "the layers' rotary frequencies must be one table"),
        ("position-ids", "is not 0, 1, 2, ...; this is not an ESM checkpoint's position buffer"),
    ],
)
def test_stored_formula_tables_must_be_the_formula(hf_ckpt, tmp_path, edit, fragment):
    folder, _ = hf_ckpt("esm")
    state = load_file(str(folder / "model.safetensors"))
    inv_key = next(k for k in state if k.endswith("inv_freq"))
    inv = state.pop(inv_key)
    if edit == "theta":
        state[inv_key] = 1.0 / 20000.0 ** (torch.arange(0, 16, 2).float() / 16)
    elif edit == "layers-disagree":
        state["encoder.layer.0.attention.self.rotary_embeddings.inv_freq"] = inv
        state["encoder.layer.1.attention.self.rotary_embeddings.inv_freq"] = inv * 1.001
    else:
        state[inv_key] = inv
        state["embeddings.position_ids"] = torch.arange(128)[None].flip(-1).contiguous()
    out = tmp_path / edit
    out.mkdir()
    save_file(state, str(out / "model.safetensors"))
    (out / "config.json").write_text((folder / "config.json").read_text())
    with pytest.raises(UsageError, match=fragment.replace("(", r"\(").replace(")", r"\)").replace("^", r"\^")):
        load_checkpoint(out)


def test_the_tokenizer_is_esm_tokenizers(hf_ckpt, tmp_path):
    """tokenizer.json (built with `tokenizers`) gives the ids transformers' EsmTokenizer gives on the same vocabulary:
    one id per residue letter, <mask> and other specials whole, unknown letters <unk>, whitespace ignored."""
    from tokenizers import Tokenizer
    from transformers import EsmTokenizer

    from export.families.esm import VOCAB

    folder, model = hf_ckpt("esm")
    (tmp_path / "vocab.txt").write_text("\n".join(VOCAB))
    ref = EsmTokenizer(str(tmp_path / "vocab.txt"))
    ours = Tokenizer.from_file(str(folder / "tokenizer.json"))
    for text in ("MKTAYIAKQR", "MKT AYI<mask>AK", "<mask><mask>LAG", "MJXO-.", "A"):
        assert ours.encode(text).ids == ref(text)["input_ids"], text
    assert json.loads((folder / "config.json").read_text())["mask_token_id"] == VOCAB.index("<mask>") == 32
    assert model.config.vocab_size == len(VOCAB) == 33

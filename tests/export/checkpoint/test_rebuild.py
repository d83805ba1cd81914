"""Every checkpoint format people have loads to the same weights; anything else is refused clearly."""

import json

import pytest
import torch

from export.checkpoint.rebuild import load_checkpoint
from export.errors import UsageError
from export.spec import TASKS
from tests.fixtures.checkpoints import make_model, tiny_config


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_canonical(make_ckpt):
    path, model = make_ckpt()
    ck = load_checkpoint(path)
    assert ck.task == "model" and ck.table == "checkpoint" and same_weights(ck.model, model)


@pytest.mark.parametrize("safe", [True, False])
def test_hf_folder(tmp_path, safe):
    model = make_model(tiny_config(), "masked-lm")
    if safe:
        model.save_pretrained(tmp_path)
    else:  # transformers 5 always writes safetensors; older releases and many hubs ship this layout
        model.config.save_pretrained(tmp_path)
        torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    ck = load_checkpoint(tmp_path)
    assert ck.task == "masked-lm" and same_weights(ck.model, model)
    assert ("safetensors" if safe else "pytorch_model.bin") in ck.source_format


def test_bare_state_dict_with_config_beside_and_given(tmp_path):
    model = make_model(tiny_config(), "model")
    torch.save(model.state_dict(), tmp_path / "w.pt")
    with pytest.raises(UsageError, match="--config"):
        load_checkpoint(tmp_path / "w.pt")
    (tmp_path / "cfg.json").write_text(json.dumps(model.config.to_dict()))
    assert same_weights(load_checkpoint(tmp_path / "w.pt", tmp_path / "cfg.json").model, model)
    (tmp_path / "config.json").write_text(json.dumps(model.config.to_dict()))
    assert same_weights(load_checkpoint(tmp_path / "w.pt").model, model)


def test_bare_safetensors(tmp_path):
    from safetensors.torch import save_file

    model = make_model(tiny_config(), "token-classification")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "w.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(model.config.to_dict()))
    ck = load_checkpoint(tmp_path / "w.safetensors")
    assert ck.task == "token-classification" and same_weights(ck.model, model)


def test_pickled_module_needs_trust_pickle(tmp_path):
    model = make_model(tiny_config(), "model")
    torch.save(model, tmp_path / "m.pt")
    with pytest.raises(UsageError, match="--trust-pickle"):
        load_checkpoint(tmp_path / "m.pt")
    assert same_weights(load_checkpoint(tmp_path / "m.pt", trust_pickle=True).model, model)


@pytest.mark.parametrize("prefix", ["module.", "model."])
def test_prefixes_are_stripped(tmp_path, prefix):
    model = make_model(tiny_config(), "sequence-classification")
    sd = {prefix + k: v for k, v in model.state_dict().items()}
    torch.save({"config": model.config.to_dict(), "state_dict": sd}, tmp_path / "c.pt")
    ck = load_checkpoint(tmp_path / "c.pt")
    assert ck.task == "sequence-classification" and same_weights(ck.model, model)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_task_head_detected(make_ckpt, task):
    path, model = make_ckpt(task)
    ck = load_checkpoint(path)
    assert ck.task == task and type(ck.model).__name__ == ck.family.heads[task] and same_weights(ck.model, model)


def test_variants_embedding_size_and_rotary_value(make_ckpt):
    path, model = make_ckpt(embedding_size=24, rotary_value=True)
    ck = load_checkpoint(path)
    assert ck.config.embedding_size == 24 and ck.config.rotary_value and same_weights(ck.model, model)


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    model = make_model(tiny_config(), "model")
    sd = dict(model.state_dict())
    sd.pop("encoder.layer.0.attention.self.query.weight")
    sd["encoder.layer.9.extra"] = torch.zeros(1)
    torch.save({"config": model.config.to_dict(), "state_dict": sd}, tmp_path / "c.pt")
    with pytest.raises(UsageError, match=r"missing 1 keys.*query.weight.*unexpected 1 keys.*layer.9.extra"):
        load_checkpoint(tmp_path / "c.pt")


def test_table_absent_is_generated(tmp_path):
    model = make_model(tiny_config(), "model")
    sd = {k: v for k, v in model.state_dict().items() if "embed_positions" not in k}
    torch.save({"config": model.config.to_dict(), "state_dict": sd}, tmp_path / "c.pt")
    ck = load_checkpoint(tmp_path / "c.pt")
    assert ck.table == "generated" and same_weights(ck.model, model)


def test_table_not_the_formula_is_refused(tmp_path):
    model = make_model(tiny_config(), "model")
    sd = dict(model.state_dict())
    sd["encoder.embed_positions.weight"] = sd["encoder.embed_positions.weight"] + 1e-3
    torch.save({"config": model.config.to_dict(), "state_dict": sd}, tmp_path / "c.pt")
    with pytest.raises(UsageError, match="differs from the RoFormer formula"):
        load_checkpoint(tmp_path / "c.pt")

"""ModernBERT's family file against transformers' own ModernBERT, its config check, and loading its checkpoints in
every format with today's safety (keys, shapes, dtypes on the meta device; one-line refusals, exit 2)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from export.build import main as build
from export.checkpoint.rebuild import inspect_checkpoint, load_checkpoint
from export.errors import UsageError
from export.families.registry import by_name
from export.families.spec import FULL, SLIDING, SPLIT_HALVES
from tests.helpers import one_line

MB = by_name("modernbert")


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].float(), sb[k].float()) for k in sa)


@pytest.mark.parametrize("overrides", [{}, {"global_attn_every_n_layers": 2, "global_rope_theta": 50000.0}])
def test_specs_are_what_transformers_computes(overrides):
    """Per layer: the table's theta and inverse frequencies are the model's own buffers for that layer type, the
    half-window is HF's (its mask function, and the layer's flash-inclusive sliding_window - 1)."""
    from transformers.masking_utils import sliding_window_bidirectional_overlay

    cfg = MB.make_config(MB.tiny(**overrides).to_dict(), "cfg")
    torch.manual_seed(0)
    model = MB.model_class("model")(cfg).eval()
    grid = np.arange(61)
    hf_allowed = np.array(
        [[sliding_window_bidirectional_overlay(cfg.sliding_window)(0, 0, i, j) for j in grid] for i in grid]
    )
    kinds = set()
    for k, (rot, att) in enumerate(zip(MB.rotaries(cfg), MB.attentions(cfg), strict=True)):
        layer_type = cfg.layer_types[k]
        hf_inv = getattr(model.rotary_emb, f"{layer_type}_inv_freq").double().numpy()
        assert rot.layout == SPLIT_HALVES and rot.dim == rot.head_dim == cfg.hidden_size // cfg.num_attention_heads
        assert rot.table.theta == cfg.rope_parameters[layer_type]["rope_theta"]
        np.testing.assert_allclose(rot.table.inv_freq(), hf_inv, rtol=2 * np.finfo(np.float32).eps)
        assert rot.sites == ("query", "key") and dict(rot.heads)["key"] == cfg.num_attention_heads
        window = model.layers[k].attn.sliding_window
        if layer_type == "sliding_attention":
            assert att.kind == SLIDING and att.half_window == window - 1 == cfg.local_attention // 2
            assert np.array_equal(att.allowed(61), hf_allowed)
        else:
            assert att.kind == FULL and window is None
        kinds.add((att.kind, rot.table.name, rot.table.theta))
    theta = overrides.get("global_rope_theta", 160000.0)
    assert kinds == {(FULL, "global", theta), (SLIDING, "local", 10000.0)}


@pytest.mark.parametrize(
    "change,fragment",
    [
        (
            {"rope_parameters": {"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}}},
            "implements the default rotary table only",
        ),
        ({"layer_types": ["full_attention", "chunked_attention", "full_attention"]}, "must give each of the 3 layers"),
        ({"architectures": ["ModernBertForTokenClassification"]}, "a head this toolchain does not export"),
        ({"num_attention_heads": 3}, "does not divide hidden_size 32"),
        ({"num_attention_heads": 32}, "gives an odd head size"),
        ({"local_attention": 0}, "local_attention is 0; it must be an integer >= 1"),
        ({"global_rope_theta": -1.0}, "global_rope_theta is -1.0"),
        ({"norm_eps": float("nan")}, "norm_eps is nan"),
    ],
)
def test_what_the_file_does_not_implement_is_refused_with_the_reason(change, fragment):
    config = {**MB.tiny().to_dict(), **change}
    if "rope_parameters" in change:
        config["rope_parameters"] = {**MB.tiny().to_dict()["rope_parameters"], **change["rope_parameters"]}
    with pytest.raises(UsageError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        MB.make_config(config, "cfg")


def test_old_config_fields_and_reference_compile_load():
    """Hub configs from transformers 4.x: global_attn_every_n_layers, global/local_rope_theta; reference_compile
    (torch.compile of the unpadded path) is dropped: transformers 5.25 never unpads, and we export eager or sdpa."""
    old = {k: v for k, v in MB.tiny().to_dict().items() if k not in ("layer_types", "rope_parameters")}
    old |= {"global_attn_every_n_layers": 2, "global_rope_theta": 20000.0, "local_rope_theta": 500.0}
    cfg = MB.make_config({**old, "reference_compile": True}, "cfg")
    assert cfg.layer_types == ["full_attention", "sliding_attention", "full_attention"]
    assert [r.table.theta for r in MB.rotaries(cfg)] == [20000.0, 500.0, 20000.0]
    assert not getattr(cfg, "reference_compile", None)


@pytest.mark.parametrize("task", ["model", "masked-lm", "sequence-classification"])
def test_hf_folder_of_each_head_loads_with_its_weights(hf_ckpt, task):
    folder, model = hf_ckpt("modernbert", task)
    ck = load_checkpoint(folder)
    assert (ck.task, ck.family.name, ck.attn_implementation, ck.table) == (task, "modernbert", "eager", None)
    assert ck.source_format == "HF folder (model.safetensors)" and same_weights(ck.model, model)
    assert ck.model.config._attn_implementation == "eager"


def test_sharded_folder_loads_and_a_bad_index_is_refused(hf_ckpt, tmp_path):
    from tests.fixtures.hf_checkpoints import write_hf

    _, model = hf_ckpt("modernbert")
    folder, _ = write_hf(tmp_path / "sharded", "modernbert", shard_bytes=40_000)
    shards = sorted(p.name for p in folder.glob("model-*.safetensors"))
    assert len(shards) >= 2 and not (folder / "model.safetensors").exists()
    ck = load_checkpoint(folder)
    assert ck.source_format == "HF folder (sharded, model.safetensors.index.json)" and same_weights(ck.model, model)
    index = folder / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    key = next(iter(data["weight_map"]))
    for weight_map, fragment in [
        ({**data["weight_map"], key: "../elsewhere.safetensors"}, "not a file beside it"),
        ({k: v for k, v in data["weight_map"].items() if k != key}, "does not hold the keys"),
    ]:
        index.write_text(json.dumps({**data, "weight_map": weight_map}))
        with pytest.raises(UsageError, match=fragment):
            inspect_checkpoint(folder)


def test_bare_weights_load_with_config_beside_or_given(hf_ckpt, tmp_path):
    from safetensors.torch import save_file

    folder, model = hf_ckpt("modernbert")
    save_file(model.state_dict(), tmp_path / "w.safetensors")
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    assert same_weights(load_checkpoint(tmp_path / "w.safetensors").model, model)
    torch.save(model.state_dict(), tmp_path / "sub.pt")
    ck = load_checkpoint(tmp_path / "sub.pt", config_path=folder / "config.json")
    assert ck.config_source.startswith("--config") and same_weights(ck.model, model)
    torch.save({"config": model.config.to_dict(), "state_dict": model.state_dict()}, tmp_path / "c.pt")
    assert load_checkpoint(tmp_path / "c.pt").family.name == "modernbert"


def test_sdpa_is_taken_when_asked_and_never_flash_attention(hf_ckpt, tmp_path):
    """--attention sdpa is honoured; a config that asks for flash-attention (which does not export, nor is it
    installed here) still loads, with the kernel we export."""
    folder, _ = hf_ckpt("modernbert")
    assert load_checkpoint(folder, attention="sdpa").model.config._attn_implementation == "sdpa"
    config = json.loads((folder / "config.json").read_text())
    (tmp_path / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    (tmp_path / "config.json").write_text(json.dumps({**config, "attn_implementation": "flash_attention_2"}))
    ck = load_checkpoint(tmp_path)
    assert ck.attn_implementation == ck.model.config._attn_implementation == "eager"


@pytest.mark.parametrize(
    "change,fragment",
    [
        ({"hidden_size": 48}, r"weight has shape \(32,\), config expects \(48,\); check config.json"),
        ({"num_hidden_layers": 4, "layer_types": None}, "config num_hidden_layers is 4 but the weights hold 3"),
        ({"trust_remote_code": True}, "config has trust_remote_code: it asks for model code"),
        ({"model_type": "mb", "auto_map": {"AutoModel": "o/r--m.M"}}, r"config has auto_map \(code in o/r\): it asks"),
        ({"model_type": "gpt2"}, r"model_type='gpt2', which roformer-trt does not support \(supported: .*modernbert"),
    ],
)
def test_a_config_that_disagrees_or_is_not_ours_is_refused_in_one_line(hf_ckpt, tmp_path, capsys, change, fragment):
    folder, _ = hf_ckpt("modernbert")
    bad = tmp_path / "ckpt"
    bad.mkdir()
    (bad / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    (bad / "config.json").write_text(json.dumps({**json.loads((folder / "config.json").read_text()), **change}))
    out = tmp_path / "out"
    assert build(["--model", str(bad), "--out", str(out)]) == 2
    err = one_line(capsys)
    assert err.startswith("error: ") and re.search(fragment, err), err
    assert not out.exists() or not any(out.iterdir())

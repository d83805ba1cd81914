"""A checkpoint whose config or weights cannot be right is refused at load: exit 2, one stderr line naming
the field (or tensor) and the rule, no traceback, nothing left in --out. Through export.build.main in-process."""

from __future__ import annotations

import pytest
import torch

from export.build import main


@pytest.fixture(scope="session")
def tiny_parts(make_ckpt):
    """(config dict, state_dict) of the tiny RoFormerModel checkpoint."""
    path, _ = make_ckpt()
    obj = torch.load(path, weights_only=True)
    return obj["config"], obj["state_dict"]


def build_refuses(tmp_path, capsys, config: dict, state: dict) -> str:
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"config": config, "state_dict": state}, ckpt)
    out = tmp_path / "out"
    code = main(["--model", str(ckpt), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert not out.exists() or not any(out.iterdir()), sorted(out.iterdir())
    return err


@pytest.mark.parametrize(
    "field,value,rule",
    [
        ("num_attention_heads", 0, "must be an integer >= 1"),
        ("vocab_size", -5, "must be an integer >= 1"),
        ("max_position_embeddings", 0, "must be an integer >= 1"),
        ("type_vocab_size", 0, "must be an integer >= 1"),
        ("num_hidden_layers", 0, "must be an integer >= 1"),
        ("intermediate_size", 0, "must be an integer >= 1"),
        ("embedding_size", 0, "must be an integer >= 1"),
        ("hidden_size", "32", "(str); it must be an integer >= 1"),
        ("hidden_size", True, "(bool); it must be an integer >= 1"),
        ("num_attention_heads", 2.0, "(float); it must be an integer >= 1"),
        ("num_attention_heads", 3, "does not divide hidden_size 32"),
        ("num_attention_heads", 32, "gives an odd head size"),
    ],
)
def test_bad_config_value_is_refused(tmp_path, capsys, tiny_parts, field, value, rule):
    config, state = tiny_parts
    err = build_refuses(tmp_path, capsys, {**config, field: value}, state)
    assert err.startswith("error: ") and field in err and rule in err, err


def test_null_embedding_size_means_hidden_size(tiny_parts, tmp_path):
    from export.checkpoint.rebuild import load_checkpoint

    config, state = tiny_parts
    assert config["embedding_size"] == config["hidden_size"]  # so the weights fit either spelling
    torch.save({"config": {**config, "embedding_size": None}, "state_dict": state}, tmp_path / "c.pt")
    assert load_checkpoint(tmp_path / "c.pt").config.embedding_size == config["hidden_size"]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weight_is_refused_at_load(tmp_path, capsys, tiny_parts, bad):
    config, state = tiny_parts
    key = next(k for k in state if k.startswith("encoder.layer.0.") and k.endswith("weight"))
    state = dict(state)
    state[key] = state[key].clone()
    state[key].view(-1)[3] = bad
    err = build_refuses(tmp_path, capsys, config, state)
    assert f"weight {key} has 1 non-finite value(s) (NaN/inf)" in err and "corrupt" in err, err


@pytest.mark.timeout(60)
def test_config_json_fifo_and_deep_json_are_refused(tmp_path, capsys, tiny_parts):
    """--config goes through export.inputs.files: a FIFO does not hang, a 100000-deep file is one line."""
    import os

    config, state = tiny_parts
    torch.save(state, tmp_path / "w.pt")
    os.mkfifo(tmp_path / "fifo.json")
    (tmp_path / "deep.json").write_text("[" * 100_000)
    for cfg, expected in [("fifo.json", "FIFO"), ("deep.json", "deeper than 64 levels")]:
        code = main(["--model", str(tmp_path / "w.pt"), "--config", str(tmp_path / cfg), "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err.strip()
        assert code == 2 and expected in err and len(err.splitlines()) == 1, err

"""The outlier stress checkpoint (tests.fixtures.checkpoints.add_outliers): deterministic, labelled synthetic,
and shaped as it claims: a few channels hundreds of times the median, in the same channels in every layer."""

from __future__ import annotations

import numpy as np
import torch

from export.checkpoint.rebuild import load_checkpoint
from export.validate import Shape, TorchReference, make_inputs
from tests.fixtures.checkpoints import SYNTHETIC_NOTE, outlier_channels, write_demo


def test_written_twice_it_is_the_same_file_and_says_it_is_synthetic(tmp_path):
    a, b = write_demo(tmp_path / "a", tiny=True, outliers=True), write_demo(tmp_path / "b", tiny=True, outliers=True)
    assert a.read_bytes() == b.read_bytes()
    config = torch.load(a, weights_only=True)["config"]
    assert config["roformer_trt_synthetic"] == SYNTHETIC_NOTE
    plain = torch.load(write_demo(tmp_path / "c", tiny=True), weights_only=True)["config"]
    assert "roformer_trt_synthetic" not in plain


def test_outlier_channels_dominate_every_layer(tmp_path):
    ck = load_checkpoint(write_demo(tmp_path / "s", tiny=True, outliers=True))  # the loader takes it like any other
    plain = load_checkpoint(write_demo(tmp_path / "p", tiny=True))
    shape = Shape(2, 16)
    feeds = make_inputs(shape, ck.config.vocab_size, ck.config.type_vocab_size)
    out = np.abs(TorchReference(ck.model, ck.task)(shape, feeds)["last_hidden_state"])
    ordinary = np.abs(TorchReference(plain.model, plain.task)(shape, feeds)["last_hidden_state"])
    hidden = ck.config.hidden_size
    channels = list(outlier_channels(hidden))
    others = [c for c in range(hidden) if c not in channels]
    print(f"stress: max {out.max():.1f}, median {np.median(out):.3f}; plain: max {ordinary.max():.2f}")
    assert out.max() / np.median(out) > 100 > ordinary.max() / np.median(ordinary)
    assert out[..., channels].min(axis=-1).min() > 10 * out[..., others].max()  # the largest are those channels
    for name, p in ck.model.named_parameters():
        if name.endswith("LayerNorm.weight"):
            w = p.detach().abs()
            assert set(torch.topk(w, len(channels)).indices.tolist()) == set(channels), name

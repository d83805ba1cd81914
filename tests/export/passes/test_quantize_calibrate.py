"""Calibration: the range estimators on distributions whose answer is known, the plugin graph run through its
ONNX function, and determinism (the same data, the same graph, byte for byte)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from export.errors import UsageError
from export.passes.quantize import build, calibrate, plan
from export.passes.quantize.calibrate import (
    NUM_BINS,
    CalibMethod,
    calibration_session,
    check_method,
    entropy_amax,
    percentile_amax,
)
from export.passes.quantize.data import synthetic_set
from tests.export.passes.quantize_fixtures import MAX_LEN, calibrated, rope_graph


def hist_of(values: np.ndarray) -> tuple[np.ndarray, float]:
    a = np.abs(values)
    top = float(a.max())
    return np.histogram(a, bins=NUM_BINS, range=(0.0, top))[0], top


def test_percentile_of_a_uniform_distribution():
    h, top = hist_of(np.random.default_rng(0).uniform(-1, 1, 1_000_000))
    assert percentile_amax(h, top, 99.0) == pytest.approx(0.99, abs=2 * top / NUM_BINS)
    assert percentile_amax(h, top, 100.0) == pytest.approx(top, abs=top / NUM_BINS)


def test_entropy_clips_rare_outliers_and_keeps_the_bulk():
    """Gaussian bulk plus 0.01 % of values 50x larger: max calibration spends almost all 127 levels on the empty
    tail; the KL threshold lands between the bulk's edge and the outliers (TensorRT's entropy calibration)."""
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, 1_000_000), rng.choice([-50.0, 50.0], 100)])
    h, top = hist_of(x)
    amax = entropy_amax(h, top)
    assert 3.0 < amax < 0.5 * top, amax


def test_entropy_keeps_the_whole_range_of_a_uniform_distribution():
    h, top = hist_of(np.random.default_rng(1).uniform(-1, 1, 1_000_000))
    assert entropy_amax(h, top) > 0.9 * top


def test_entropy_is_int8_only():
    with pytest.raises(UsageError, match="use max or percentile"):
        check_method("entropy", "fp8")
    assert check_method("entropy", "int8").name == "entropy"


def test_calibration_runs_the_plugin_graph_and_sees_what_pytorch_sees(tmp_path_factory, exported):
    """Ranges come from the rewritten graph (RoformerRotary through its ONNX function): the largest |x| of the first
    layer's Q/K/V input equals the largest |LayerNorm output| PyTorch computes on the same batch."""
    import torch

    src, model, config = rope_graph(exported, tmp_path_factory)
    placement = plan(src)
    calib = synthetic_set(config.vocab_size, config.type_vocab_size, MAX_LEN, 8)
    amax = calibrate(src, placement, calib, CalibMethod("max"), rotary_function=True)
    assert set(amax) == set(placement.activations()) and all(v > 0 for v in amax.values())
    first = placement.sites[0].tensor  # layer 0's Q projection input: the embeddings' LayerNorm output
    seen = []
    hook = model.embeddings.LayerNorm.register_forward_hook(lambda m, i, o: seen.append(o.abs().max().item()))
    try:
        with torch.no_grad():
            for feed in calib.batches()():
                model(**{k: torch.from_numpy(v) for k, v in feed.items()})
    finally:
        hook.remove()
    assert amax[first] == pytest.approx(max(seen), rel=1e-5)


def test_same_data_same_graph_byte_for_byte(tmp_path_factory, exported):
    src, _, config = rope_graph(exported, tmp_path_factory)
    graphs = []
    for _ in range(2):
        placement, amax, _ = calibrated(src, config, method="entropy")
        model, _ = build(src, placement, amax, "int8", "fp16")
        graphs.append(model.SerializeToString())
    assert graphs[0] == graphs[1]
    other = synthetic_set(config.vocab_size, config.type_vocab_size, MAX_LEN, 5)
    amax2 = calibrate(src, plan(src), other, CalibMethod("entropy"), rotary_function=True)
    assert build(src, plan(src), amax2, "int8", "fp16")[0].SerializeToString() != graphs[0]  # the data matters


def test_calibration_session_returns_the_requested_tensors(tmp_path_factory, exported):
    src, _, config = rope_graph(exported, tmp_path_factory)
    tensors = plan(src).activations()[:3]
    sess = calibration_session(src, tensors, rotary_function=True)
    assert set(tensors) <= {o.name for o in sess.get_outputs()}
    assert onnx.load(str(src), load_external_data=False).graph.output[0].name in {o.name for o in sess.get_outputs()}

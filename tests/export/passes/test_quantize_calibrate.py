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


def test_percentile_is_the_upper_edge_of_the_exact_bin():
    """The P-th percentile is the upper edge of the first bin where the cumulative share reaches P % (not the bin
    after it, not its lower edge): checked on ties by hand, then against that definition on random histograms."""
    h, top = np.array([1, 1, 1, 1, 0, 0, 0, 0]), 8.0
    assert [percentile_amax(h, top, p) for p in (25.0, 50.0, 50.001, 75.0, 100.0)] == [1.0, 2.0, 3.0, 3.0, 4.0]
    rng = np.random.default_rng(0)
    for _ in range(50):
        hist = rng.integers(0, 1000, NUM_BINS) * (rng.random(NUM_BINS) < 0.3)
        p = float(rng.uniform(90.0, 100.0))
        need = p / 100 * hist.sum()
        k = next(k for k in range(1, NUM_BINS + 1) if hist[:k].sum() >= need)  # the smallest such upper edge
        assert percentile_amax(hist, 3.0, p) == 3.0 * k / NUM_BINS


@pytest.mark.parametrize("method", ["max", "percentile", "entropy"])
@pytest.mark.parametrize("bad", [-1.0, 0.0], ids=["nan", "inf"])
def test_a_nan_or_inf_activation_is_refused_by_name(tmp_path, method, bad):
    """sqrt(-1) is NaN, 1/0 is inf: a calibration batch that makes a tensor non-finite stops the calibration
    with the tensor's name; NaN would otherwise vanish in max() and leave a made-up scale of 1."""
    from onnx import TensorProto, helper

    from export.errors import VerificationError
    from export.passes.quantize.calibrate import collect_amax

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])
    node = helper.make_node("Sqrt", ["x"], ["act"]) if bad < 0 else helper.make_node("Reciprocal", ["x"], ["act"])
    graph = helper.make_graph([node, helper.make_node("Identity", ["act"], ["y"])], "g", [x], [y])
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    session = calibration_session(path, ["act"], rotary_function=False)
    good = [{"x": np.array([1.0, 4.0], np.float32)}]
    assert collect_amax(session, ["act"], lambda: iter(good), CalibMethod(method)) == {
        "act": pytest.approx(2.0 if bad < 0 else 1.0, rel=0.01)
    }
    batches = [*good, {"x": np.array([4.0, bad], np.float32)}]
    with pytest.raises(VerificationError, match="tensor act holds NaN or inf"):
        collect_amax(session, ["act"], lambda: iter(batches), CalibMethod(method))


def entropy_reference(hist: np.ndarray, top: float, levels: int = 128, start: int = 128) -> float:
    """pytorch-quantization's _compute_amax_entropy (calib/histogram.py), loop for loop, with scipy.stats.entropy's
    rule written out: bins[0] = bins[1]; for each i, p = bins[:i] plus the tail in its last bin, q = the
    non-empty bins of each of `levels` groups (np.digitize on linspace(0, i, levels + 1)) at their mean; the
    LAST i of least KL(p || q) wins."""
    bins = hist.astype(np.float64).copy()
    bins[0] = bins[1]
    divergences = []
    for i in range(start, len(bins) + 1):
        digitized = np.digitize(range(i), np.linspace(0, i, num=levels + 1)) - 1
        digitized[bins[:i] == 0] = -1
        sums, counts = np.zeros(levels), np.zeros(levels)
        for j, d in enumerate(digitized):
            if d != -1:
                sums[d] += bins[j]
                counts[d] += 1
        q = np.array([sums[d] / counts[d] if d != -1 else 0.0 for d in digitized])
        p = bins[:i].copy()
        p[-1] += bins[i:].sum()
        p, q = p / p.sum(), q / q.sum()
        if np.any((p > 0) & (q == 0)):
            divergences.append(np.inf)
        else:
            m = p > 0
            divergences.append(float(np.sum(p[m] * np.log(p[m] / q[m]))))
    last_argmin = len(divergences) - 1 - int(np.argmin(divergences[::-1]))
    return top * (start + last_argmin) / len(bins)


def test_entropy_breaks_ties_for_the_last_threshold_as_pytorch_quantization():
    """Mass in the first two bins only: every candidate threshold quantizes it without loss (KL 0 for all), and the
    tie goes to the last one, the whole range. Then the same search against the loop reference on histograms of
    several shapes (an exact tie, a bulk with a tail, sparse counts; 384 bins keep the loops short)."""
    tie = np.zeros(NUM_BINS, np.int64)
    tie[:2] = 1000
    assert entropy_amax(tie, 2.0) == 2.0
    rng = np.random.default_rng(0)
    n = 384
    bulk = np.histogram(np.abs(np.concatenate([rng.normal(0, 1, 50_000), rng.choice([-40.0, 40.0], 30)])), n)[0]
    sparse = rng.integers(0, 50, n) * (rng.random(n) < 0.1)
    laplace = np.histogram(np.abs(rng.laplace(0, 1, 50_000)), n)[0]
    for hist in (tie[:n], bulk, sparse, laplace):
        assert entropy_amax(hist, 7.0) == entropy_reference(hist, 7.0)

"""The accuracy-driven fallback: the search finds the fewest nodes to keep high, the sensitivity sweep finds the node
whose quantization is broken, and a graph that cannot pass within the budget says why."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from export.passes.quantize import build
from export.passes.quantize.fallback import EvalCase, run_fallback, search, sensitivity
from export.report.compare import error_stats
from export.stages.quantize import FALLBACK_DRAWS, FEW_TOKENS, fallback_draws
from export.validate import Shape, TorchReference, make_inputs, validation_shapes
from tests.export.passes.quantize_fixtures import calibrated, rope_graph


@pytest.mark.parametrize("max_len", [2, 24, 64, 100, 128, 2048])
@pytest.mark.parametrize("task", ["model", "multiple-choice"])
def test_the_fallback_never_tunes_on_validation_inputs(max_len, task):
    """Validation draws seed 0 of each shape; a fallback draw whose ids equal (or prefix) one of those would let
    the fallback tune on what validation then judges (seed + 1009 * batch + seq collided: B=1 S=23 seed 1 was
    B=1 S=24 seed 0)."""
    vocab = 2**40  # so that equal ids mean the same random stream, not a chance draw of a small vocab
    validation = [make_inputs(s, vocab, 2)["input_ids"] for s in validation_shapes(max_len, task)]
    draws = fallback_draws(validation_shapes(max_len, task))
    for shape in validation_shapes(max_len, task):
        seeds = [seed for s, seed in draws if s == shape]
        assert len(set(seeds)) == (FALLBACK_DRAWS if shape.batch * shape.seq <= FEW_TOKENS else 1)
    for shape, seed in draws:
        ids = make_inputs(shape, vocab, 2, seed=seed)["input_ids"]
        for v in validation:
            n = min(ids.shape[-1], v.shape[-1])
            rows = min(ids.shape[0], v.shape[0])
            assert not np.array_equal(ids[:rows, ..., :n], v[:rows, ..., :n]), (shape, seed)


def test_draws_on_which_pytorch_is_undefined_are_left_out(hf_ckpt):
    """ESM-2's token dropout divides by 1 - (mask tokens / real tokens): a row of <mask> alone is NaN in transformers
    itself. Draw B=1 S=1 seed 7 of the 33-token vocabulary is [[32]], the mask token: kept as a case, it ranked every
    node infinitely sensitive and failed every trial (the tiny ESM's int8 build then failed its gate, the fallback
    keeping 6 nodes in graph order). It is left out; every other draw stays."""
    from export.checkpoint.rebuild import load_checkpoint
    from export.stages.quantize import fallback_cases

    folder, _ = hf_ckpt("esm")
    ck = load_checkpoint(folder)
    shapes = [Shape(1, 1), Shape(3, 1)]
    draws = fallback_draws(shapes)
    feeds = {seed: make_inputs(Shape(1, 1), ck.facts.vocab_size, None, seed=seed) for s, seed in draws if s.batch == 1}
    assert feeds[7]["input_ids"].tolist() == [[ck.config.mask_token_id]]
    cases = fallback_cases(ck, shapes)
    assert [c.label for c in cases] == [f"{s.label()} seed {seed}" for s, seed in draws if (s.batch, seed) != (1, 7)]
    assert all(np.isfinite(v).all() for c in cases for v in c.refs.values())


@pytest.mark.parametrize("need,budget", [(0, 8), (1, 8), (3, 8), (5, 8), (8, 8), (7, 10)])
def test_search_finds_the_smallest_passing_prefix(need, budget):
    order = [f"n{i}" for i in range(20)]
    tried = []

    def attempt(keep):
        tried.append(len(keep))
        return len(keep) >= need, f"kept {len(keep)}"

    k, trials = search(order, budget, attempt)
    assert k == need
    assert len(tried) == len(set(tried)) <= 2 * budget.bit_length() + 1  # each k once, a logarithmic number
    assert {t["kept"]: t["passed"] for t in trials} == {n: n >= need for n in tried}


def test_search_gives_up_at_the_budget():
    k, trials = search(list("abcdefgh"), 5, lambda keep: (False, "no"))
    assert k is None and max(t["kept"] for t in trials) == 5


SHORT_SHAPES = (Shape(1, 1), Shape(3, 17, 2))


def cases_for(model, config, shapes=SHORT_SHAPES):
    ref = TorchReference(model, "model")
    out = []
    for s in shapes:
        feeds = make_inputs(s, config.vocab_size, config.type_vocab_size, seed=1)
        out.append(EvalCase(s.label(), feeds, ref(s, feeds)))
    return out


def judge_at(max_abs: float):
    def judge(got, case):
        s = error_stats(got["last_hidden_state"], case.refs["last_hidden_state"])
        return s.max_abs <= max_abs, f"{case.label}: max_abs {s.max_abs:.3g}"

    return judge


def test_sweep_and_search_find_the_broken_node(tmp_path_factory, exported):
    """One tensor's range set 100x too small (its values clip): the sweep ranks its readers first, and the fallback
    keeps exactly those high and passes; with the correct range it keeps nothing."""
    src, model, config = rope_graph(exported, tmp_path_factory)
    placement, amax, _ = calibrated(src, config)
    site = next(s for s in placement.sites if s.role == "linear" and s.kind == "activation")
    bad = dict(amax) | {site.tensor: amax[site.tensor] / 100}
    readers = {s.node for s in placement.sites if s.tensor == site.tensor}
    cases = cases_for(model, config)

    sens = sensitivity(src, placement, bad, "int8", cases, rotary_function=True)
    top = sorted(sens, key=lambda n: -sens[n]["error"])[: len(readers)]
    assert set(top) == readers, (top, readers)
    assert all(v["flops"] > 0 for v in sens.values())

    def trial(amax_):
        return lambda keep: build(src, placement.with_kept(keep), amax_, "int8", "fp32")[0]

    # a bar between the clean graph's error and the broken one's, measured rather than guessed
    clean = max(
        error_stats(_run(trial(amax)(frozenset()), src, c)["last_hidden_state"], c.refs["last_hidden_state"]).max_abs
        for c in cases
    )
    broken = max(
        error_stats(_run(trial(bad)(frozenset()), src, c)["last_hidden_state"], c.refs["last_hidden_state"]).max_abs
        for c in cases
    )
    assert broken > 10 * clean, (clean, broken)
    bar = 3 * clean
    r = run_fallback(
        src, placement, bad, "int8", cases, judge=judge_at(bar), trial=trial(bad), budget=4, rotary_function=True
    )
    assert r.passed and r.keep == frozenset(readers), r.report
    assert [k["node"] for k in r.report["kept"]] == top
    assert 0 < r.report["high_flops_share"] < 1
    ok = run_fallback(
        src, placement, amax, "int8", cases, judge=judge_at(bar), trial=trial(amax), budget=4, rotary_function=True
    )
    assert (
        ok.passed
        and ok.keep == frozenset()
        and ok.report["trials"] == [{"kept": 0, "passed": True, "worst": ok.report["trials"][0]["worst"]}]
    )
    none = run_fallback(
        src,
        placement,
        bad,
        "int8",
        cases,
        judge=judge_at(clean / 1000),
        trial=trial(bad),
        budget=2,
        rotary_function=True,
    )
    assert not none.passed and "budget" in none.report["reason"] and len(none.keep) == 2


def _run(model, src, case):
    from export.passes.quantize.calibrate import single_thread_session

    sess = single_thread_session(model, src.parent, rotary_function=True)
    names = list(case.refs)
    return dict(zip(names, sess.run(names, case.feeds), strict=True))


def test_sensitivity_is_the_nodes_own_relative_error(tmp_path_factory, exported):
    """The sweep's number for a node equals ||fq(x) @ fq(W) - x @ W|| / ||x @ W|| computed in numpy from the fp32
    graph's x (fq: the same scales, round to nearest even), for every node, not only the one checked."""
    from onnx import numpy_helper

    from export.passes.quantize.calibrate import calibration_session
    from export.passes.quantize.qdq import quantize_weight

    src, model, config = rope_graph(exported, tmp_path_factory)
    placement, amax, _ = calibrated(src, config)
    cases = cases_for(model, config, shapes=(Shape(3, 17, 2),))
    sens = sensitivity(src, placement, amax, "int8", cases, rotary_function=True)
    assert set(sens) == set(placement.nodes())
    site = next(s for s in placement.sites if s.role == "linear" and s.kind == "activation")
    w_site = next(s for s in placement.sites if s.node == site.node and s.kind == "weight")
    x = calibration_session(src, [site.tensor], rotary_function=True).run([site.tensor], cases[0].feeds)[0]
    w = numpy_helper.to_array(next(t for t in onnx.load(str(src)).graph.initializer if t.name == w_site.tensor))
    step = np.float32(amax[site.tensor] / 127)
    xq = np.clip(np.rint(x / step), -128, 127) * step
    q, scale = quantize_weight(w, "int8", w_site.axis, np.float32)
    y, yq = x.astype(np.float64) @ w, xq.astype(np.float64) @ (q.astype(np.float64) * scale)
    assert sens[site.node]["error"] == pytest.approx(np.linalg.norm(yq - y) / np.linalg.norm(y), rel=1e-3)
    assert sens[site.node]["flops"] == 2 * x.size * w.shape[1]


def test_the_sweep_runs_each_twin_beside_its_node(tmp_path_factory, exported):
    """ONNX Runtime runs a graph's nodes in the file's order: twins left at the end of the sensitivity graph kept every
    node's inputs and output alive until then (the demo's INT8 build peaked at 8.6 GB). Each twin and its error sums
    come right after the node they copy, with only the Q/DQ that feed the twin in between."""
    from export.passes.quantize.fallback import sensitivity_model
    from export.passes.quantize.placement import DQ_OP, Q_OP

    src, _, config = rope_graph(exported, tmp_path_factory)
    placement, amax, _ = calibrated(src, config)
    model, nodes = sensitivity_model(src, placement, amax, "int8")
    order = [n.name for n in model.graph.node]
    op = {n.name: n.op_type for n in model.graph.node}
    assert len(set(order)) == len(order) and len(nodes) > 2
    for i, name in enumerate(nodes):
        chain = {f"{name}__sens"} | {f"__sens{i}_{k}" for k in ("sub", "err", "ref", "sa", "sb")}
        last = max(order.index(c) for c in chain)
        between = set(order[order.index(name) + 1 : last + 1]) - chain
        assert {op[n] for n in between} <= {Q_OP, DQ_OP}, (name, sorted(between))


def test_the_sweep_in_groups_gives_each_node_its_own_numbers(tmp_path_factory, exported, monkeypatch):
    """The sweep runs its twins in SWEEP_GROUPS graphs to hold fewer dequantized weights at once; a twin's numbers do
    not depend on which others share its graph, bit for bit (the fallback's choice, and so the file, rests on them)."""
    from export.passes.quantize import fallback

    src, model, config = rope_graph(exported, tmp_path_factory)
    placement, amax, _ = calibrated(src, config)
    cases = cases_for(model, config)
    monkeypatch.setattr(fallback, "SWEEP_GROUPS", 1)
    whole = sensitivity(src, placement, amax, "int8", cases, rotary_function=True)
    monkeypatch.setattr(fallback, "SWEEP_GROUPS", 3)
    assert sensitivity(src, placement, amax, "int8", cases, rotary_function=True) == whole

"""The accuracy-driven fallback (`--quant-fallback auto`): keep in high precision the few quantized MatMuls whose
quantization costs the most, until the graph passes its thresholds, within a budget.

In: the fp32 graph, the Placement and the calibrated ranges, the evaluation cases (inputs and PyTorch fp32
outputs: the validation shapes with inputs of another seed than validation's, so what the fallback tunes on is
not what validation then checks), `judge(outputs, case) -> (passed, worst line)`, `trial(keep) -> ModelProto`
(the quantized graph with `keep` left high, in the high precision the build writes, so the search judges the
graph validation will judge), the budget (most nodes kept high).
Out: a FallbackResult: the nodes kept high and the report section (ranking, every trial, what stayed high, its
share of the MatMul FLOPs, or why no graph within the budget passes).

1. Sensitivity sweep, one run per case: a copy of the fp32 graph where every quantizable node has a twin that
   reads the Q/DQ'd inputs; the twin's relative error ||y_q - y|| / ||y||, its largest over the cases, ranks
   the nodes (the layer-by-layer diagnosis: each node's own damage, from fp32 inputs).
2. Search: keep the top k high for k = 0, 1, 2, 4, ... (the budget last) until a graph passes end to end,
   then bisect between the last failing and the first passing k. Every trial is the real quantized graph in
   ONNX Runtime; a cost of k trials, not one per node.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from export.memory import release_freed
from export.onnx_io import load_tensor
from export.passes.quantize.calibrate import single_thread_session
from export.passes.quantize.placement import Placement, load_structure
from export.passes.quantize.qdq import Inserter, raise_opset
from export.progress import info, steps

MODES = ("none", "auto")


@dataclass(frozen=True)
class EvalCase:
    label: str
    feeds: dict[str, np.ndarray]
    refs: dict[str, np.ndarray]  # output name -> PyTorch fp32


@dataclass
class FallbackResult:
    keep: frozenset[str]
    passed: bool
    report: dict = field(default_factory=dict)


def sensitivity_model(
    src: Path, placement: Placement, amax: dict[str, float], fmt: str, only: list[str] | None = None
) -> tuple[onnx.ModelProto, list[str]]:
    """The fp32 graph plus, per quantizable node i (of `only`, default all), outputs err_i / ref_i (sums of squares of
    the twin's error and of the node's output) and shape_a_i / shape_b_i (its inputs' shapes, for FLOPs). Returns
    (model, nodes)."""
    src = Path(src)
    model = load_structure(src)
    raise_opset(model)
    inits = {t.name: t for t in model.graph.initializer}
    ins = Inserter(model, fmt, amax, lambda n: numpy_helper.to_array(load_tensor(inits[n], src.parent)))
    nodes = placement.nodes() if only is None else only
    position = {n.name: k for k, n in enumerate(model.graph.node)}
    extra: list[onnx.NodeProto] = []
    outs: list[onnx.ValueInfoProto] = []
    rank: dict[str, float] = {}  # toposort's rank: each node's checks right after it
    for i, name in enumerate(nodes):
        node = ins.nodes[name]
        twin = onnx.NodeProto()
        twin.CopyFrom(node)
        twin.name, twin.output[:] = f"{name}__sens", [f"{node.output[0]}__sens"]
        for site in (s for s in placement.sites if s.node == name):
            twin.input[site.index] = ins.dq_for(site, node.input[site.index])
        y, p = node.output[0], f"__sens{i}_"
        chain = [
            twin,
            helper.make_node("Sub", [twin.output[0], y], [p + "d"], name=p + "sub"),
            helper.make_node("ReduceSumSquare", [p + "d"], [p + "err"], name=p + "err", keepdims=0),
            helper.make_node("ReduceSumSquare", [y], [p + "ref"], name=p + "ref", keepdims=0),
            helper.make_node("Shape", [node.input[0]], [p + "sa"], name=p + "sa"),
            helper.make_node("Shape", [node.input[1]], [p + "sb"], name=p + "sb"),
        ]
        # Right after the node, not after the whole graph: ONNX Runtime runs nodes in the file's order, and a twin
        # left to the end holds every node's inputs and output alive until then (calibrate.single_thread_session).
        rank |= {n.name: position[name] + 0.5 for n in chain}
        extra += chain
        outs += [
            helper.make_tensor_value_info(p + "err", TensorProto.FLOAT, []),
            helper.make_tensor_value_info(p + "ref", TensorProto.FLOAT, []),
            helper.make_tensor_value_info(p + "sa", TensorProto.INT64, None),
            helper.make_tensor_value_info(p + "sb", TensorProto.INT64, None),
        ]
    ins.new_nodes += extra
    ins.finish(rank)
    model.graph.output.extend(outs)
    return model, nodes


SWEEP_GROUPS = 2  # sweep graphs, each with the twins of a share of the nodes: ORT holds that share's weights at once


def sensitivity(
    src: Path, placement: Placement, amax: dict[str, float], fmt: str, cases: list[EvalCase], rotary_function: bool
) -> dict[str, dict]:
    """node -> {"error": largest relative local error over the cases, "flops": MatMul FLOPs at the largest case}.
    The nodes are swept in SWEEP_GROUPS graphs one after the other (each twin's numbers are its own whatever the
    group): the dequantized weights of all twins at once took 0.34 GB on the demo."""
    every = placement.nodes()
    out = {n: {"error": 0.0, "flops": 0} for n in every}
    size = -(-len(every) // SWEEP_GROUPS)
    for g in range(0, len(every), size):
        model, nodes = sensitivity_model(src, placement, amax, fmt, every[g : g + size])
        sess = single_thread_session(model, Path(src).parent, rotary_function)
        del model
        wanted = {i.name for i in sess.get_inputs()}
        names = [f"__sens{i}_{k}" for i in range(len(nodes)) for k in ("err", "ref", "sa", "sb")]
        part = f" ({g // size + 1}/{SWEEP_GROUPS})" if len(every) > size else ""

        def describe(c: EvalCase, part: str = part) -> str:
            return f"fallback: sensitivity sweep{part}, {c.label}"

        for case in steps(cases, describe):
            got = dict(zip(names, sess.run(names, {k: v for k, v in case.feeds.items() if k in wanted}), strict=True))
            for i, n in enumerate(nodes):
                err, ref = float(got[f"__sens{i}_err"]), float(got[f"__sens{i}_ref"])
                rel = float(np.sqrt(err / ref)) if ref > 0 else (0.0 if err == 0 else float("inf"))
                out[n]["error"] = max(out[n]["error"], rel)
                out[n]["flops"] = max(out[n]["flops"], _flops(got[f"__sens{i}_sa"], got[f"__sens{i}_sb"]))
        del sess
        release_freed()
    return out


def _flops(sa: np.ndarray, sb: np.ndarray) -> int:
    """2 * M * K * N of a MatMul [.., M, K] x [.., K, N] (batch dims in A's product)."""
    return int(2 * np.prod(sa.astype(np.float64)) * sb[-1]) if len(sa) and len(sb) else 0


def search(
    order: list[str], budget: int, attempt: Callable[[frozenset[str]], tuple[bool, str]]
) -> tuple[int | None, list[dict]]:
    """Smallest k (by doubling, then bisection) whose top-k kept high passes; None when k = budget fails too."""
    trials: dict[int, tuple[bool, str]] = {}

    def ok(k: int) -> bool:
        if k not in trials:
            trials[k] = attempt(frozenset(order[:k]))
        return trials[k][0]

    if ok(0):
        return 0, _trials(trials)
    lo, k, hi = 0, 1, None
    while hi is None and k <= budget:
        if ok(k):
            hi = k
        else:
            lo = k
            k = budget if k < budget and 2 * k > budget else 2 * k
    if hi is None:
        return None, _trials(trials)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return hi, _trials(trials)


def _trials(trials: dict[int, tuple[bool, str]]) -> list[dict]:
    return [{"kept": k, "passed": p, "worst": w} for k, (p, w) in trials.items()]


def run_fallback(
    src: Path,
    placement: Placement,
    amax: dict[str, float],
    fmt: str,
    cases: list[EvalCase],
    *,
    judge: Callable[[dict, EvalCase], tuple[bool, str]],
    trial: Callable[[frozenset[str]], onnx.ModelProto],
    budget: int,
    rotary_function: bool,
) -> FallbackResult:
    """Sensitivity sweep, then the search (module docstring); the report says what stayed high and what it cost."""
    sens = sensitivity(src, placement, amax, fmt, cases, rotary_function)
    release_freed()
    order = sorted(sens, key=lambda n: -sens[n]["error"])  # stable: graph order among equals

    def attempt(keep: frozenset[str]) -> tuple[bool, str]:
        info(f"fallback: trying the graph with {len(keep)} of {len(order)} MatMuls kept high ({len(cases)} cases)")
        sess = single_thread_session(trial(keep), Path(src).parent, rotary_function)
        wanted = {i.name for i in sess.get_inputs()}
        graded = []
        for case in cases:
            names = list(case.refs)
            got = dict(zip(names, sess.run(names, {k: v for k, v in case.feeds.items() if k in wanted}), strict=True))
            graded.append(judge(got, case))
        failed = [line for ok, line in graded if not ok]
        info(f"fallback: {len(keep)} kept high: " + (f"fails ({failed[0]})" if failed else "passes"))
        del sess
        release_freed()  # each trial's graph and session start from what the build holds, not on top of the last's
        return not failed, failed[0] if failed else graded[-1][1]

    k, trials = search(order, budget, attempt)
    total = sum(v["flops"] for v in sens.values()) or 1
    kept = order[: budget if k is None else k]  # failing: the budget's worth, the closest it got
    report = {
        "mode": "auto",
        "budget": budget,
        "quantizable": len(order),
        "passed": k is not None,
        "trials": trials,
        "ranking": [{"node": n, "role": placement.role(n), "error": sens[n]["error"]} for n in order[:10]],
        "kept": [
            {"node": n, "role": placement.role(n), "error": sens[n]["error"], "flops_share": sens[n]["flops"] / total}
            for n in kept
        ],
        "high_flops_share": sum(sens[n]["flops"] for n in kept) / total,
    }
    if k is None:
        worst = trials[-1]["worst"] if trials else ""
        report["reason"] = (
            f"keeping the {budget} most sensitive of {len(order)} quantized MatMuls in high precision "
            f"(the budget) still fails: {worst}"
        )
    return FallbackResult(frozenset(kept), k is not None, report)

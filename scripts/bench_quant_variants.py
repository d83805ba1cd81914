"""INT8 placement choices measured: SmoothQuant against the accuracy-driven fallback, and quantizing the residual
Adds, on the outlier stress checkpoint and the demo.

    python scripts/bench_quant_variants.py --build build/stress --model stress/ckpt.pt --label stress

SmoothQuant (Xiao et al., "SmoothQuant: Accurate and Efficient Post-Training Quantization for Large Language
Models", ICML 2023) moves activation outliers into the weights: for a MatMul x @ W with per-channel activation
maxima a_c and weight row maxima w_c, s_c = a_c^alpha / w_c^(1-alpha); x / s is quantized per tensor, W * s per
channel. In this post-LayerNorm encoder the LayerNorm output also feeds the residual Add, so 1/s cannot be folded
into LayerNorm: it is an explicit Mul before the Q (one per smoothed tensor). Smoothed here: every activation read
only by weighted MatMuls (Q/K/V, attention output, FFN in and out).

Variants, each the rope-plugin graph with our placement and max calibration (synthetic set), fp32 high precision:
none; residual (the residual Adds' inputs quantized too, as NVIDIA's QDQBERT does for TensorRT's Add fusion);
fallback (export.build's --quant-fallback auto); smooth (alpha 0.5); smooth + fallback. Each is judged at
the validation shapes up to --max-len against PyTorch fp32 with the int8 thresholds of export/report/thresholds.py, and
the fallback's own account (nodes kept high, their share of the MatMul FLOPs). Writes
quant_variants_<label>.{json,md} into --out (default build/scripts/bench_quant_variants/; --update-results:
scripts/results/quant/).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from script_outputs import add_output_flags  # noqa: E402

from export.cli import entry as cli  # noqa: E402
from export.cli.entry import Parser  # noqa: E402
from export.errors import UsageError  # noqa: E402
from export.inputs.numbers import float_arg, int_arg  # noqa: E402

ALPHA = 0.5  # the paper's default


def channel_amax(src: Path, tensors: list[str], batches) -> dict[str, np.ndarray]:
    from export.passes.quantize.calibrate import calibration_session, run_batches

    sess = calibration_session(src, tensors, rotary_function=True)
    out: dict[str, np.ndarray] = {}

    def see(name, a):
        m = a.reshape(-1, a.shape[-1]).max(axis=0)
        out[name] = m if name not in out else np.maximum(out[name], m)

    run_batches(sess, tensors, batches, see, "smoothing ranges")
    return out


def smoothing(src: Path, placement, batches, alpha: float) -> dict[str, np.ndarray]:
    """tensor -> s (per input channel) for every activation read only by weighted MatMuls."""
    import onnx
    from onnx import numpy_helper

    from export.onnx_io import load_tensor

    inits = {t.name: t for t in onnx.load(str(src), load_external_data=False).graph.initializer}
    readers: dict[str, list] = {}
    for s in placement.sites:
        if s.kind == "activation":
            readers.setdefault(s.tensor, []).append(s)
    targets = {t for t, sites in readers.items() if all(x.role == "linear" and x.index == 0 for x in sites)}
    amax = channel_amax(src, sorted(targets), batches)
    scales = {}
    for t in sorted(targets):
        weights = [x.tensor for x in placement.sites if x.kind == "weight" and x.node in {r.node for r in readers[t]}]
        wmax = np.max(
            [np.abs(numpy_helper.to_array(load_tensor(inits[w], src.parent))).max(axis=1) for w in weights], axis=0
        )
        s = np.power(np.maximum(amax[t], 1e-5), alpha) / np.power(np.maximum(wmax, 1e-5), 1 - alpha)
        scales[t] = np.clip(s, 1e-5, 1e5).astype(np.float32)
    return scales


def smoothed_graph(src: Path, placement, amax: dict, scales: dict, smooth_amax: dict):
    """The int8 graph with x / s before each smoothed Q (its range: max over channels of amax_c / s_c, exact for max
    calibration) and W * s quantized; kept-high nodes read x and W."""
    from onnx import helper, numpy_helper

    from export.onnx_io import load_tensor
    from export.passes.quantize.placement import load_structure
    from export.passes.quantize.qdq import insert_qdq

    model = load_structure(src)
    inits = {t.name: t for t in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    weight_scale = {}
    for t, s in scales.items():
        inv = numpy_helper.from_array((1.0 / s).astype(np.float32), f"{t}__smooth_inv")
        model.graph.initializer.append(inv)
        model.graph.node.append(helper.make_node("Mul", [t, inv.name], [f"{t}__smoothed"], name=f"{t}__Smooth"))
        for site in placement.active():
            if site.tensor == t:
                nodes[site.node].input[site.index] = f"{t}__smoothed"
                w = next(x for x in placement.sites if x.node == site.node and x.kind == "weight")
                weight_scale[w.tensor] = s
    amax = dict(amax) | smooth_amax

    def weight(name):
        w = numpy_helper.to_array(load_tensor(inits[name], src.parent)).astype(np.float32)
        return w * weight_scale[name][:, None] if name in weight_scale else w

    insert_qdq(model, placement, amax, "int8", weight)
    return model


def build_parser() -> Parser:
    p = Parser(
        prog="scripts/bench_quant_variants.py",
        description=__doc__.split("\n\n")[0],
        epilog="example: python scripts/bench_quant_variants.py --build build/stress --model stress/ckpt.pt",
    )
    p.add_argument("--build", type=Path, required=True, help="an export.build folder with model.rope-plugin.onnx")
    p.add_argument("--model", required=True, help="its checkpoint (the PyTorch reference)")
    p.add_argument("--label", default="stress", help="results file stem: quant_variants_<label>.{json,md}")
    p.add_argument("--max-len", type=int_arg(), default=2048, help="the build's --max-len")
    p.add_argument("--alpha", type=float_arg(), default=ALPHA, help="SmoothQuant's migration strength")
    add_output_flags(p, "bench_quant_variants", "quant")
    return p


def main(argv: list[str] | None = None) -> int:
    return cli.run(build_parser(), _main, argv)


def _main(args) -> int:
    if not (args.build / "model.rope-plugin.onnx").is_file():
        raise UsageError(f"--build {args.build} has no model.rope-plugin.onnx; run python -m export.build first")
    from export.checkpoint.rebuild import load_checkpoint
    from export.passes.quantize import build, calibrate, plan
    from export.passes.quantize.calibrate import CalibMethod, single_thread_session
    from export.passes.quantize.data import synthetic_set
    from export.passes.quantize.fallback import EvalCase, run_fallback
    from export.report.compare import error_stats, row_mask
    from export.report.thresholds import DEFAULTS
    from export.stages.bench import host_description
    from export.stages.quantize import FALLBACK_MARGIN, fallback_cases
    from export.validate import TorchReference, make_inputs, validation_shapes

    ck = load_checkpoint(args.model, table_rows=args.max_len)
    src = args.build / "model.rope-plugin.onnx"
    placement = plan(src)
    calib = synthetic_set(ck.facts.vocab_size, ck.facts.type_vocab_size, args.max_len)
    amax = calibrate(src, placement, calib, CalibMethod("max"), rotary_function=True)
    scales = smoothing(src, placement, calib.batches(), args.alpha)
    channels = channel_amax(src, sorted(scales), calib.batches())
    smooth_amax = {t: float((channels[t] / scales[t]).max()) for t in scales}
    ref = TorchReference(ck.model, ck.task)
    th = DEFAULTS["int8"]

    def validation_cases():
        out = []
        for s in validation_shapes(args.max_len, ck.task):
            feeds = make_inputs(s, ck.facts.vocab_size, ck.facts.type_vocab_size)
            out.append(EvalCase(s.label(), feeds, ref(s, feeds)))
        return out

    def stats(got, case):
        st = error_stats(
            got["last_hidden_state"],
            case.refs["last_hidden_state"],
            row_mask("last_hidden_state", got["last_hidden_state"].shape, case.feeds["attention_mask"]),
        )
        return st

    def judge(got, case, margin=FALLBACK_MARGIN):
        st = stats(got, case)
        ok = st.scaled_error <= margin * th.rtol and 1 - st.row_cosine <= margin * (1 - th.min_row_cosine)
        return ok, f"{case.label}: row cosine {st.row_cosine:.6f}, scaled {st.scaled_error:.4f}"

    def evaluate(model, test_cases):
        sess = single_thread_session(model, src.parent, rotary_function=True)
        rows = []
        for c in test_cases:
            st = stats({"last_hidden_state": sess.run(["last_hidden_state"], c.feeds)[0]}, c)
            rows.append(
                {
                    "shape": c.label,
                    "row_cosine": st.row_cosine,
                    "scaled_error": st.scaled_error,
                    "passed": st.scaled_error <= th.rtol and st.row_cosine >= th.min_row_cosine,
                }
            )
        return rows

    tune, test = fallback_cases(ck, validation_shapes(args.max_len, ck.task)), validation_cases()
    plain = lambda keep: build(src, placement.with_kept(keep), amax, "int8", "fp32")[0]  # noqa: E731
    smooth = lambda keep: smoothed_graph(src, placement.with_kept(keep), amax, scales, smooth_amax)  # noqa: E731
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "host": host_description(),
        "label": args.label,
        "alpha": args.alpha,
        "thresholds": th.to_dict(),
        "variants": {},
    }
    residual = plan(src, residual=True)
    ramax = calibrate(src, residual, calib, CalibMethod("max"), rotary_function=True)
    result["variants"]["residual"] = {
        "kept": 0,
        "cases": evaluate(build(src, residual, ramax, "int8", "fp32")[0], test),
    }
    for name, make in (("none", plain), ("smooth", smooth)):
        result["variants"][name] = {"kept": 0, "cases": evaluate(make(frozenset()), test)}
        t = time.perf_counter()
        fb = run_fallback(
            src,
            placement,
            amax,
            "int8",
            tune,
            judge=judge,
            trial=make,
            budget=len(placement.nodes()) // 4,
            rotary_function=True,
        )
        result["variants"][f"{name}+fallback"] = {
            "kept": len(fb.keep),
            "high_flops_share": fb.report["high_flops_share"],
            "passed": fb.passed,
            "seconds": round(time.perf_counter() - t, 1),
            "cases": evaluate(make(fb.keep), test),
        }
        print(name, json.dumps(result["variants"][f"{name}+fallback"]["cases"][-1]), file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"quant_variants_{args.label}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# INT8 variants: SmoothQuant (alpha {args.alpha}), the fallback, residual Adds, {args.label} "
        f"({result['date']}, {result['host']})",
        "",
        f"Thresholds (int8): {th.to_dict()}. Fallback tuned on export.build's "
        "evaluation inputs (seeds 1-8), judged here on the validation inputs (seed 0).",
        "",
        "Cells: min per-row cosine / max |error| / max |reference|.",
        "",
        "| variant | kept high | high FLOPs | every case passes | "
        + " | ".join(c["shape"] for c in result["variants"]["none"]["cases"])
        + " |",
        "|---|---|---|---|" + "---|" * len(result["variants"]["none"]["cases"]),
    ]
    for name, v in result["variants"].items():
        lines.append(
            f"| {name} | {v['kept']} | {100 * v.get('high_flops_share', 0):.1f} % | "
            f"{all(c['passed'] for c in v['cases'])} | "
            + " | ".join(f"{c['row_cosine']:.5f} / {c['scaled_error']:.3f}" for c in v["cases"])
            + " |"
        )
    (args.out / f"quant_variants_{args.label}.md").write_text("\n".join(lines) + "\n")
    print(args.out / f"quant_variants_{args.label}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The INT8 CPU twin: which quantization of the ONNX Runtime model is fastest on a CPU host at what accuracy.

    python scripts/bench_quant_cpu.py --build build/ckpt --model demo/ckpt.pt \
        --stress-build build/stress --stress-model stress/ckpt.pt --rounds 7 --grid 1x128,8x128,1x512,8x512

Variants, all made from the build's fp32 CPU graph (what engines.triton publishes as `<name>_onnx`: the
`rope-onnx` graph, else the plain `model.onnx`):
- fp32: the graph as is (the baseline every speed-up is relative to);
- dynamic: `quantize_dynamic`, MatMul, per-tensor int8 weights (the issue's anchor); dynamic@basic / @extended:
  ONNX Runtime's graph optimization level lowered from ALL; dynamic-pc: per-channel weights;
- fused-dynamic(-pc): ORT's transformer fusions first (SkipLayerNormalization, BiasGelu, EmbedLayerNormalization;
  the rotary attention does not fuse), then dynamic (per-channel);
- static-qdq-s8: our Q/DQ placement and calibration with fp32 as the high precision (the TensorRT graph's
  quantization), and static-qdq-s8-linear without the attention matmuls;
- static-qop-u8: `quantize_static`, QOperator, uint8 activations, per-channel weights, MatMul (ORT's CPU recipe).
The twin export.build writes (`--precision int8`, export/passes/quantize/cpu_twin.py) is `cpu-twin` below.

Speed: interleaved rounds (each round runs every variant once, the order rotated), medians with min/max, per
batch x sequence; ONNX Runtime's CPU memory arena is off for every session (a dozen demo-size sessions with
their arenas grown to batch 8 x 512 do not fit beside each other in 24 GB). Accuracy: against PyTorch fp32,
per-row cosine over non-padded rows and the largest absolute
error scaled by the reference's largest magnitude, at batch 3 x 128 with 2 padded rows and batch 1 x 512; the
stress checkpoint (outlier channels) for accuracy only. Writes quant_cpu.{json,md,png} into --out (default
build/scripts/bench_quant_cpu/; --update-results: scripts/results/quant/); the variants go to --work.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from script_outputs import add_output_flags  # noqa: E402

from export.cli import entry as cli  # noqa: E402
from export.cli.entry import Parser  # noqa: E402
from export.errors import UsageError  # noqa: E402
from export.inputs.numbers import int_arg, parse_int_list  # noqa: E402


def variants(src: Path, work: Path, calib, config) -> dict[str, tuple[Path, str]]:
    """name -> (model file, ORT optimization level), made once into `work`."""
    from onnx.external_data_helper import load_external_data_for_model
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from export.onnx_io import write_model
    from export.passes.quantize import build, calibrate, plan
    from export.passes.quantize.calibrate import CalibMethod
    from export.passes.quantize.cpu_twin import quantize_matmuls, write_cpu_twin

    work.mkdir(parents=True, exist_ok=True)
    made: dict[str, tuple[Path, str]] = {"fp32": (src, "all")}

    def make(name, fn, opt="all"):
        path = work / f"{name.split('@')[0]}.onnx"
        if not path.exists():
            t = time.perf_counter()
            fn(path)
            print(f"made {name} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        made[name] = (path, opt)

    def dyn(per_channel, source=src):
        return lambda p: quantize_matmuls(source, p, per_channel)  # the twin's quantizer

    make("dynamic", dyn(False))
    made["dynamic@basic"] = (made["dynamic"][0], "basic")
    made["dynamic@extended"] = (made["dynamic"][0], "extended")
    make("dynamic-pc", dyn(True))

    def fused(per_channel):
        def write(p):
            from onnxruntime.transformers.optimizer import optimize_model

            m = optimize_model(
                str(src),
                model_type="bert",
                num_heads=config.num_attention_heads,
                hidden_size=config.hidden_size,
                opt_level=0,
            )  # Python fusions only: no ORT temp file
            tmp = work / "fused-fp32.onnx"
            m.save_model_to_file(str(tmp), use_external_data_format=True)
            dyn(per_channel, tmp)(p)

        return write

    make("fused-dynamic", fused(False))
    make("fused-dynamic-pc", fused(True))
    placement = plan(src)
    amax = calibrate(src, placement, calib, CalibMethod("max"), rotary_function=False)

    def ours(pl):  # the graph keeps reading the source's data file: load it, so the variant stands alone in `work`
        def write(p):
            model = build(src, pl, amax, "int8", "fp32")[0]
            load_external_data_for_model(model, str(src.parent))
            write_model(model, p, external=True)

        return write

    make("static-qdq-s8", ours(placement))
    make("static-qdq-s8-linear", ours(placement.with_kept({s.node for s in placement.sites if s.role == "attention"})))

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calib.batches()())

        def get_next(self):
            return next(self.it, None)

    make(
        "static-qop-u8",
        lambda p: quantize_static(
            str(src),
            str(p),
            Reader(),
            quant_format=QuantFormat.QOperator,
            op_types_to_quantize=["MatMul"],
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            use_external_data_format=True,
        ),
    )
    make("cpu-twin", lambda p: write_cpu_twin(src, p, config.num_attention_heads, config.hidden_size))
    return made


def session(path: Path, opt: str):
    import onnxruntime as ort

    o = ort.SessionOptions()
    o.log_severity_level = 3
    o.enable_cpu_mem_arena = False  # a dozen sessions side by side: each keeps only what a run needs
    o.graph_optimization_level = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[opt]
    return ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])


def accuracy(sessions: dict, model, task: str, config) -> dict[str, dict]:
    """Per variant: the worst per-row cosine and scaled max abs over the accuracy shapes."""
    from export.validate import Shape, TorchReference, make_inputs

    ref = TorchReference(model, task)
    out = {name: {"min_row_cosine": 1.0, "scaled_max_abs": 0.0} for name in sessions}
    for shape in (Shape(3, 128, 2), Shape(1, 512)):
        feeds = make_inputs(shape, config.vocab_size, config.type_vocab_size)
        r = ref(shape, feeds)["last_hidden_state"].astype(np.float64)
        rows = feeds["attention_mask"].astype(bool)
        for name, sess in sessions.items():
            g = sess.run(["last_hidden_state"], feeds)[0].astype(np.float64)
            gr, rr = g[rows], r[rows]
            cos = (gr * rr).sum(-1) / (np.linalg.norm(gr, axis=-1) * np.linalg.norm(rr, axis=-1))
            out[name]["min_row_cosine"] = min(out[name]["min_row_cosine"], float(cos.min()))
            out[name]["scaled_max_abs"] = max(
                out[name]["scaled_max_abs"], float(np.abs(gr - rr).max() / np.abs(rr).max())
            )
    return out


def speed(sessions: dict, grid: list[tuple[int, int]], rounds: int, config) -> list[dict]:
    from export.validate import Shape, make_inputs

    rows = []
    names = list(sessions)
    for b, s in grid:
        feeds = make_inputs(Shape(b, s), config.vocab_size, config.type_vocab_size)
        times = {n: [] for n in names}
        for n in names:
            sessions[n].run(None, feeds)  # warm-up, excluded
        for r in range(rounds):
            for n in names[r % len(names) :] + names[: r % len(names)]:
                t = time.perf_counter()
                sessions[n].run(None, feeds)
                times[n].append(time.perf_counter() - t)
        base = statistics.median(times["fp32"])
        for n in names:
            med = statistics.median(times[n])
            rows.append(
                {
                    "variant": n,
                    "batch": b,
                    "seq": s,
                    "median_ms": 1e3 * med,
                    "min_ms": 1e3 * min(times[n]),
                    "max_ms": 1e3 * max(times[n]),
                    "speedup": base / med,
                }
            )
        print(
            f"{b}x{s}: " + ", ".join(f"{r['variant']} {r['speedup']:.2f}x" for r in rows[-len(names) :]),
            file=sys.stderr,
        )
    return rows


def build_parser() -> Parser:
    p = Parser(
        prog="scripts/bench_quant_cpu.py",
        description=__doc__.split("\n\n")[0],
        epilog="example: python scripts/bench_quant_cpu.py --build build/ckpt --model demo/ckpt.pt --rounds 3",
    )
    p.add_argument("--build", required=True, type=Path, help="export.build folder of the demo model")
    p.add_argument("--model", required=True, help="its checkpoint (the PyTorch reference)")
    p.add_argument("--stress-build", type=Path, help="export.build folder of the stress checkpoint (accuracy only)")
    p.add_argument("--stress-model", help="the stress checkpoint")
    add_output_flags(p, "bench_quant_cpu", "quant", work=True)
    p.add_argument("--rounds", type=int_arg(), default=7, help="interleaved rounds per shape")
    p.add_argument("--grid", default="1x128,8x128,1x512,8x512", help="BATCHxSEQ list")
    return p


def main(argv: list[str] | None = None) -> int:
    return cli.run(build_parser(), _main, argv)


def _main(args) -> int:
    for build in (args.build, args.stress_build):
        if build is not None and not (build / "model.onnx").is_file():
            raise UsageError(f"{build} has no model.onnx; pass a folder written by python -m export.build")
    if (args.stress_build is None) != (args.stress_model is None):
        raise UsageError("--stress-build and --stress-model go together")
    grid = [tuple(parse_int_list(g, what="--grid", lo=1, sep="x", max_items=2)) for g in args.grid.split(",")]
    if any(len(g) != 2 for g in grid):
        raise UsageError(f"--grid {args.grid!r}: expected BATCHxSEQ items, e.g. 1x128,8x512")
    from export.checkpoint.rebuild import load_checkpoint
    from export.passes.quantize.data import synthetic_set
    from export.stages.bench import host_description

    result = {"date": time.strftime("%Y-%m-%d"), "host": host_description(), "rounds": args.rounds, "checkpoints": {}}
    for label, build, ckpt_path in (("demo", args.build, args.model), ("stress", args.stress_build, args.stress_model)):
        if build is None:
            continue
        ck = load_checkpoint(ckpt_path, table_rows=max([512] + [s for _, s in grid]))  # every length measured
        src = build / ("model.rope-onnx.onnx" if (build / "model.rope-onnx.onnx").exists() else "model.onnx")
        calib = synthetic_set(ck.facts.vocab_size, ck.facts.type_vocab_size, 512)
        made = variants(src, args.work / label, calib, ck.config)
        sessions = {n: session(path, opt) for n, (path, opt) in made.items()}
        entry = {"source": src.name, "accuracy": accuracy(sessions, ck.model, ck.task, ck.config)}
        if label == "demo":
            entry["speed"] = speed(sessions, grid, args.rounds, ck.config)
        result["checkpoints"][label] = entry
        del sessions
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quant_cpu.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "quant_cpu.md").write_text(markdown(result))
    plot(result, args.out / "quant_cpu.png")
    print(args.out / "quant_cpu.md")
    return 0


def markdown(r: dict) -> str:
    lines = [f"# INT8 CPU twin ({r['date']}, {r['host']}, ONNX Runtime CPU, {r['rounds']} interleaved rounds)", ""]
    demo = r["checkpoints"].get("demo", {})
    if demo.get("speed"):
        lines += [
            "## Speed (demo model)",
            "",
            "| variant | batch x seq | median ms | min ms | max ms | speed-up vs fp32 |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {x['variant']} | {x['batch']}x{x['seq']} | {x['median_ms']:.0f} | {x['min_ms']:.0f} | "
            f"{x['max_ms']:.0f} | {x['speedup']:.2f} |"
            for x in demo["speed"]
        ]
        lines.append("")
    for label, entry in r["checkpoints"].items():
        lines += [
            f"## Accuracy ({label}: `{entry['source']}`, against PyTorch fp32)",
            "",
            "| variant | min per-row cosine | max abs / max abs of the reference |",
            "|---|---|---|",
        ]
        lines += [
            f"| {n} | {a['min_row_cosine']:.6f} | {a['scaled_max_abs']:.4f} |" for n, a in entry["accuracy"].items()
        ]
        lines.append("")
    return "\n".join(lines)


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    speed_rows = r["checkpoints"].get("demo", {}).get("speed") or []
    shapes = sorted({(x["batch"], x["seq"]) for x in speed_rows})
    names = list(dict.fromkeys(x["variant"] for x in speed_rows))
    fig, ax = plt.subplots(figsize=(10, 4.5))
    w = 0.8 / max(1, len(names))
    for i, n in enumerate(names):
        ys = [
            next(x["speedup"] for x in speed_rows if x["variant"] == n and (x["batch"], x["seq"]) == s) for s in shapes
        ]
        ax.bar([k + i * w for k in range(len(shapes))], ys, w, label=n)
    ax.set_xticks([k + 0.4 - w / 2 for k in range(len(shapes))], [f"{b}x{s}" for b, s in shapes])
    ax.set_ylabel("speed-up vs fp32 (median)")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.legend(fontsize=7, ncol=3)
    ax.set_title("INT8 CPU twin variants, ONNX Runtime CPU (demo model)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())

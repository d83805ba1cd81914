"""CPU speed of the demo model: PyTorch eager vs ONNX Runtime on the plain export, the `--rope onnx`
graph, and the limit (the same model exported with the rotation replaced by identity).

    python scripts/bench_export.py --model demo/ckpt.pt --seqs 128,512,2048 --reps 15

Runs are interleaved (one of each variant per round) so drift hits all alike; reports medians with
min/max and ratios to the rotary-free export, from one run, as JSON + Markdown + PNG in --out (default
build/scripts/bench_export/; --update-results: scripts/results/bench_export/). The graphs go to --work.
Lengths past the checkpoint's max_position_embeddings are measured as export.build serves them: the model is
loaded with a sinusoidal table of the longest length (the table is a formula).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from script_outputs import add_output_flags  # noqa: E402

from export.cli import entry as cli  # noqa: E402
from export.cli.entry import Parser  # noqa: E402
from export.inputs.numbers import int_arg, parse_int_list  # noqa: E402


def build_parser() -> Parser:
    p = Parser(
        prog="scripts/bench_export.py",
        description=__doc__.split("\n\n")[0],
        epilog="example: python scripts/bench_export.py --model demo/ckpt.pt --seqs 128,512,2048 --reps 15",
    )
    p.add_argument("--model", default="demo/ckpt.pt", help="checkpoint (python scripts/make_demo_checkpoint.py)")
    p.add_argument("--seqs", default="128,512,2048", help="sequence lengths, comma separated")
    p.add_argument("--batch", type=int_arg(1), default=1, help="sequences per call")
    p.add_argument("--reps", type=int_arg(1), default=15, help="interleaved rounds per sequence length")
    p.add_argument("--exporter", default="dynamo", choices=["dynamo", "torchscript"], help="torch.onnx exporter")
    add_output_flags(p, "bench_export", "bench_export", work=True)
    return p


def main(argv: list[str] | None = None) -> int:
    return cli.run(build_parser(), _main, argv)


def _main(args) -> int:
    from transformers.models.roformer import modeling_roformer

    from export.checkpoint.rebuild import load_checkpoint
    from export.onnx_export import export_onnx
    from export.stages.bench import host_description
    from export.stages.rope import rewrite_file
    from export.validate import Shape, make_inputs, ort_session

    seqs = parse_int_list(args.seqs, what="--seqs", lo=1)
    max_len = max(seqs)
    ck = load_checkpoint(args.model, table_rows=max_len)  # the eager model serves every length measured
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    export_onnx(ck.model, ck.task, work / "model.onnx", max_len, args.exporter)
    export_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    rewrite_file(work / "model.onnx", work / "model.rope-onnx.onnx", "onnx", ck.config, max_len, ck.task)
    rope_s = time.perf_counter() - t0

    original = modeling_roformer.RoFormerSelfAttention.__dict__["apply_rotary_position_embeddings"]  # the staticmethod
    identity = staticmethod(lambda pos, q, k, v=None: (q, k) if v is None else (q, k, v))
    modeling_roformer.RoFormerSelfAttention.apply_rotary_position_embeddings = identity
    try:  # the rotary-free limit: same weights, no rotation at all
        export_onnx(ck.model, ck.task, work / "model.norotary.onnx", max_len, args.exporter)
    finally:
        modeling_roformer.RoFormerSelfAttention.apply_rotary_position_embeddings = original

    sessions = {
        name: ort_session(work / f)
        for name, f in [
            ("ort-plain", "model.onnx"),
            ("ort-rope-onnx", "model.rope-onnx.onnx"),
            ("ort-no-rotary", "model.norotary.onnx"),
        ]
    }
    model = ck.model.float().eval()
    rows = []
    for s in seqs:
        inputs = make_inputs(Shape(args.batch, s), ck.facts.vocab_size, ck.facts.type_vocab_size)
        tin = {k: torch.from_numpy(v) for k, v in inputs.items()}
        runners = {name: (lambda sess=sess, inputs=inputs: sess.run(None, inputs)) for name, sess in sessions.items()}
        runners["torch-eager"] = lambda tin=tin: model(**tin)
        times = {name: [] for name in runners}
        with torch.no_grad():
            for fn in runners.values():
                fn()  # warm-up, excluded
            names = list(runners)
            for r in range(args.reps):
                for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate: no variant always first
                    fn = runners[name]
                    t = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t)
                print(f"S={s} round {r + 1}/{args.reps}", file=sys.stderr)
        base = statistics.median(times["ort-no-rotary"])
        for name, ts in times.items():
            med = statistics.median(ts)
            rows.append(
                {
                    "seq": s,
                    "batch": args.batch,
                    "variant": name,
                    "reps": len(ts),
                    "median_ms": med * 1e3,
                    "min_ms": min(ts) * 1e3,
                    "max_ms": max(ts) * 1e3,
                    "vs_no_rotary": med / base,
                }
            )
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": host_description(),
        "model": args.model,
        "exporter": args.exporter,
        "export_seconds": round(export_s, 2),
        "rope_pass_seconds": round(rope_s, 2),
        "rows": rows,
    }
    (out / "bench_export.json").write_text(json.dumps(result, indent=2) + "\n")
    md = [
        f"# CPU speed ({result['date']}, {result['machine']}, batch {args.batch}, {args.reps} interleaved rounds)",
        "",
        f"export ({args.exporter}): {result['export_seconds']} s; rotary pass (onnx): {result['rope_pass_seconds']} s",
        "",
        "| seq | variant | median ms | min ms | max ms | vs no-rotary |",
        "|---|---|---|---|---|---|",
    ]
    md += [
        f"| {r['seq']} | {r['variant']} | {r['median_ms']:.1f} | {r['min_ms']:.1f} | {r['max_ms']:.1f} | "
        f"{r['vs_no_rotary']:.3f} |"
        for r in rows
    ]
    (out / "bench_export.md").write_text("\n".join(md) + "\n")
    _plot(rows, out / "bench_export.png")
    print("\n".join(md))
    print(f"wrote {out}/bench_export.{{json,md,png}}", file=sys.stderr)
    return 0


def _plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    variants = sorted({r["variant"] for r in rows})
    seqs = sorted({r["seq"] for r in rows})
    fig, ax = plt.subplots(figsize=(7, 4))
    w = 0.8 / len(variants)
    for i, v in enumerate(variants):
        ys = [next(r["median_ms"] for r in rows if r["seq"] == s and r["variant"] == v) for s in seqs]
        ax.bar(np.arange(len(seqs)) + i * w, ys, w, label=v)
    ax.set_xticks(np.arange(len(seqs)) + w * (len(variants) - 1) / 2, [f"S={s}" for s in seqs])
    ax.set_ylabel("median latency (ms)")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())

"""Our INT8/FP8 graphs side by side with NVIDIA ModelOpt's ONNX PTQ, on the demo and the outlier stress checkpoint.

    python scripts/bench_quant.py --demo demo/ckpt.pt --stress stress/ckpt.pt

Per checkpoint: `python -m export.build --precision int8` and `--precision fp8` (ours, defaults: synthetic calibration,
max ranges, the fallback, fp16 high precision, on the rope-plugin graph), a `--rope onnx` fp32 build whose graph
ModelOpt quantizes (`scripts/modelopt_quantize.py` in ModelOpt's own environment: it cannot run our plugin graph)
with the same calibration batches our build used, ModelOpt's defaults otherwise. Every graph then runs in ONNX
Runtime (CPU) against PyTorch fp32 at the validation shapes (seed 0, padded rows) plus batch 3 x 128: per-row
cosine over non-padded tokens and the largest absolute error scaled by the reference's largest magnitude (the
report's statistics), and the Q/DQ placement per op type (how many nodes of each type read a dequantized tensor).
Writes quant_vs_modelopt.{json,md,png} into --out (default build/scripts/bench_quant/; --update-results:
scripts/results/quant/); the builds go to --work. Not part of .ci/run (about half an hour on 2 cores). Without
ModelOpt's venv it says so and exits 3 before any work.
"""

from __future__ import annotations

import collections
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from script_outputs import add_output_flags  # noqa: E402

from export.cli import entry as cli  # noqa: E402
from export.cli.entry import Parser  # noqa: E402
from export.errors import UnavailableError, UsageError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True, cwd=ROOT)


def export(ckpt: str, out: Path, *flags: str) -> Path:
    if not (out / "report.json").exists():
        run([sys.executable, "-m", "export.build", "--model", ckpt, "--out", str(out), "--max-len", "2048", *flags])
    return out


def calibration_npz(ckpt: str, path: Path) -> None:
    """The batches export.build's default (synthetic) calibration runs, for ModelOpt's reader."""
    from export.checkpoint.rebuild import inspect_checkpoint
    from export.passes.quantize.data import synthetic_set

    cfg = inspect_checkpoint(ckpt, None, False).config
    feeds = synthetic_set(cfg.vocab_size, cfg.type_vocab_size, 2048).batches()()
    np.savez(path, **{f"b{i}/{k}": v for i, f in enumerate(feeds) for k, v in f.items()})


def placement(path: Path) -> dict[str, int]:
    """Op type -> number of nodes of that type that read a DequantizeLinear output."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    dq = {o for n in m.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return dict(sorted(collections.Counter(n.op_type for n in m.graph.node if dq & set(n.input)).items()))


def accuracy(graphs: dict[str, tuple[Path, bool]], ckpt: str) -> dict[str, dict]:
    from export.checkpoint.rebuild import load_checkpoint
    from export.report.compare import error_stats, row_mask
    from export.validate import OnnxFile, Shape, TorchReference, make_inputs, ort_session, validation_shapes

    ck = load_checkpoint(ckpt, table_rows=2048)
    ref = TorchReference(ck.model, ck.task)
    shapes = validation_shapes(2048, ck.task) + [Shape(3, 128, 2)]
    feeds = {s: make_inputs(s, ck.facts.vocab_size, ck.facts.type_vocab_size) for s in shapes}
    refs = {s: ref(s, feeds[s])["last_hidden_state"] for s in shapes}
    out = {}
    for name, (path, plugin) in graphs.items():
        sess = ort_session(OnnxFile(path, rotary_function=plugin))
        rows = []
        for s in shapes:
            got = sess.run(["last_hidden_state"], feeds[s])[0]
            st = error_stats(got, refs[s], row_mask("last_hidden_state", got.shape, feeds[s]["attention_mask"]))
            rows.append(
                {
                    "shape": s.label(),
                    "row_cosine": st.row_cosine,
                    "scaled_error": st.scaled_error,
                    "max_abs": st.max_abs,
                }
            )
        out[name] = {
            "file": path.name,
            "cases": rows,
            "min_row_cosine": min(r["row_cosine"] for r in rows),
            "max_scaled_error": max(r["scaled_error"] for r in rows),
            "qdq_placement": placement(path),
        }
        print(
            f"{name}: row cosine {out[name]['min_row_cosine']:.6f}, scaled {out[name]['max_scaled_error']:.4f}",
            file=sys.stderr,
        )
        del sess
    return out


def checkpoint(label: str, ckpt: str, args) -> dict:
    work = args.work / label
    work.mkdir(parents=True, exist_ok=True)
    ours = {fmt: export(ckpt, work / f"ours-{fmt}", "--precision", fmt) for fmt in ("int8", "fp8")}
    base = export(ckpt, work / "rope-onnx", "--rope", "onnx", "--skip-validation")
    calibration_npz(ckpt, work / "calib.npz")
    seconds = {}
    for fmt in ("int8", "fp8"):
        dst = work / f"modelopt-{fmt}.onnx"
        if not dst.exists():
            t = time.perf_counter()
            run(
                [
                    args.modelopt_python,
                    "scripts/modelopt_quantize.py",
                    "--onnx",
                    str(base / "model.rope-onnx.onnx"),
                    "--calib",
                    str(work / "calib.npz"),
                    "--mode",
                    fmt,
                    "--out",
                    str(dst),
                ]
            )
            seconds[fmt] = round(time.perf_counter() - t, 1)
    graphs = {f"ours-{fmt}": (ours[fmt] / f"model.rope-plugin.{fmt}.onnx", True) for fmt in ("int8", "fp8")}
    graphs |= {f"modelopt-{fmt}": (work / f"modelopt-{fmt}.onnx", False) for fmt in ("int8", "fp8")}
    result = {"accuracy": accuracy(graphs, ckpt), "modelopt_seconds": seconds}
    for fmt in ("int8", "fp8"):
        q = json.loads((ours[fmt] / "report.json").read_text())["quantization"]
        result[f"ours-{fmt}"] = {
            "kept_high": q["kept_high"],
            "fallback": {k: q["fallback"].get(k) for k in ("passed", "budget", "high_flops_share", "reason")},
            "seconds": json.loads((ours[fmt] / "report.json").read_text())["timings"],
        }
    return result


def markdown(r: dict) -> str:
    lines = [
        f"# Ours vs ModelOpt {r['modelopt']} ONNX PTQ ({r['date']}, {r['host']})",
        "",
        "ONNX Runtime CPU against PyTorch fp32; shapes: the validation shapes at --max-len 2048 (B=1/3 x S=1/61, "
        "B=1 x 2048, padded rows) and B=3 x 128; per-row cosine over non-padded tokens (min over shapes), "
        "max |error| / max |reference| (max over shapes). Ours: the rope-plugin graph with its RoformerRotary "
        "function; ModelOpt: the rope-onnx graph (it cannot run the plugin graph). Same calibration batches.",
        "",
    ]
    for label, c in r["checkpoints"].items():
        lines += [
            f"## {label}",
            "",
            "| graph | min row cosine | max scaled error | kept high | Q/DQ readers per op type |",
            "|---|---|---|---|---|",
        ]
        for name, a in c["accuracy"].items():
            kept = len(c[name]["kept_high"]) if name in c else ""
            qdq = ", ".join(f"{k} {v}" for k, v in a["qdq_placement"].items())
            lines.append(f"| {name} | {a['min_row_cosine']:.6f} | {a['max_scaled_error']:.4f} | {kept} | {qdq} |")
        lines += [
            "",
            "| graph | " + " | ".join(x["shape"] for x in next(iter(c["accuracy"].values()))["cases"]) + " |",
            "|---|" + "---|" * len(next(iter(c["accuracy"].values()))["cases"]),
        ]
        for name, a in c["accuracy"].items():
            lines.append(
                f"| {name} | "
                + " | ".join(f"{x['row_cosine']:.5f} / {x['scaled_error']:.3f}" for x in a["cases"])
                + " |"
            )
        lines.append("")
    return "\n".join(lines)


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(r["checkpoints"]), figsize=(11, 4), squeeze=False)
    for ax, (label, c) in zip(axes[0], r["checkpoints"].items(), strict=True):
        names = list(c["accuracy"])
        ax.bar(
            names,
            [1 - c["accuracy"][n]["min_row_cosine"] for n in names],
            color=["tab:blue" if n.startswith("ours") else "tab:orange" for n in names],
        )
        ax.set_yscale("log")
        ax.set_title(f"{label}: 1 - min per-row cosine (lower is better)")
        ax.tick_params(axis="x", rotation=20)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def build_parser() -> Parser:
    p = Parser(
        prog="scripts/bench_quant.py",
        description=__doc__.split("\n\n")[0],
        epilog="example: python scripts/bench_quant.py --demo demo/ckpt.pt --stress stress/ckpt.pt",
    )
    p.add_argument("--demo", required=True, help="demo checkpoint")
    p.add_argument("--stress", help="outlier stress checkpoint (make_demo_checkpoint.py --outliers)")
    p.add_argument("--modelopt-python", default=".venv-modelopt/bin/python", help="python of ModelOpt's venv")
    add_output_flags(p, "bench_quant", "quant", work=True)
    return p


def main(argv: list[str] | None = None) -> int:
    return cli.run(build_parser(), _main, argv)


def _main(args) -> int:
    from export.stages.bench import host_description

    for ckpt in (args.demo, args.stress):
        if ckpt is not None and not Path(ckpt).exists():
            raise UsageError(f"{ckpt} does not exist; write it with python scripts/make_demo_checkpoint.py")
    probe = (
        subprocess.run(
            [args.modelopt_python, "-c", "import modelopt; print(modelopt.__version__)"], capture_output=True, text=True
        )
        if Path(args.modelopt_python).is_file()
        else None
    )
    if probe is None or probe.returncode != 0:
        raise UnavailableError(
            f"ModelOpt is not importable with {args.modelopt_python}; make its venv first "
            "(python3 -m venv .venv-modelopt && .venv-modelopt/bin/pip install 'nvidia-modelopt[onnx]==0.47.0') "
            "or pass --modelopt-python"
        )
    version = probe.stdout.strip()
    r = {"date": time.strftime("%Y-%m-%d"), "host": host_description(), "modelopt": version, "checkpoints": {}}
    for label, ckpt in (("demo", args.demo), ("stress", args.stress)):
        if ckpt:
            r["checkpoints"][label] = checkpoint(label, ckpt, args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quant_vs_modelopt.json").write_text(json.dumps(r, indent=2) + "\n")
    (args.out / "quant_vs_modelopt.md").write_text(markdown(r))
    plot(r, args.out / "quant_vs_modelopt.png")
    print(args.out / "quant_vs_modelopt.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Every family at every reduced precision: does its build pass the default gate, and by what margin?

    python scripts/check_family_precisions.py [--families gte,esm] [--size tiny|demo] [--update-results]
    python scripts/check_family_precisions.py --matrix [--families ...] [--update-results]

For each family (the six rotary families by default; `roformer` may be named too) a random-init checkpoint of its
tiny config (`--size demo`: its demo config, shaped like the real checkpoint; minutes per build) is written once with
scripts/make_demo_checkpoint.py's writers, then built four times with `export.build` as a user runs it (the dynamo
exporter at its default opset, `--rope plugin`, no engine: CPU only), once per precision fp16, bf16, int8, fp8,
at `--max-len` (96 tiny, 512 demo; validation at S = 1, 61 and --max-len, batch 1 and 3 with right padding).
jina-embeddings-v3's checkpoint is its original layout with five task adapters, built with `--task retrieval.query`.
Each build folder is judged by `engines.gate` with the default thresholds (export/report/thresholds.py), and for each
graph of that precision (the precision graph; int8's CPU twin too) the largest scaled error and the smallest row
cosine over every validated shape and output are recorded with the thresholds they were judged by.

Writes precisions.{json,md} (`--size demo`: precisions_demo.*) to --out (default build/scripts/check_family_precisions/;
--update-results: scripts/results/families/) with the date, the machine, the versions and the size; checkpoints and
builds go to --work. RANDOM WEIGHTS: these are the pipeline's numbers on random models, not a trained checkpoint's.

`--matrix` (fp32, the tiny size): per family x task head x rope mode (onnx, plugin), one `export.build` of an HF
checkpoint of that head (transformers' layout; jina-embeddings-v3's too), and from its report.json the rotary sites
found / rewritten / expected and, for the plain export and the rotary pass's graph, the largest scaled error and
smallest row cosine against HF fp32 at batch 1 and at batch 3 (two rows right-padded) over the validated lengths
(1, 61, --max-len 96: above ModernBERT's tiny window of 16). Writes matrix.{json,md}.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import platform
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from script_outputs import add_output_flags  # noqa: E402

from export.inputs.numbers import int_arg  # noqa: E402

PRECISIONS = ("fp16", "bf16", "int8", "fp8")
FAMILIES = ("modernbert", "gte", "nomic_bert", "eurobert", "esm", "jina_embeddings_v3")
MAX_LEN = {"tiny": 96, "demo": 512}
ADAPTER_TASK = "retrieval.query"  # the task built from a checkpoint that holds task adapters (jina-embeddings-v3)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scripts/check_family_precisions.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--families", default=",".join(FAMILIES), help="comma list of family names (export/families/)")
    p.add_argument("--precisions", default=",".join(PRECISIONS), help="comma list of reduced precisions")
    p.add_argument("--size", default="tiny", choices=sorted(MAX_LEN), help="the family's tiny or demo config")
    p.add_argument(
        "--max-len", type=int_arg(lo=2), default=None, help="export.build --max-len (default: 96 tiny, 512 demo)"
    )
    p.add_argument("--keep", action="store_true", help="keep the build folders under --work")
    p.add_argument("--matrix", action="store_true", help="fp32 per family x head x rope mode (tiny): matrix.{json,md}")
    p.add_argument("--render", action="store_true", help="only write the .md again from the .json in --out")
    add_output_flags(p, "check_family_precisions", "families", work=True)
    return p


def write_checkpoint(family: str, size: str, folder: Path) -> Path:
    """The family's random-init checkpoint, as make_demo_checkpoint.py writes it; reused when already complete."""
    from export.families.registry import by_name
    from tests.fixtures.checkpoints import write_demo
    from tests.fixtures.hf_checkpoints import write_hf
    from tests.fixtures.jina_original import write_original

    done = folder.with_name(folder.name + ".done")
    if not done.exists():
        shutil.rmtree(folder, ignore_errors=True)  # what an interrupted run of this script left
        tiny = size == "tiny"
        if family == "roformer":
            write_demo(folder, tiny=tiny)
        elif by_name(family).adopts is not None:
            write_original(folder, tiny=tiny)
        else:
            write_hf(folder, family, tiny=tiny)
        done.touch()
    return folder / "ckpt.pt" if family == "roformer" else folder


def graph_figures(cases: list[dict], precision: str) -> dict[str, dict]:
    """Per graph of `precision`: its worst scaled error and row cosine over every shape and output, the thresholds
    they were judged by, and whether every case passed."""
    by_graph: dict[str, dict] = {}
    for c in cases:
        if c["precision"] != precision:
            continue
        g = by_graph.setdefault(c["graph"], {"max_scaled_error": 0.0, "min_row_cosine": None, "passed": True})
        g["passed"] = g["passed"] and c["passed"]
        for o in c["outputs"].values():
            if "error" in o:
                g["error"] = o["error"]
                continue
            g["max_scaled_error"] = max(g["max_scaled_error"], o["scaled_error"])
            if o.get("row_cosine") is not None:  # outputs without rows (logits of a classifier) have none
                g["min_row_cosine"] = min(o["row_cosine"], g["min_row_cosine"] or 1.0)
            g["rtol"], g["min_row_cosine_threshold"] = o.get("rtol"), o.get("min_row_cosine")
    return by_graph


def build_one(ckpt: Path, out: Path, precision: str, max_len: int, family: str) -> dict:
    from engines.gate import main as gate
    from export.build import main as build
    from export.families.registry import by_name
    from export.report.persist import read_report

    argv = ["--model", str(ckpt), "--out", str(out), "--precision", precision, "--max-len", str(max_len)]
    if by_name(family).adopts is not None:
        argv += ["--task", ADAPTER_TASK]
    t0 = time.perf_counter()
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = build(argv)
    row: dict = {"exit": code, "seconds": round(time.perf_counter() - t0, 1)}
    if not (out / "report.json").exists():
        row["error"] = next((line for line in reversed(err.getvalue().splitlines()) if line.strip()), "")
        return row
    report = read_report(out)
    said = io.StringIO()
    with contextlib.redirect_stdout(said), contextlib.redirect_stderr(said):
        row["gate"] = gate([str(out)])
    row["gate_passed"] = row["gate"] == 0
    row["graphs"] = graph_figures(report.validation, precision)
    row["rewrite"] = {k: (report.rewrite or {}).get(k) for k in ("mode", "found", "rewritten", "expected")}
    fallback = (report.quantization or {}).get("fallback") or {}
    if fallback:  # int8 / fp8: the MatMuls the accuracy-driven fallback kept in high precision, of how many
        row["fallback"] = {"kept": len(fallback.get("kept") or []), "of": fallback.get("quantizable")}
        row["fallback"]["own_draws_passed"] = fallback.get("passed")
        ranking = fallback.get("ranking") or []  # each MatMul's own relative error with its inputs quantized
        row["fallback"]["most_sensitive"] = [{k: r.get(k) for k in ("node", "role", "error")} for r in ranking[:3]]
    return row


def matrix_row(ckpt: Path, out: Path, task: str, rope: str, max_len: int) -> dict:
    """One fp32 build of a head with a rope mode: sites, and per graph and batch the worst error against HF."""
    from export.build import main as build
    from export.report.persist import read_report

    argv = ["--model", str(ckpt), "--out", str(out), "--rope", rope, "--max-len", str(max_len)]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = build(argv)
    row: dict = {"task": task, "rope": rope, "exit": code}
    if not (out / "report.json").exists():
        row["error"] = next((line for line in reversed(err.getvalue().splitlines()) if line.strip()), "")
        return row
    report = read_report(out)
    row["sites"] = {k: (report.rewrite or {}).get(k) for k in ("found", "rewritten", "expected", "nodes")}
    row["seqs"] = sorted({c["seq"] for c in report.validation})
    row["graphs"] = {}
    for batch in (1, 3):
        cases = [c for c in report.validation if c["batch"] == batch]
        for graph, figures in graph_figures(cases, "fp32").items():
            row["graphs"][f"{graph} B={batch}"] = figures
    row["passed"] = all(c["passed"] for c in report.validation)
    return row


def run_matrix(args, families: list[str], max_len: int, work: Path) -> dict:
    from export.families.registry import by_name
    from tests.fixtures.hf_checkpoints import write_hf

    rows: dict[str, list[dict]] = {}
    for family in families:
        for task in by_name(family).heads:
            folder = work / f"{family}-{task}-ckpt"
            shutil.rmtree(folder, ignore_errors=True)
            write_hf(folder, family, task)
            for rope in ("onnx", "plugin"):
                out = work / f"{family}-{task}-{rope}"
                shutil.rmtree(out, ignore_errors=True)
                row = matrix_row(folder, out, task, rope, max_len)
                rows.setdefault(family, []).append(row)
                print(f"{family} {task} {rope}: exit {row['exit']}, sites {row.get('sites')}", flush=True)
                if not args.keep:
                    shutil.rmtree(out, ignore_errors=True)
                gc.collect()
    return rows


def render_matrix(results: dict) -> str:
    head = (
        f"# Every family x head x rope mode, fp32, tiny size ({results['date']})\n\n"
        f"{results['machine']}; {', '.join(f'{k} {v}' for k, v in results['versions'].items())}. "
        f"`export.build --rope MODE --max-len {results['max_len']}` (dynamo exporter, fp32) of a random-init HF "
        "checkpoint of each head; validated against transformers fp32 at S = 1, 61 and --max-len, batch 1 and batch 3 "
        "(two rows right-padded), every case judged by the default fp32 thresholds (scaled error <= 1e-05, row "
        "cosine >= 0.99999999995, i.e. 1 - row cosine <= 5e-11; `-`: outputs without token rows, such as logits). "
        "`onnx` is the plain export, `rope-MODE` the rotary pass's graph (`--rope plugin`: run through the plugin's "
        "ONNX-function lowering on the CPU).\n\n"
        "## Summary\n\n" + summary_table(results) + "\n## Every graph\n\n"
        "| family | head | rope | sites found / rewritten / expected | graph | batch | max scaled error | "
        "1 - min row cosine | passed |\n|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for fam, rows in results["families"].items():
        for r in rows:
            if "graphs" not in r:
                lines.append(
                    f"| {fam} | {r['task']} | {r['rope']} | exit {r['exit']}: {r.get('error', '')} | | | | | |"
                )
                continue
            s = r["sites"]
            sites = f"{s['found']} / {s['rewritten']} / {s['expected']}"
            for key, f in r["graphs"].items():
                graph, batch = key.split(" B=")
                cos = _cos(f["min_row_cosine"], ".1g", deficit=True)
                ok = "yes" if f["passed"] else "NO"
                lines.append(
                    f"| {fam} | {r['task']} | {r['rope']} | {sites} | `{graph}` | {batch} | "
                    f"{f['max_scaled_error']:.2g} | {cos} | {ok} |"
                )
    return head + "\n".join(lines) + "\n"


def _cos(value: float | None, fmt: str, deficit: bool = False) -> str:
    """A row cosine (or 1 - it) for the tables; "-" for a graph whose outputs have no rows to compare."""
    if value is None:
        return "-"
    return format(1 - value if deficit else value, fmt)


def summary_table(results: dict) -> str:
    """One row per family x head: sites found / rewritten / expected in both rope modes, and over the plain export and
    both rotary graphs the worst scaled error and row cosine at batch 1 and at batch 3 (padded): the families
    README's table."""
    lines = [
        "| family | head | sites (onnx; plugin) | batch 1: max scaled error, 1 - min row cosine | batch 3 padded: same "
        "| every case passed |",
        "|---|---|---|---|---|---|",
    ]
    for fam, rows in results["families"].items():
        for task in dict.fromkeys(r["task"] for r in rows):
            mine = [r for r in rows if r["task"] == task]
            if any("graphs" not in r for r in mine):
                lines.append(f"| {fam} | {task} | build failed: {[r.get('error') for r in mine]} | | | no |")
                continue
            sites = "; ".join(f"{r['sites']['found']}/{r['sites']['rewritten']}/{r['sites']['expected']}" for r in mine)
            worst = []
            for batch in ("1", "3"):
                figs = [f for r in mine for k, f in r["graphs"].items() if k.endswith(f"B={batch}")]
                cosines = [f["min_row_cosine"] for f in figs if f["min_row_cosine"] is not None]
                cos = _cos(min(cosines) if cosines else None, ".1g", deficit=True)
                worst.append(f"{max(f['max_scaled_error'] for f in figs):.2g}, {cos}")
            ok = "yes" if all(r["passed"] for r in mine) else "NO"
            lines.append(f"| {fam} | {task} | {sites} | {worst[0]} | {worst[1]} | {ok} |")
    return "\n".join(lines) + "\n"


def versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def render(results: dict) -> str:
    head = (
        f"# Reduced precisions per family, {results['size']} size ({results['date']})\n\n"
        f"{results['machine']}; {', '.join(f'{k} {v}' for k, v in results['versions'].items())}. "
        f"`export.build --precision P --max-len {results['max_len']}` (dynamo exporter, `--rope plugin`, no engine), "
        "judged by `engines.gate` with the default thresholds. RANDOM WEIGHTS (the family's "
        f"{results['size']} config): the pipeline's error on a random model, not a trained checkpoint's.\n\n"
        "`kept high`: the MatMuls the INT8/FP8 fallback left in fp16 of those it may quantize, and whether its own "
        "draws (not validation's; 80 % of each threshold) passed with them.\n\n"
        "| family | precision | build exit | gate | graph | max scaled error (limit) | min row cosine (limit) "
        "| kept high | s |\n|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for fam, rows in results["families"].items():
        for precision, r in rows.items():
            gate = "pass" if r.get("gate_passed") else "FAIL"
            if "graphs" not in r:
                lines.append(f"| {fam} | {precision} | {r['exit']} | - | {r.get('error', '')} | | | | {r['seconds']} |")
                continue
            for g, f in r["graphs"].items():
                err = f"{f['max_scaled_error']:.3g} ({f.get('rtol')})"
                cos = _cos(f["min_row_cosine"], ".7f") + f" ({f.get('min_row_cosine_threshold')})"
                fb = r.get("fallback")
                kept = f"{fb['kept']}/{fb['of']} ({'passed' if fb['own_draws_passed'] else 'not passed'})" if fb else ""
                lines.append(
                    f"| {fam} | {precision} | {r['exit']} | {gate} | `{g}` | {err} | {cos} | {kept} | {r['seconds']} |"
                )
    return head + "\n".join(lines) + "\n" + results.get("notes", "")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from export.families.registry import names
    from export.stages.bench import host_description

    families = [f for f in args.families.split(",") if f]
    precisions = [p for p in args.precisions.split(",") if p]
    unknown = [f for f in families if f not in names()] + [p for p in precisions if p not in PRECISIONS]
    if unknown:
        print(f"error: unknown family or precision {unknown}; families: {', '.join(names())}", file=sys.stderr)
        return 2
    if args.matrix and args.size != "tiny":
        print("error: --matrix builds the tiny size only (every head of every family); drop --size", file=sys.stderr)
        return 2
    stem = "matrix" if args.matrix else "precisions" if args.size == "tiny" else f"precisions_{args.size}"
    if args.render:
        path = Path(args.out) / f"{stem}.json"
        if not path.is_file():
            print(f"error: --render reads {path}, which does not exist; run the script first", file=sys.stderr)
            return 2
        results = json.loads(path.read_text())
        return write_results(Path(args.out), stem, results, (render_matrix if args.matrix else render)(results))
    max_len = args.max_len or MAX_LEN[args.size]
    work = Path(args.work) / args.size
    results = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": host_description(),
        "versions": versions(),
        "size": args.size,
        "max_len": max_len,
        "families": {},
    }
    if args.matrix:
        results["families"] = run_matrix(args, families, max_len, Path(args.work) / "matrix")
        return write_results(Path(args.out), "matrix", results, render_matrix(results))
    for family in families:
        ckpt = write_checkpoint(family, args.size, work / f"{family}-ckpt")
        for precision in precisions:
            out = work / f"{family}-{precision}"
            shutil.rmtree(out, ignore_errors=True)  # this script's own scratch build of an earlier run
            print(f"{family} {precision} ...", flush=True)
            row = build_one(ckpt, out, precision, max_len, family)
            results["families"].setdefault(family, {})[precision] = row
            print(f"{family} {precision}: exit {row['exit']}, gate {row.get('gate')}, {row['seconds']} s", flush=True)
            if not args.keep:
                shutil.rmtree(out, ignore_errors=True)
            gc.collect()
    return write_results(Path(args.out), stem, results, render(results))


def write_results(out_dir: Path, stem: str, results: dict, md: str) -> int:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.json").write_text(json.dumps(results, indent=1) + "\n")
    (out_dir / f"{stem}.md").write_text(md)
    print(out_dir / f"{stem}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())

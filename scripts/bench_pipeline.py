"""Wall time and peak RSS of `python -m export.build`, per stage and whole, at three model sizes.

    python scripts/bench_pipeline.py --out scripts/results/pipeline             # tiny, base, large
    python scripts/bench_pipeline.py --sizes base --base-ckpt demo/ckpt.pt --repeats 3

Sizes: tiny (2 layers, hidden 32, --max-len 64), base (the demo: 12 layers, hidden 768, --max-len 2048),
large (24 layers, hidden 1024, random init, --max-len 512). Each stage runs in a child process of its own
(export: load + torch.onnx export; pass: the rotary rewrite of that export; precision: the fp16 graph of
the rewrite; validation: load + ORT vs PyTorch on the plain, rewritten and fp16 graphs at the CLI's
shapes), so each stage's peak RSS is that child's own (`os.wait4`), interpreter and imports included.
The parent imports neither torch nor onnx: Linux counts a child's RSS before exec (its copy of the
parent) in the child's peak, so checkpoints are written and weighed by a child too.
`build` is the CLI's default run (export + pass + validation) and `pass-delta` the issue's measure of the
pass: peak and wall of `--rope plugin` minus `--rope none`, both `--skip-validation`. Medians of
`--repeats` runs. Writes pipeline.json, pipeline.md and pipeline.png (peak RSS against fp32 weight
bytes, with the goal line 2.5 x weights + 1 GB).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from export.numbers import int_arg  # noqa: E402

SIZES = {  # name -> (config overrides for tests.fixtures.checkpoints.demo_config, --max-len)
    "tiny": (
        dict(
            vocab_size=99,
            embedding_size=32,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=37,
            max_position_embeddings=64,
        ),
        64,
    ),
    "base": ({}, 2048),
    "large": (
        dict(
            embedding_size=1024, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096
        ),
        512,
    ),
}
STAGES = ("export", "pass", "precision", "validation")
CHILDREN = STAGES + ("prepare",)
GB = 1e9


def goal_bytes(weight_bytes: int) -> float:
    """Issue #15's goal for every stage and the whole run: 2.5 x the fp32 weights + 1 GB."""
    return 2.5 * weight_bytes + 1 * GB


# ---- children: one stage each ----------------------------------------------------------------------


def prepare(size: str, folder: Path, base_ckpt: str | None) -> dict:
    """Write the size's checkpoint (unless base uses a given one); its fp32 weight bytes and the host."""
    from export.stages.bench import host_description

    ckpt = make_checkpoint(size, folder, base_ckpt)
    return {"ckpt": str(ckpt), "weight_bytes": weight_bytes(ckpt), "host": host_description()}


def run_stage(stage: str, ckpt: Path, work: Path, max_len: int) -> dict:
    """Run one stage in this process; returns its own seconds (imports and checkpoint load excluded).
    The pass and precision stages need no PyTorch model, as in export.build after the export."""
    t0 = time.perf_counter()
    if stage == "precision":
        from export.passes.precision import write_precision_variants

        write_precision_variants(work / "model.rope-plugin.onnx", "fp16", work, stem="model.rope-plugin")
        return {"seconds": time.perf_counter() - t0}
    if stage == "pass":
        from export.stages.rope import rewrite_file

        config = _config_only(ckpt)
        t0 = time.perf_counter()
        rep = rewrite_file(work / "model.onnx", work / "model.rope-plugin.onnx", "plugin", config, max_len, "model")
        assert rep["coverage_error"] is None, rep["coverage_error"]
        return {"seconds": time.perf_counter() - t0}
    from export.checkpoint.rebuild import load_checkpoint
    from export.onnx_export import extend_rotary_table
    from export.validate import OnnxFile

    loaded = load_checkpoint(str(ckpt), None, False)
    t0 = time.perf_counter()
    if stage == "export":
        from export.onnx_export import export_onnx

        export_onnx(loaded.model, loaded.task, work / "model.onnx", max_len)
    elif stage == "validation":
        from export.report.thresholds import Thresholds
        from export.validate import TorchReference, failures, validate_graphs, validation_shapes

        extend_rotary_table(loaded.model, max_len)  # as export_onnx does before the CLI validates
        graphs = {
            "onnx": (OnnxFile(work / "model.onnx"), "fp32"),
            "rope-plugin": (OnnxFile(work / "model.rope-plugin.onnx", True), "fp32"),
            "rope-plugin.fp16": (OnnxFile(work / "model.rope-plugin.fp16.onnx", True), "fp16"),
        }
        cases = validate_graphs(
            graphs,
            TorchReference(loaded.model, loaded.task),
            validation_shapes(max_len, loaded.task),
            Thresholds.defaults(),
            loaded.config.vocab_size,
            loaded.config.type_vocab_size,
        )
        assert not failures(cases), failures(cases)
    return {"seconds": time.perf_counter() - t0}


def _config_only(ckpt: Path):
    """The RoFormer config of a canonical {config, state_dict} checkpoint, weights left on disk (mmap)."""
    import torch
    from transformers import RoFormerConfig

    state = torch.load(str(ckpt), map_location="cpu", mmap=True, weights_only=True)
    return RoFormerConfig.from_dict(state["config"])


# ---- parent ------------------------------------------------------------------------------------------


def measure(cmd: list[str]) -> dict:
    """Run `cmd`; its wall seconds, peak RSS (bytes, from the kernel's rusage of that child) and stdout."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)  # reap it ourselves: wait4 returns this child's rusage
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err.read().decode()[-3000:]}")
        return {"wall": wall, "peak_rss": usage.ru_maxrss * 1024, "stdout": out.read().decode()}


def make_checkpoint(size: str, folder: Path, base_ckpt: str | None) -> Path:
    if size == "base" and base_ckpt:
        return Path(base_ckpt)
    from tests.fixtures.checkpoints import demo_config, make_model, save_canonical

    overrides, _ = SIZES[size]
    path = folder / f"{size}.pt"
    if not path.exists():
        save_canonical(make_model(demo_config(**overrides)), path)
    return path


def weight_bytes(ckpt: Path) -> int:
    import torch

    state = torch.load(str(ckpt), map_location="cpu", weights_only=True)
    sd = state.get("state_dict", state)
    return sum(t.numel() * t.element_size() for t in sd.values() if hasattr(t, "numel"))


def bench_size(size: str, ckpt: Path, work: Path, repeats: int, with_delta: bool) -> dict:
    _, max_len = SIZES[size]
    me = [sys.executable, str(Path(__file__).resolve())]
    rows: dict[str, dict] = {}
    for rep in range(repeats):
        for stage in STAGES:
            m = measure(me + ["--child", stage, "--ckpt", str(ckpt), "--work", str(work), "--max-len", str(max_len)])
            m["stage_seconds"] = json.loads(m.pop("stdout").strip().splitlines()[-1])["seconds"]
            rows.setdefault(stage, {"runs": []})["runs"].append(m)
            print(
                f"{size} {stage} #{rep + 1}: {m['stage_seconds']:.1f} s, peak {m['peak_rss'] / GB:.2f} GB",
                file=sys.stderr,
            )
        cli = [sys.executable, "-m", "export.build", "--model", str(ckpt), "--max-len", str(max_len)]
        runs = {"build": []} | ({"rope-none": [], "rope-plugin": []} if with_delta else {})
        for name in runs:
            extra = {
                "build": [],
                "rope-none": ["--rope", "none", "--skip-validation"],
                "rope-plugin": ["--skip-validation"],
            }[name]
            out = work / f"cli-{name}"
            shutil.rmtree(out, ignore_errors=True)
            m = measure(cli + ["--out", str(out)] + extra)
            m.pop("stdout")
            if name == "build":
                m["disk_bytes"] = sum(f.stat().st_size for f in out.iterdir() if f.suffix in (".onnx", ".data"))
                m["report_timings"] = json.loads((out / "report.json").read_text()).get("timings")
            rows.setdefault(name, {"runs": []})["runs"].append(m)
            print(f"{size} {name} #{rep + 1}: {m['wall']:.1f} s, peak {m['peak_rss'] / GB:.2f} GB", file=sys.stderr)
            shutil.rmtree(out, ignore_errors=True)
    for row in rows.values():
        for key in ("wall", "peak_rss", "stage_seconds"):
            vals = [r[key] for r in row["runs"] if key in r]
            if vals:
                row[key] = statistics.median(vals)
                row[f"{key}_range"] = [min(vals), max(vals)]
    if with_delta:
        rows["pass-delta"] = {
            "wall": rows["rope-plugin"]["wall"] - rows["rope-none"]["wall"],
            "peak_rss": rows["rope-plugin"]["peak_rss"] - rows["rope-none"]["peak_rss"],
        }
    return {"max_len": max_len, "rows": rows}


def render(results: dict) -> str:
    lines = [
        f"# Pipeline cost per stage ({results['date']}, {results['host']})",
        "",
        f"Medians of {results['repeats']} runs (range in brackets); peak RSS of a child process per stage "
        "(interpreter, imports and checkpoint load included). Goal (issue #15): every peak <= 2.5 x fp32 "
        "weight bytes + 1 GB.",
        "",
        "| size | fp32 weights | goal | stage | wall s | stage s | peak RSS GB | within goal |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for size, r in results["sizes"].items():
        w, goal = r["weight_bytes"], goal_bytes(r["weight_bytes"])
        for stage, row in r["rows"].items():
            if stage in ("rope-none", "rope-plugin", "pass-delta"):
                continue
            rng = row.get("peak_rss_range", [row["peak_rss"]] * 2)
            stage_s = f"{row['stage_seconds']:.1f}" if "stage_seconds" in row else ""
            lines.append(
                f"| {size} (max-len {r['max_len']}) | {w / GB:.2f} GB | {goal / GB:.2f} GB | {stage} | "
                f"{row['wall']:.1f} [{row['wall_range'][0]:.1f}-{row['wall_range'][1]:.1f}] | {stage_s} | "
                f"{row['peak_rss'] / GB:.2f} [{rng[0] / GB:.2f}-{rng[1] / GB:.2f}] | "
                f"{'yes' if row['peak_rss'] <= goal else 'NO'} |"
            )
    for size, r in results["sizes"].items():
        rows = r["rows"]
        if "pass-delta" in rows:
            d = rows["pass-delta"]
            lines += [
                "",
                f"**{size}: the rotary pass's own cost** (`--rope plugin` minus `--rope none`, both "
                f"`--skip-validation`, medians): +{d['wall']:.1f} s wall, {d['peak_rss'] / 1e6:+.0f} MB peak "
                f"(none: {rows['rope-none']['wall']:.1f} s, {rows['rope-none']['peak_rss'] / GB:.2f} GB; "
                f"plugin: {rows['rope-plugin']['wall']:.1f} s, {rows['rope-plugin']['peak_rss'] / GB:.2f} GB).",
            ]
        if "build" in rows and "disk_bytes" in rows["build"]["runs"][0]:
            lines += [
                "",
                f"**{size}: disk**: the default build writes "
                f"{rows['build']['runs'][0]['disk_bytes'] / GB:.2f} GB of .onnx/.data files.",
            ]
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    sizes = results["sizes"]
    xs = [r["weight_bytes"] / GB for r in sizes.values()]
    for stage in STAGES + ("build",):
        ys = [r["rows"][stage]["peak_rss"] / GB for r in sizes.values() if stage in r["rows"]]
        if len(ys) == len(xs):
            ax.plot(xs, ys, marker="o", label=stage)
    gx = [0, max(xs) * 1.05]
    ax.plot(gx, [goal_bytes(x * GB) / GB for x in gx], "k--", label="goal 2.5 x w + 1 GB")
    for name, x in zip(sizes, xs, strict=True):
        ax.annotate(name, (x, 0), textcoords="offset points", xytext=(0, 4), ha="center", fontsize=8)
    ax.set_xlabel("fp32 weight bytes (GB)")
    ax.set_ylabel("peak RSS (GB)")
    ax.set_title(f"export.build peak RSS per stage ({results['date']})")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="tiny,base,large", help="comma list of tiny, base, large")
    p.add_argument("--base-ckpt", help="use this checkpoint for base (e.g. demo/ckpt.pt) instead of writing one")
    p.add_argument("--repeats", type=int_arg(), default=3, help="runs per measurement; medians are reported")
    p.add_argument("--delta-sizes", default="base", help="sizes that also get the pass-delta runs")
    p.add_argument("--out", default="scripts/results/pipeline", help="folder for pipeline.{json,md,png}")
    p.add_argument("--work", help="scratch folder (default: a temp folder, removed at the end)")
    p.add_argument("--child", choices=CHILDREN, help=argparse.SUPPRESS)
    p.add_argument("--size", help=argparse.SUPPRESS)
    p.add_argument("--ckpt", help=argparse.SUPPRESS)
    p.add_argument("--max-len", type=int_arg(), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child == "prepare":
        print(json.dumps(prepare(args.size, Path(args.work), args.base_ckpt)))
        return 0
    if args.child:
        print(json.dumps(run_stage(args.child, Path(args.ckpt), Path(args.work), args.max_len)))
        return 0
    scratch = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    results = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "host": "",
        "cores": os.cpu_count(),
        "repeats": args.repeats,
        "sizes": {},
    }
    me = [sys.executable, str(Path(__file__).resolve())]
    try:
        for size in [s.strip() for s in args.sizes.split(",") if s.strip()]:
            work = scratch / size
            work.mkdir(parents=True, exist_ok=True)
            prep = json.loads(
                measure(
                    me
                    + ["--child", "prepare", "--size", size, "--work", str(scratch)]
                    + (["--base-ckpt", args.base_ckpt] if args.base_ckpt else [])
                )["stdout"]
                .strip()
                .splitlines()[-1]
            )
            results["host"] = prep["host"]
            r = bench_size(size, Path(prep["ckpt"]), work, args.repeats, size in args.delta_sizes.split(","))
            results["sizes"][size] = {"weight_bytes": prep["weight_bytes"], **r}
            shutil.rmtree(work, ignore_errors=True)
    finally:
        if not args.work:
            shutil.rmtree(scratch, ignore_errors=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pipeline.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "pipeline.md").write_text(render(results))
    plot(results, out / "pipeline.png")
    print(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Latency / throughput benchmark over a (batch, seq) grid: TensorRT engine vs PyTorch vs ONNX Runtime.

In:  a checkpoint (PyTorch backends; any format export.build takes), an ONNX file (ORT), optionally a plan + plugin
     library (TensorRT), a grid `--batch 1,8 --seq 128,512`, iterations and warm-up counts.
Out: `<out>/bench.json` (every measurement), `bench.md` (table), `bench.png` (p50 latency per backend).

Backends: `trt` (TensorRT + GPU only), `torch-fp32` (CUDA if available, else CPU), `torch-fp16` (GPU
only), `torch-compile` (opt-in, `torch.compile(dynamic=True)`; first-call compile time reported apart
as compile_s), `ort` (CUDAExecutionProvider when available, else CPU). Warm-up runs are excluded;
on GPU each timed call ends with torch.cuda.synchronize(). On a CPU-only machine ORT/CPU and PyTorch
CPU run, so the report is never empty. Before the first timed run it says what it will run and about how long
that takes here, and names each point as it starts (a line per point off a terminal). Not part of CI.
"""

from __future__ import annotations

import copy
import json
import logging
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypedDict

import numpy as np

from engines.tensorrt.availability import engine_stage_status
from engines.tensorrt.graph import input_axes
from engines.tensorrt.runner import EngineRunner
from export.checkpoint.rebuild import load_checkpoint
from export.cli import entry as cli
from export.cli.entry import Parser
from export.errors import EXIT_OK, UsageError
from export.folder.atomic import write_atomic
from export.inputs.numbers import int_arg, parse_int_list
from export.progress import info, steps
from export.validate import Shape, fp32_eval_on, make_inputs

log = logging.getLogger(__name__)
BACKENDS = ("trt", "torch-fp32", "torch-fp16", "torch-compile", "ort")


@dataclass
class BenchResult:
    backend: str
    device: str
    batch: int
    seq: int
    iters: int
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    mean_ms: float | None = None
    throughput_seq_s: float | None = None  # sequences (batch rows) per second at p50
    compile_s: float | None = None
    skipped: str | None = None


class Percentiles(TypedDict):
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float


def percentiles(times_ms: Sequence[float]) -> Percentiles:
    a = np.asarray(times_ms, dtype=np.float64)
    return {
        "p50_ms": float(np.percentile(a, 50)),
        "p90_ms": float(np.percentile(a, 90)),
        "p99_ms": float(np.percentile(a, 99)),
        "mean_ms": float(a.mean()),
    }


def time_calls(
    fn: Callable[[], object], iters: int, warmup: int, sync: Callable[[], None] | None = None
) -> list[float]:
    """Wall time of `iters` calls in ms after `warmup` untimed calls; `sync` (e.g. cuda.synchronize) after each."""
    sync = sync or (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    out = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        sync()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def _torch_backend(model, name: str, device: str):
    import torch

    m = fp32_eval_on(model, torch.device(device))  # the caller's model is never moved or converted
    if name == "torch-fp16":  # .half() converts in place: the fp32 backend may share `m`, so copy first
        m = copy.deepcopy(m).half()
    run: Callable[..., object] = torch.compile(m, dynamic=True) if name == "torch-compile" else m

    def make(feeds):
        t = {k: torch.from_numpy(v).to(device) for k, v in feeds.items()}

        def call():
            with torch.inference_mode():
                return run(**t)

        return call

    return make


def _ort_backend(onnx_path: str | Path):
    import onnxruntime as ort

    cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]
    sess = ort.InferenceSession(str(onnx_path), providers=providers)

    def make(feeds):
        return lambda: sess.run(None, dict(feeds))

    return make, ("cuda" if cuda else "cpu")


def make_backends(
    backends: Sequence[str], *, model=None, onnx_path=None, plan=None, plugin_lib=None
) -> dict[str, tuple[Callable | None, str, str | None]]:
    """backend -> (make(feeds) -> call, device, why it cannot run here or None)."""
    try:
        import torch

        gpu = torch.cuda.is_available()
    except ImportError:
        gpu = False
    device = "cuda" if gpu else "cpu"
    makers: dict[str, tuple[Callable | None, str, str | None]] = {}
    for b in backends:
        if b not in BACKENDS:
            raise UsageError(f"unknown backend {b!r}; choose from {', '.join(BACKENDS)}")
        if b == "trt":
            st = engine_stage_status()
            if st["status"] != "available" or not plan:
                makers[b] = (None, "cuda", st.get("reason") or "no --plan given")
            else:
                r = EngineRunner(plan, plugin_lib)
                makers[b] = (lambda feeds, r=r: lambda: r.run_torch(feeds), "cuda", None)
        elif b.startswith("torch"):
            if model is None:
                makers[b] = (None, device, "no checkpoint given")
            elif b == "torch-fp16" and not gpu:
                makers[b] = (None, "cpu", "fp16 PyTorch is only measured on a GPU")
            else:
                makers[b] = (_torch_backend(model, b, device), device, None)
        elif b == "ort":
            if onnx_path is None:
                makers[b] = (None, "cpu", "no --onnx given")
            else:
                mk, dev = _ort_backend(onnx_path)
                makers[b] = (mk, dev, None)
    return makers


def sequence_cost(config, batch: int, seq: int) -> float:
    """Relative cost of one forward pass: an encoder's FLOPs (per layer and token 8h^2 + 4hi for the projections and
    the FFN, 4sh for the attention scores and their product with V), or tokens when the config is unknown."""
    if config is None:
        return float(batch * seq)
    h, i = config.hidden_size, config.intermediate_size
    return float(batch * seq * config.num_hidden_layers * (8 * h * h + 4 * h * i + 4 * seq * h))


def estimate_seconds(
    points: Sequence[tuple[str, int, int]], probe: Callable[[str, int, int], float], runs: int, config=None
) -> dict[tuple[str, int, int], float]:
    """Seconds each (backend, batch, seq) point will take for `runs` calls: `probe(backend, batch, seq)` times one
    call of each backend at its cheapest point, scaled to the others by sequence_cost."""
    out: dict[tuple[str, int, int], float] = {}
    for backend in dict.fromkeys(b for b, _, _ in points):
        mine = [p for p in points if p[0] == backend]
        _, b0, s0 = min(mine, key=lambda p: sequence_cost(config, p[1], p[2]))
        per_cost = probe(backend, b0, s0) / sequence_cost(config, b0, s0)
        out.update({p: runs * per_cost * sequence_cost(config, p[1], p[2]) for p in mine})
    return out


def duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def run_bench(
    grid: Sequence[tuple[int, int]],
    *,
    model=None,
    onnx_path=None,
    plan=None,
    plugin_lib=None,
    backends: Sequence[str] = ("trt", "torch-fp32", "torch-fp16", "ort"),
    iters: int = 50,
    warmup: int = 10,
    vocab_size: int = 1000,
    type_vocab_size: int | None = 2,  # None: the model has no token_type_ids input
    choices: int | None = None,
    input_names: Sequence[str] | None = None,
    config=None,
) -> list[BenchResult]:
    """Measure every backend at every (batch, seq); a backend that cannot run here yields `skipped` rows. Before the
    first timed run it prints what it will run and about how long that takes here (estimate_seconds; config: the
    model's, for sequence_cost), then names each point as it starts."""
    import torch  # a dependency (export.validate imports it too)

    sync = torch.cuda.synchronize if torch.cuda.is_available() else None
    makers = make_backends(backends, model=model, onnx_path=onnx_path, plan=plan, plugin_lib=plugin_lib)

    def feeds_for(backend: str, bs: int, seq: int) -> dict:
        feeds = make_inputs(Shape(bs, seq, 0, choices), vocab_size, type_vocab_size)
        if input_names is not None:
            feeds = {k: v for k, v in feeds.items() if k in input_names}
        return {k: torch.from_numpy(v).cuda() for k, v in feeds.items()} if backend == "trt" else feeds

    def probe(backend: str, bs: int, seq: int) -> float:
        make = makers[backend][0]
        assert make is not None, "only the runnable points are probed"
        call = make(feeds_for(backend, bs, seq))
        return min(time_calls(call, 2, 0, sync if makers[backend][1] == "cuda" else None)) / 1e3

    points = [(b, bs, s) for b in backends for bs, s in grid]
    runnable = [p for p in points if makers[p[0]][0] is not None and p[0] != "torch-compile"]
    est = estimate_seconds(runnable, probe, iters + warmup, config)
    skipped = sorted({b for b, (mk, _, _) in makers.items() if mk is None})
    info(
        f"benchmark: {len(grid)} shapes x {len(backends) - len(skipped)} backends"
        + (f" ({', '.join(skipped)} cannot run here)" if skipped else "")
        + f", {iters} timed + {warmup} warm-up runs each: about {duration(sum(est.values()))} here"
        + (" plus torch.compile's compile time" if "torch-compile" in backends else "")
        + " (one run per backend at its smallest shape, scaled by FLOPs)"
    )
    results = []

    def describe(p: tuple[str, int, int]) -> str:
        return f"bench {p[0]} {p[1]}x{p[2]}" + (f" (about {duration(est[p])})" if p in est else "")

    for backend, bs, seq in steps(points, describe):
        make, dev, why = makers[backend]
        if make is None:
            results.append(BenchResult(backend, dev, bs, seq, 0, skipped=why))
            continue
        call = make(feeds_for(backend, bs, seq))
        compile_s = None
        if backend == "torch-compile":
            t0 = time.perf_counter()
            call()
            if sync:
                sync()
            compile_s = time.perf_counter() - t0
        times = time_calls(call, iters, warmup, sync if dev == "cuda" else None)
        p = percentiles(times)
        results.append(
            BenchResult(backend, dev, bs, seq, iters, **p, throughput_seq_s=bs * 1e3 / p["p50_ms"], compile_s=compile_s)
        )
    return results


def to_markdown(results: Sequence[BenchResult], meta: Mapping | None = None) -> str:
    lines = ["# roformer-trt benchmark", ""]
    for k, v in (meta or {}).items():
        lines.append(f"- {k}: {v}")
    lines += [
        "",
        "| backend | device | batch | seq | p50 ms | p90 ms | p99 ms | seq/s | compile s | note |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def f(x, fmt=".3f"):
        return "" if x is None else format(x, fmt)

    for r in results:
        lines.append(
            f"| {r.backend} | {r.device} | {r.batch} | {r.seq} | {f(r.p50_ms)} | {f(r.p90_ms)} | "
            f"{f(r.p99_ms)} | {f(r.throughput_seq_s, '.1f')} | {f(r.compile_s, '.1f')} | {r.skipped or ''} |"
        )
    return "\n".join(lines) + "\n"


def plot(results: Sequence[BenchResult], path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for backend in dict.fromkeys(r.backend for r in results):
        rows = [  # (shape, p50, p90, device) of the measured points: a measured point has every percentile
            (f"{r.batch}x{r.seq}", r.p50_ms, r.p90_ms, r.device)
            for r in results
            if r.backend == backend and r.p50_ms is not None and r.p90_ms is not None
        ]
        if not rows:
            continue
        ax.errorbar(
            [x for x, _, _, _ in rows],
            [p50 for _, p50, _, _ in rows],
            yerr=[[0.0] * len(rows), [p90 - p50 for _, p50, p90, _ in rows]],
            marker="o",
            capsize=3,
            label=f"{backend} ({rows[0][3]})",
        )
    ax.set_xlabel("batch x sequence")
    ax.set_ylabel("latency ms (p50, bar to p90)")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_results(results: Sequence[BenchResult], out_dir: str | Path, meta: Mapping | None = None) -> dict[str, str]:
    """bench.json / bench.md / bench.png under out_dir (atomic writes); returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "bench.json", "markdown": out / "bench.md", "plot": out / "bench.png"}
    write_atomic(
        paths["json"], json.dumps({"meta": dict(meta or {}), "results": [asdict(r) for r in results]}, indent=2)
    )
    write_atomic(paths["markdown"], to_markdown(results, meta))
    tmp = out / ".bench.tmp.png"
    plot(results, tmp)
    tmp.replace(paths["plot"])
    return {k: str(v) for k, v in paths.items()}


def _ints(text: str, flag: str) -> list[int]:
    """Comma-separated sizes of the grid, each from 1 to INT32_MAX (TensorRT dimensions are int32)."""
    return parse_int_list(text, what=flag, lo=1, hi=2**31 - 1)


def build_parser() -> Parser:
    p = Parser(
        prog="scripts/bench_engines.py",
        description=__doc__.split("\n\n")[0],
        epilog="example: python scripts/bench_engines.py --checkpoint demo/ckpt.pt --onnx build/ckpt/model.onnx "
        "--batch 1,8 --seq 128,512 (add --plan build/ckpt/model.fp16.plan --plugin-lib "
        "plugins/build/libroformer_trt_plugin.so where TensorRT and a GPU are)",
    )
    p.add_argument("--checkpoint", help="checkpoint for the PyTorch backends (any format export.build takes)")
    p.add_argument("--onnx", help="ONNX file for ONNX Runtime")
    p.add_argument("--plan", help="TensorRT plan (engines.build output)")
    p.add_argument("--plugin-lib", help="plugin library the plan was built with")
    p.add_argument("--batch", default="1,8", help="batch sizes of the grid")
    p.add_argument("--seq", default="128,512", help="sequence lengths of the grid")
    p.add_argument("--backends", default="trt,torch-fp32,torch-fp16,ort", help=f"subset of {','.join(BACKENDS)}")
    p.add_argument("--compile", action="store_true", help="also measure torch.compile(dynamic=True) (slow to compile)")
    p.add_argument("--iters", type=int_arg(1, 10**6), default=50, help="timed iterations per point")
    p.add_argument("--warmup", type=int_arg(0, 10**6), default=10, help="untimed warm-up iterations per point")
    p.add_argument("--out", default="build/bench", help="output folder for bench.json/.md/.png")
    return p


def main(argv: list[str] | None = None) -> int:
    return cli.run(build_parser(), _main, argv)


def _main(args) -> int:
    grid = [(b, s) for b in _ints(args.batch, "--batch") for s in _ints(args.seq, "--seq")]
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if args.compile and "torch-compile" not in backends:
        backends.append("torch-compile")
    model, vocab = None, 1000
    types: int | None = 2  # the token-type table's rows; None: the checkpoint's family has no token_type_ids
    if args.checkpoint:  # loaded as export.build loads it: checked, safe, its family's inputs, a table long enough
        ck = load_checkpoint(args.checkpoint, table_rows=max(s for _, s in grid))
        model, vocab, types = ck.model, ck.facts.vocab_size, ck.facts.type_vocab_size
    names = None
    if args.onnx:
        import onnx

        names = list(input_axes(onnx.load(args.onnx, load_external_data=False)))
    results = run_bench(
        grid,
        model=model,
        onnx_path=args.onnx,
        plan=args.plan,
        plugin_lib=args.plugin_lib,
        backends=backends,
        iters=args.iters,
        warmup=args.warmup,
        vocab_size=vocab,
        type_vocab_size=types,
        input_names=names,
        config=getattr(model, "config", None),
    )
    meta = {
        "iters": args.iters,
        "warmup": args.warmup,
        "checkpoint": args.checkpoint,
        "onnx": args.onnx,
        "plan": args.plan,
    }
    try:
        import torch

        meta["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU)"
        meta["torch"] = torch.__version__
    except ImportError:
        pass
    paths = write_results(results, args.out, meta)
    print(json.dumps(paths))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

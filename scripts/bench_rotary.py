"""Benchmark the RoformerRotary CUDA kernel against HF eager, torch.compile and a same-bytes copy.

Times, on one CUDA GPU, the rotation of q and k ([B, H, S, Dh], fp16 by default) by:
  - ours:     libroformer_rotary_kernels.so (one launch for q and k, sin/cos from the fp32 table);
  - hf_eager: transformers' RoFormerSelfAttention.apply_rotary_position_embeddings (sinusoidal_pos in the dtype);
  - compiled: torch.compile of that same function;
  - copy:     a device-to-device copy of the same number of bytes (read + write of q and k): the bandwidth limit.
Before timing, the kernel's output is checked bit for bit against export.reference.roformer_rotary_ref (exit 1
on a mismatch). Each method: warm-up, then per-iteration CUDA events on the current stream; medians with
p10/p90. Writes bench_rotary.json, bench_rotary.md and bench_rotary.png (sweep over S) to --out.

Exit codes (export/cli/entry.py): 0 ok; 1 correctness check failed; 2 library missing / bad arguments; 3 no CUDA device.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout: the project's packages

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers.models.roformer.modeling_roformer import RoFormerSelfAttention  # noqa: E402

from export.cli import entry as cli  # noqa: E402
from export.cli.entry import Parser  # noqa: E402
from export.errors import EXIT_OK, UnavailableError, UsageError, VerificationError  # noqa: E402
from export.folder.atomic import write_atomic  # noqa: E402
from export.inputs.numbers import int_arg  # noqa: E402
from export.reference import bf16_round, roformer_rotary_ref, sincos_table  # noqa: E402
from plugins import locate  # noqa: E402
from plugins.identity import DTYPE_CODES, KERNEL_LIB  # noqa: E402
from plugins.identity import LAYOUT_INTERLEAVED as INTERLEAVED  # noqa: E402

METHODS = ("ours", "hf_eager", "compiled", "copy")
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}  # --dtype -> plugins.identity.DTYPE_CODES key


def build_parser() -> Parser:
    p = Parser(
        prog="scripts/bench_rotary.py",
        description=__doc__.split("\n")[0],
        epilog="example: python scripts/bench_rotary.py --seqs 256 1024 2048",
    )
    p.add_argument(
        "--out", type=Path, default=Path("build/scripts/bench_rotary"), help="folder for JSON, Markdown and PNG"
    )
    p.add_argument("--lib", type=Path, default=None, help="libroformer_rotary_kernels.so (default: plugins.locate)")
    p.add_argument("--batch", type=int_arg(), default=8, help="B")
    p.add_argument("--heads", type=int_arg(), default=12, help="H")
    p.add_argument("--seq", type=int_arg(), default=2048, help="S of the headline measurement")
    p.add_argument("--head-dim", type=int_arg(), default=64, help="Dh (= R)")
    p.add_argument("--seqs", type=int_arg(), nargs="+", default=[128, 256, 512, 1024, 2048, 4096], help="S sweep")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp16", help="q/k dtype")
    p.add_argument("--warmup", type=int_arg(), default=25, help="untimed iterations per method")
    p.add_argument("--iters", type=int_arg(), default=200, help="timed iterations per method")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    return p


def load_kernel(path: Path):
    lib = ctypes.CDLL(str(path))
    # (dtype, interleaved, k, x, y, sincos, B, H[k], S, Dh, R, P, stream)
    lib.roformer_rotary_launch.restype = ctypes.c_int
    lib.roformer_rotary_launch.argtypes = (
        [ctypes.c_int] * 3
        + [ctypes.c_void_p] * 3
        + [ctypes.c_int64, ctypes.c_void_p]
        + [ctypes.c_int64] * 4
        + [ctypes.c_void_p]
    )
    return lib


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent)
        return out.stdout.strip() or None
    except OSError:
        return None


@dataclass
class Bench:
    """Everything one run times: the kernel library, the shapes, the table and the HF functions."""

    args: argparse.Namespace
    lib: ctypes.CDLL
    lib_path: Path
    tdtype: object  # torch dtype of q and k
    code: int  # RotaryDType code of the C entry point
    table_np: np.ndarray  # [P, R] fp32, P = the largest S
    table: object  # the same on the GPU
    hf_rope: object
    compiled: object | None

    @property
    def max_s(self) -> int:
        return self.table_np.shape[0]

    def make(self, s: int):
        g = torch.Generator(device="cuda").manual_seed(s)
        a = self.args
        return tuple(
            torch.randn(a.batch, a.heads, s, a.head_dim, device="cuda", generator=g).to(self.tdtype) for _ in range(2)
        )

    def ours(self, q, k, yq, yk, s: int):
        """A no-argument launch of our kernel on q, k -> yq, yk (current stream)."""
        xp = (ctypes.c_void_p * 2)(q.data_ptr(), k.data_ptr())
        yp = (ctypes.c_void_p * 2)(yq.data_ptr(), yk.data_ptr())
        stream = torch.cuda.current_stream().cuda_stream
        a = self.args
        heads = (ctypes.c_int64 * 2)(a.heads, a.heads)

        def run():
            rc = self.lib.roformer_rotary_launch(
                self.code,
                INTERLEAVED,  # RoFormer's adjacent pairs, as HF's apply_rotary_position_embeddings
                2,
                xp,
                yp,
                self.table.data_ptr(),
                a.batch,
                heads,
                s,
                a.head_dim,
                a.head_dim,
                self.max_s,
                stream,
            )
            if rc != 0:
                raise RuntimeError(f"roformer_rotary_launch returned cudaError {rc}")

        return run


def main(argv: list[str] | None = None) -> int:
    return cli.run(build_parser(), _main, argv)


def _main(args) -> int:
    bench = setup(args)
    n_bad, hf_diff = check_correctness(bench)
    if n_bad:
        raise VerificationError(f"the kernel differs from export.reference in {n_bad} bytes; not timing it")
    headline = measure(bench, args.seq)
    sweep = [measure(bench, s) for s in args.seqs]
    write_results(
        bench, {"bytes_differing_from_reference": n_bad, "max_abs_diff_vs_hf_eager": hf_diff}, headline, sweep
    )
    return EXIT_OK


def setup(args) -> Bench:
    """The GPU, the kernel library and the inputs' table; UnavailableError / UsageError when missing."""
    if not torch.cuda.is_available():
        raise UnavailableError("no CUDA device visible to torch; run this on a GPU machine with a CUDA build of torch")
    lib_path = args.lib or locate.find_kernel_library()
    if lib_path is None or not Path(lib_path).is_file():
        raise UsageError(f"{KERNEL_LIB} not found; build it with `python -m plugins.build` or pass --lib")
    tdtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    table_np = sincos_table(max([args.seq, *args.seqs]), args.head_dim)
    hf_rope = RoFormerSelfAttention.apply_rotary_position_embeddings
    return Bench(
        args,
        load_kernel(Path(lib_path)),
        Path(lib_path),
        tdtype,
        DTYPE_CODES[DTYPES[args.dtype]],
        table_np,
        torch.from_numpy(table_np).cuda(),
        hf_rope,
        None if args.no_compile else torch.compile(hf_rope),
    )


def check_correctness(bench: Bench) -> tuple[int, float]:
    """Our output at the headline shape, bit for bit against the numpy reference, and its distance to HF."""
    s = bench.args.seq
    q, k = bench.make(s)
    yq, yk = torch.empty_like(q), torch.empty_like(k)
    bench.ours(q, k, yq, yk, s)()
    torch.cuda.synchronize()
    if bench.tdtype == torch.bfloat16:
        ref = [
            bf16_round(y)
            for y in roformer_rotary_ref([q.float().cpu().numpy(), k.float().cpu().numpy()], bench.table_np)
        ]
        got = [yq.float().cpu().numpy(), yk.float().cpu().numpy()]
    else:
        ref = roformer_rotary_ref([q.cpu().numpy(), k.cpu().numpy()], bench.table_np)
        got = [yq.cpu().numpy(), yk.cpu().numpy()]
    n_bad = sum(int(np.count_nonzero(g.view(np.uint8) != r.view(np.uint8))) for g, r in zip(got, ref, strict=True))
    sin_cos = torch.from_numpy(bench.table_np[:s]).cuda().to(bench.tdtype)[None, None]  # HF's sinusoidal_pos
    hq, hk = bench.hf_rope(sin_cos, q, k)
    hf_diff = max(float((hq.float() - yq.float()).abs().max()), float((hk.float() - yk.float()).abs().max()))
    print(
        f"correctness: {n_bad} bytes differ from export.reference (must be 0); max|ours - hf_eager| = "
        f"{hf_diff:.3g} (HF multiplies in {bench.args.dtype} with {bench.args.dtype} sin/cos)",
        file=sys.stderr,
    )
    return n_bad, hf_diff


def time_fn(fn, warmup: int, iters: int) -> dict:
    """Per-iteration CUDA events on the current stream, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    for st, en in zip(starts, ends, strict=True):
        st.record()
        fn()
        en.record()
    torch.cuda.synchronize()
    ms = np.array([st.elapsed_time(en) for st, en in zip(starts, ends, strict=True)])
    return {
        "median_us": float(np.median(ms) * 1e3),
        "p10_us": float(np.percentile(ms, 10) * 1e3),
        "p90_us": float(np.percentile(ms, 90) * 1e3),
        "iters": iters,
    }


def measure(bench: Bench, s: int) -> dict:
    """ours, hf_eager, compiled and a same-bytes copy at sequence length s."""
    q, k = bench.make(s)
    yq, yk = torch.empty_like(q), torch.empty_like(k)
    pos = torch.from_numpy(bench.table_np[:s]).cuda().to(bench.tdtype)[None, None]
    src = torch.empty(2 * q.numel(), device="cuda", dtype=bench.tdtype)  # the bytes of q and k
    dst = torch.empty_like(src)
    moved = 2 * src.numel() * src.element_size()  # read + write, as ours
    w, n = bench.args.warmup, bench.args.iters
    row = {
        "S": s,
        "bytes_moved": moved,
        "ours": time_fn(bench.ours(q, k, yq, yk, s), w, n),
        "hf_eager": time_fn(lambda: bench.hf_rope(pos, q, k), w, n),
        "copy": time_fn(lambda: dst.copy_(src), w, n),
    }
    if bench.compiled is not None:
        row["compiled"] = time_fn(lambda: bench.compiled(pos, q, k), w, n)
    for name in METHODS:
        if name in row:
            row[name]["GB_per_s"] = moved / (row[name]["median_us"] * 1e-6) / 1e9
    print(
        f"S={s}: " + ", ".join(f"{m} {row[m]['median_us']:.1f} us" for m in METHODS if m in row),
        file=sys.stderr,
        flush=True,
    )
    return row


def write_results(bench: Bench, correctness: dict, headline: dict, sweep: list[dict]) -> None:
    a = bench.args
    props = torch.cuda.get_device_properties(0)
    result = {
        "config": {
            "B": a.batch,
            "H": a.heads,
            "S": a.seq,
            "Dh": a.head_dim,
            "dtype": a.dtype,
            "tensors": "q,k",
            "warmup": a.warmup,
            "iters": a.iters,
        },
        "env": {
            "gpu": props.name,
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "python": platform.python_version(),
            "commit": git_commit(),
            "kernel_library": locate.library_info(bench.lib_path),
        },
        "correctness": correctness,
        "headline": headline,
        "sweep": sweep,
    }
    a.out.mkdir(parents=True, exist_ok=True)
    write_atomic(a.out / "bench_rotary.json", json.dumps(result, indent=2))
    write_atomic(a.out / "bench_rotary.md", markdown(result))
    plot(result, a.out / "bench_rotary.png")
    print(markdown(result))
    print(f"wrote {a.out}/bench_rotary.{{json,md,png}}", file=sys.stderr)


def markdown(r: dict) -> str:
    c, e = r["config"], r["env"]
    names = [n for n in ("ours", "hf_eager", "compiled", "copy") if n in r["headline"]]
    lines = [
        f"# RoformerRotary benchmark ({e['gpu']}, torch {e['torch']}, CUDA {e['cuda']}, commit {e['commit']})",
        "",
        f"q and k, [B={c['B']}, H={c['H']}, S, Dh={c['Dh']}], {c['dtype']}; median of {c['iters']} "
        f"iterations after {c['warmup']} warm-up (p10-p90 in brackets). `copy` moves the same bytes.",
        "",
        "| S | " + " | ".join(f"{n} us" for n in names) + " | ours GB/s | copy GB/s |",
        "|---|" + "---|" * (len(names) + 2),
    ]
    for row in [r["headline"], *r["sweep"]]:
        cells = [f"{row[n]['median_us']:.1f} [{row[n]['p10_us']:.1f}-{row[n]['p90_us']:.1f}]" for n in names]
        lines.append(
            f"| {row['S']} | "
            + " | ".join(cells)
            + f" | {row['ours']['GB_per_s']:.0f} | {row['copy']['GB_per_s']:.0f} |"
        )
    lines.append("")
    lines.append(
        f"Correctness before timing: {r['correctness']['bytes_differing_from_reference']} bytes differ from "
        f"export.reference; max |ours - hf_eager| = {r['correctness']['max_abs_diff_vs_hf_eager']:.3g}."
    )
    return "\n".join(lines) + "\n"


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    seqs = [row["S"] for row in r["sweep"]]
    for name in ("ours", "hf_eager", "compiled", "copy"):
        if name in r["sweep"][0]:
            ax.plot(seqs, [row[name]["median_us"] for row in r["sweep"]], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length S")
    ax.set_ylabel("median time per call (us)")
    c = r["config"]
    ax.set_title(f"rotary q+k, B={c['B']} H={c['H']} Dh={c['Dh']} {c['dtype']} on {r['env']['gpu']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())

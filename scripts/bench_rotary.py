"""Benchmark the RoformerRotary CUDA kernel against HF eager, torch.compile and a same-bytes copy.

Times, on one CUDA GPU, the rotation of q and k ([B, H, S, Dh], fp16 by default) by:
  - ours:     libroformer_rotary_kernels.so (one launch for q and k, sin/cos from the fp32 table);
  - hf_eager: transformers' RoFormerSelfAttention.apply_rotary_position_embeddings (sinusoidal_pos in the dtype);
  - compiled: torch.compile of that same function;
  - copy:     a device-to-device copy of the same number of bytes (read + write of q and k): the bandwidth limit.
Before timing, the kernel's output is checked bit for bit against export.reference.roformer_rotary_ref (exit 1
on a mismatch). Each method: warm-up, then per-iteration CUDA events on the current stream; medians with
p10/p90. Writes bench_rotary.json, bench_rotary.md and bench_rotary.png (sweep over S) to --out.

Exit codes: 0 ok; 1 correctness check failed; 2 no CUDA device / library missing / bad arguments.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np

EXIT_OK, EXIT_MISMATCH, EXIT_USAGE = 0, 1, 2
DTYPE_CODES = {"fp32": 0, "fp16": 1, "bf16": 2}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                epilog="example: python scripts/bench_rotary.py --out bench_out --seqs 256 1024 2048")
    p.add_argument("--out", type=Path, default=Path("bench_out"), help="folder for JSON, Markdown and PNG")
    p.add_argument("--lib", type=Path, default=None, help="libroformer_rotary_kernels.so (default: plugins.locate)")
    p.add_argument("--batch", type=int, default=8, help="B")
    p.add_argument("--heads", type=int, default=12, help="H")
    p.add_argument("--seq", type=int, default=2048, help="S of the headline measurement")
    p.add_argument("--head-dim", type=int, default=64, help="Dh (= R)")
    p.add_argument("--seqs", type=int, nargs="+", default=[128, 256, 512, 1024, 2048, 4096], help="S sweep")
    p.add_argument("--dtype", choices=sorted(DTYPE_CODES), default="fp16", help="q/k dtype")
    p.add_argument("--warmup", type=int, default=25, help="untimed iterations per method")
    p.add_argument("--iters", type=int, default=200, help="timed iterations per method")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    return p


def load_kernel(path: Path):
    lib = ctypes.CDLL(str(path))
    lib.roformer_rotary_launch.restype = ctypes.c_int
    lib.roformer_rotary_launch.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                                           ctypes.c_void_p] + [ctypes.c_int64] * 6 + [ctypes.c_void_p]
    return lib


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent)
        return out.stdout.strip() or None
    except OSError:
        return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    from export.reference import bf16_round, roformer_rotary_ref, sincos_table
    from plugins import locate

    if not torch.cuda.is_available():
        print("error: no CUDA device visible to torch; run this on a GPU machine with a CUDA build of torch",
              file=sys.stderr)
        return EXIT_USAGE
    lib_path = args.lib or locate.find_kernel_library()
    if lib_path is None or not Path(lib_path).is_file():
        print("error: libroformer_rotary_kernels.so not found; build it with `python -m plugins.build` or pass --lib",
              file=sys.stderr)
        return EXIT_USAGE
    from transformers.models.roformer.modeling_roformer import RoFormerSelfAttention

    lib = load_kernel(Path(lib_path))
    tdtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    code = DTYPE_CODES[args.dtype]
    b, h, dh = args.batch, args.heads, args.head_dim
    max_s = max([args.seq, *args.seqs])
    table_np = sincos_table(max_s, dh)  # [P, R] fp32, P = the largest S
    table = torch.from_numpy(table_np).cuda()
    hf_rope = RoFormerSelfAttention.apply_rotary_position_embeddings
    compiled = None if args.no_compile else torch.compile(hf_rope)

    def make(s):
        g = torch.Generator(device="cuda").manual_seed(s)
        q = torch.randn(b, h, s, dh, device="cuda", generator=g).to(tdtype)
        k = torch.randn(b, h, s, dh, device="cuda", generator=g).to(tdtype)
        return q, k

    def ours_fn(q, k, yq, yk, s):
        xp = (ctypes.c_void_p * 2)(q.data_ptr(), k.data_ptr())
        yp = (ctypes.c_void_p * 2)(yq.data_ptr(), yk.data_ptr())
        stream = torch.cuda.current_stream().cuda_stream

        def run():
            rc = lib.roformer_rotary_launch(code, 2, xp, yp, table.data_ptr(), b, h, s, dh, dh, max_s, stream)
            if rc != 0:
                raise RuntimeError(f"roformer_rotary_launch returned cudaError {rc}")
        return run

    def time_fn(fn) -> dict:
        for _ in range(args.warmup):
            fn()
        torch.cuda.synchronize()
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(args.iters)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(args.iters)]
        for st, en in zip(starts, ends):
            st.record()
            fn()
            en.record()
        torch.cuda.synchronize()
        ms = np.array([st.elapsed_time(en) for st, en in zip(starts, ends)])
        return {"median_us": float(np.median(ms) * 1e3), "p10_us": float(np.percentile(ms, 10) * 1e3),
                "p90_us": float(np.percentile(ms, 90) * 1e3), "iters": args.iters}

    # --- correctness first: our output, bit for bit, against the numpy reference (headline shape) ---------
    s = args.seq
    q, k = make(s)
    yq, yk = torch.empty_like(q), torch.empty_like(k)
    ours_fn(q, k, yq, yk, s)()
    torch.cuda.synchronize()
    if tdtype == torch.bfloat16:
        ref = [bf16_round(y) for y in roformer_rotary_ref([q.float().cpu().numpy(), k.float().cpu().numpy()],
                                                          table_np)]
        got = [yq.float().cpu().numpy(), yk.float().cpu().numpy()]
    else:
        ref = roformer_rotary_ref([q.cpu().numpy(), k.cpu().numpy()], table_np)
        got = [yq.cpu().numpy(), yk.cpu().numpy()]
    n_bad = sum(int(np.count_nonzero(g.view(np.uint8) != r.view(np.uint8))) for g, r in zip(got, ref))
    sin_cos = torch.from_numpy(table_np[:s]).cuda().to(tdtype)[None, None]  # HF's sinusoidal_pos [1, 1, S, Dh]
    hq, hk = hf_rope(sin_cos, q, k)
    hf_diff = max(float((hq.float() - yq.float()).abs().max()), float((hk.float() - yk.float()).abs().max()))
    print(f"correctness: {n_bad} bytes differ from export.reference (must be 0); "
          f"max|ours - hf_eager| = {hf_diff:.3g} (HF multiplies in {args.dtype} with {args.dtype} sin/cos)",
          file=sys.stderr)
    if n_bad:
        print("error: the kernel does not match the reference; not timing it", file=sys.stderr)
        return EXIT_MISMATCH

    # --- timing ---------------------------------------------------------------------------------------------
    def measure(s) -> dict:
        q, k = make(s)
        yq, yk = torch.empty_like(q), torch.empty_like(k)
        pos = torch.from_numpy(table_np[:s]).cuda().to(tdtype)[None, None]
        src = torch.empty(2 * q.numel(), device="cuda", dtype=tdtype)  # the bytes of q and k
        dst = torch.empty_like(src)
        moved = 2 * src.numel() * src.element_size()  # read + write, as ours
        row = {"S": s, "bytes_moved": moved,
               "ours": time_fn(ours_fn(q, k, yq, yk, s)),
               "hf_eager": time_fn(lambda: hf_rope(pos, q, k)),
               "copy": time_fn(lambda: dst.copy_(src))}
        if compiled is not None:
            row["compiled"] = time_fn(lambda: compiled(pos, q, k))
        for name in ("ours", "hf_eager", "copy", "compiled"):
            if name in row:
                row[name]["GB_per_s"] = moved / (row[name]["median_us"] * 1e-6) / 1e9
        print(f"S={s}: " + ", ".join(f"{n} {row[n]['median_us']:.1f} us" for n in ("ours", "hf_eager", "compiled",
                                                                                    "copy") if n in row),
              file=sys.stderr, flush=True)
        return row

    headline = measure(args.seq)
    sweep = [measure(s) for s in args.seqs]
    props = torch.cuda.get_device_properties(0)
    result = {
        "config": {"B": b, "H": h, "S": args.seq, "Dh": dh, "dtype": args.dtype, "tensors": "q,k",
                   "warmup": args.warmup, "iters": args.iters},
        "env": {"gpu": props.name, "torch": torch.__version__, "cuda": torch.version.cuda,
                "python": platform.python_version(), "commit": git_commit(),
                "kernel_library": locate.library_info(lib_path)},
        "correctness": {"bytes_differing_from_reference": n_bad, "max_abs_diff_vs_hf_eager": hf_diff},
        "headline": headline,
        "sweep": sweep,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_rotary.json").write_text(json.dumps(result, indent=2))
    (args.out / "bench_rotary.md").write_text(markdown(result))
    plot(result, args.out / "bench_rotary.png")
    print(markdown(result))
    print(f"wrote {args.out}/bench_rotary.{{json,md,png}}", file=sys.stderr)
    return EXIT_OK


def markdown(r: dict) -> str:
    c, e = r["config"], r["env"]
    names = [n for n in ("ours", "hf_eager", "compiled", "copy") if n in r["headline"]]
    lines = [f"# RoformerRotary benchmark ({e['gpu']}, torch {e['torch']}, CUDA {e['cuda']}, commit {e['commit']})",
             "", f"q and k, [B={c['B']}, H={c['H']}, S, Dh={c['Dh']}], {c['dtype']}; median of {c['iters']} "
             f"iterations after {c['warmup']} warm-up (p10-p90 in brackets). `copy` moves the same bytes.", "",
             "| S | " + " | ".join(f"{n} us" for n in names) + " | ours GB/s | copy GB/s |",
             "|---|" + "---|" * (len(names) + 2)]
    for row in [r["headline"], *r["sweep"]]:
        cells = [f"{row[n]['median_us']:.1f} [{row[n]['p10_us']:.1f}-{row[n]['p90_us']:.1f}]" for n in names]
        lines.append(f"| {row['S']} | " + " | ".join(cells)
                     + f" | {row['ours']['GB_per_s']:.0f} | {row['copy']['GB_per_s']:.0f} |")
    lines.append("")
    lines.append(f"Correctness before timing: {r['correctness']['bytes_differing_from_reference']} bytes differ from "
                 f"export.reference; max |ours - hf_eager| = {r['correctness']['max_abs_diff_vs_hf_eager']:.3g}.")
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

"""Throughput and latency of the live Triton server (engines.serving: our fronts, tritonserver's Python
backend, ONNX Runtime, CPU) at 1/4/16 clients.

    python scripts/bench_serving.py --build build/ckpt                        # 1 x 128 tokens, 1/4/16 clients
    python scripts/bench_serving.py --build build/ckpt --label demo --update-results   # the committed figures
    python scripts/bench_serving.py --tiny          # the tiny checkpoint through export.build, for a smoke run

Run it in the serving environment (`.venv-serving`, see engines/serving/README.md); elsewhere it says so and exits 3
before any work. Each level: `--warmup` untimed requests, then `--requests` timed ones (or until `--max-seconds`),
each client thread on its own connection. Reports requests/s, sequences/s and p50/p99 latency (ms).
stdout: the Markdown table; `<label>_s<sequence>.{json,md}` in --out (default build/scripts/bench_serving/;
--update-results: scripts/results/bench_serving/). Numbers are for this host's CPU only.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from script_outputs import add_output_flags  # noqa: E402

from engines.client import TritonEncoderClient  # noqa: E402
from export.errors import RoformerTrtError, UsageError  # noqa: E402
from export.inputs.numbers import float_arg, int_arg  # noqa: E402
from export.stages.bench import host_description  # noqa: E402


def level(urls, protocol, clients, n, warmup, max_s, batch, seq, vocab):
    rng = np.random.default_rng(0)
    ids = rng.integers(5, vocab, (batch, seq)).astype(np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    lat, lock, left = [], threading.Lock(), [n]
    deadline = time.perf_counter() + max_s

    def worker(_):
        with TritonEncoderClient(urls[protocol], urls["model"], protocol) as c:
            for _ in range(warmup):
                c.infer(feeds)
            while time.perf_counter() < deadline:
                with lock:
                    if left[0] <= 0:
                        return
                    left[0] -= 1
                t = time.perf_counter()
                c.infer(feeds)
                with lock:
                    lat.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(worker, range(clients)))
    wall = time.perf_counter() - t0
    ms = np.array(lat) * 1e3
    return {
        "protocol": protocol,
        "clients": clients,
        "requests": len(lat),
        "batch": batch,
        "sequence": seq,
        "req_per_s": len(lat) / wall,
        "seq_per_s": len(lat) * batch / wall,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
    }


def markdown(rows, meta):
    head = (
        f"Triton (engines.serving: fronts + Python backend + ONNX Runtime, CPU), {meta['date']}, {meta['host']}, "
        f"model {meta['model']}\n\n"
    )
    t = (
        "| protocol | clients | requests | batch x seq | req/s | seq/s | p50 ms | p99 ms |\n"
        "|---|---|---|---|---|---|---|---|\n"
    )
    for r in rows:
        t += (
            f"| {r['protocol']} | {r['clients']} | {r['requests']} | {r['batch']}x{r['sequence']} | "
            f"{r['req_per_s']:.1f} | {r['seq_per_s']:.1f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} |\n"
        )
    return head + t


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scripts/bench_serving.py",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="example: python scripts/bench_serving.py --build build/ckpt --clients 1 4 16",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--build", type=Path, help="folder written by python -m export.build")
    src.add_argument("--tiny", action="store_true", help="benchmark a random tiny RoFormer")
    p.add_argument("--clients", type=int_arg(), nargs="+", default=[1, 4, 16], help="concurrency levels")
    p.add_argument("--protocols", nargs="+", choices=["http", "grpc"], default=["http", "grpc"], help="transports")
    p.add_argument("--requests", type=int_arg(), default=100, help="timed requests per level")
    p.add_argument("--warmup", type=int_arg(), default=2, help="untimed requests per client before timing")
    p.add_argument("--max-seconds", type=float_arg(), default=20.0, help="cap per level")
    p.add_argument("--batch", type=int_arg(), default=1, help="sequences per request")
    p.add_argument("--sequence", type=int_arg(), default=128, help="tokens per sequence (README's figures: 128)")
    p.add_argument("--label", help="results file stem (default: the build folder's name, tiny with --tiny)")
    add_output_flags(p, "bench_serving", "bench_serving")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from engines.serving.ort_model import load_build
    from engines.serving.server import check_runtime, serve
    from tests.fixtures.tiny_build import write_tiny_build

    try:
        check_runtime()  # not in the serving environment: say so (exit 3) before building or loading anything
        with tempfile.TemporaryDirectory() as tmp:
            build = args.build
            if args.tiny:
                build = Path(tmp) / "tiny"
                write_tiny_build(build)
            _, limits, _ = load_build(build, "mean")
            if limits.max_sequence and args.sequence > limits.max_sequence:
                raise UsageError(f"--sequence {args.sequence} > the model's {limits.max_sequence} positions")
            vocab = limits.vocab_size or 100
            rows = []
            with serve(build, "mean", http_port=0, grpc_port=0, max_batch=max(16, args.batch)) as urls:
                for proto in args.protocols:
                    for c in args.clients:
                        rows.append(
                            level(
                                urls,
                                proto,
                                c,
                                args.requests,
                                args.warmup,
                                args.max_seconds,
                                args.batch,
                                args.sequence,
                                vocab,
                            )
                        )
                        print(f"{proto} x{c}: {rows[-1]['req_per_s']:.1f} req/s", file=sys.stderr)
    except RoformerTrtError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    meta = {"date": time.strftime("%Y-%m-%d"), "host": host_description(), "model": urls["model"]}
    md = markdown(rows, meta)
    label = args.label or ("tiny" if args.tiny else Path(args.build).resolve().name)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"{label}_s{args.sequence}"
    (args.out / f"{stem}.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    (args.out / f"{stem}.md").write_text(md)
    print(md)
    print(f"wrote {args.out / stem}.{{json,md}}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

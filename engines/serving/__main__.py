"""`python -m engines.serving --build build/<name>`: serve a build's ONNX graph on Triton (CPU, PyTriton).

Blocks until Ctrl-C. Inputs int64 input_ids/attention_mask/token_type_ids [batch, sequence];
outputs the graph's plus `sentence_embedding` unless --pooling none. Exit codes: export/errors.py.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from engines.serving.ort_model import OrtEncoder
from engines.serving.server import serve
from export import cli
from export.cli import Parser
from export.errors import EXIT_OK


def build_parser() -> Parser:
    p = Parser(
        prog="python -m engines.serving",
        description="Serve a roformer-trt build with ONNX Runtime behind a Triton server (NVIDIA PyTriton).",
        epilog="example: python -m engines.serving --build build/roformer_base --http-port 8000 --grpc-port 8001",
    )
    p.add_argument("--build", required=True, type=Path, help="folder written by python -m export.build")
    p.add_argument("--pooling", choices=["mean", "cls", "none"], default="mean",
                   help="sentence_embedding output added to the graph")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 exposes it to the network)")
    p.add_argument("--http-port", type=int, default=8000, help="HTTP port")
    p.add_argument("--grpc-port", type=int, default=8001, help="gRPC port")
    p.add_argument("--metrics-port", type=int, default=8002, help="Prometheus metrics port")
    p.add_argument("--max-batch", type=int, default=8, help="max_batch_size for dynamic batching")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: ORT's)")
    p.add_argument("--verbose", dest="debug", action="store_true", help="same as --debug")
    return p


def main(argv: list[str] | None = None) -> int:
    return cli.run(build_parser(), _main, argv)


def _main(args) -> int:
    enc = OrtEncoder.from_build(args.build, args.pooling, args.threads)
    with serve(enc, args.host, args.http_port, args.grpc_port, args.metrics_port, args.max_batch,
               verbose=args.debug) as urls:
        print(f"serving {urls['model']}: http {urls['http']}  grpc {urls['grpc']}  (Ctrl-C stops)", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass  # Ctrl-C is the documented way to stop; leaving the block stops the server
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

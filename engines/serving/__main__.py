"""`python -m engines.serving --build build/<name>`: serve a build's ONNX graph on Triton (CPU).

Blocks until Ctrl-C (or SIGTERM): exit 130, the server stopped. Inputs: the graph's, int64 [batch, sequence]
(input_ids, attention_mask, and token_type_ids where the family has it); outputs the graph's plus
`sentence_embedding` unless --pooling none.
A watchdog polls tritonserver and the model's backend stub every WATCH_INTERVAL_S; when either dies the
command prints `error: tritonserver exited (<signal or code>); see <log>` (or names the stub) and exits 5,
so a supervisor restarts it. Exit codes: export/errors.py.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

from engines.serving.server import TRUST_FLAG, serve
from export.cli import entry as cli
from export.cli.entry import InterruptNote, Parser
from export.cli.flags import add_build, add_served_pooling
from export.errors import EXIT_OK, UsageError
from export.inputs.numbers import int_arg

WATCH_INTERVAL_S = 1.0  # the issue asks for at most 2 s between two looks at the server


def build_parser() -> Parser:
    p = Parser(
        prog="python -m engines.serving",
        description="Serve a roformer-trt build with ONNX Runtime behind Triton's Python backend "
        "(tritonserver from nvidia-pytriton, our HTTP and gRPC fronts on the public ports).",
        epilog="example: python -m engines.serving --build build/ckpt --http-port 8000 --grpc-port 8001",
    )
    add_build(p)
    add_served_pooling(p)
    p.add_argument("--host", default="127.0.0.1", help="address the fronts listen on (0.0.0.0 exposes them)")
    p.add_argument("--http-port", type=int_arg(), default=8000, help="HTTP port (0: a free one)")
    p.add_argument("--grpc-port", type=int_arg(), default=8001, help="gRPC port (0: a free one)")
    p.add_argument("--max-batch", type=int_arg(), default=8, help="max_batch_size for dynamic batching")
    p.add_argument(
        "--threads", type=int_arg(1, 4096), default=None, help="ONNX Runtime intra-op threads (default: ORT's)"
    )
    p.add_argument(
        "--repository",
        type=Path,
        default=None,
        help="write the Triton model repository here (a new or empty folder; kept after exit) "
        "instead of a temporary folder",
    )
    p.add_argument(
        TRUST_FLAG,
        action="store_true",
        help="serve even where tritonserver cannot get network and mount namespaces of its own (then every "
        "local user can read the request tensors in its /dev/shm regions); without it such a host is exit 3",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    note = InterruptNote("the server was stopped")
    return cli.run(build_parser(), _main, argv, interrupt_note=note)


def _stop_on_sigterm(signum, frame):
    raise KeyboardInterrupt  # a supervisor's stop: leave the serve block, which stops tritonserver


def _main(args) -> int:
    for flag in ("http_port", "grpc_port"):
        if not 0 <= getattr(args, flag) <= 65535:
            raise UsageError(f"--{flag.replace('_', '-')} {getattr(args, flag)} is not a port; pass 0-65535")
    if args.max_batch < 1:
        raise UsageError(f"--max-batch must be >= 1, got {args.max_batch}")
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        with serve(
            args.build,
            args.pooling,
            args.host,
            args.http_port,
            args.grpc_port,
            args.max_batch,
            args.threads,
            args.repository,
            trust_local_users=args.trust_local_users,
        ) as urls:
            print(
                f"serving {urls['model']}: http {urls['http']}  grpc {urls['grpc']}  (Ctrl-C stops); "
                f"server log {urls['log']}",
                flush=True,
            )
            watch(urls["server"])
    finally:
        signal.signal(signal.SIGTERM, previous)
    return EXIT_OK


def watch(server, interval_s: float = WATCH_INTERVAL_S) -> None:
    """Return never; raise the server's death (ServerDiedError, exit 5) when it comes."""
    while True:
        death = server.death()
        if death is not None:
            raise death
        time.sleep(interval_s)


if __name__ == "__main__":
    sys.exit(main())

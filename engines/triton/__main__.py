"""CLI: python -m engines.triton --build build/<name> --out model_repository

A roformer-trt build folder -> a Triton model repository (engines.triton.repository). Exit codes:
export/errors.py (0 ok, 1 the build did not pass or a generated config failed its check, 2 usage,
3 missing package).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from engines.triton.repository import DEFAULT_MAX_BATCH, build_repository
from engines.triton.twin import CHOICES
from export.cli import entry as cli
from export.cli.entry import Parser
from export.cli.flags import add_build, add_served_pooling
from export.errors import EXIT_OK
from export.inputs.numbers import int_arg


def build_parser() -> Parser:
    p = Parser(
        prog="python -m engines.triton",
        description="Write a Triton model repository from a roformer-trt build dir: a TensorRT model per engine "
        "(when built; one instance group listing every optimization profile, so every instance takes "
        "every length) and an ONNX Runtime twin for CPU hosts.",
        epilog="example: python -m engines.triton --build build/demo --out model_repository --pooling mean",
    )
    add_build(p)
    p.add_argument("--out", required=True, type=Path, help="Triton model repository (created if missing)")
    add_served_pooling(p)
    p.add_argument(
        "--instances",
        type=int_arg(),
        default=1,
        help="instances of each TensorRT model per GPU (the instance group's count); each holds one "
        "execution context per optimization profile",
    )
    p.add_argument(
        "--max-batch",
        type=int_arg(),
        default=None,
        help=f"max_batch_size (default: the engine's batch max, else {DEFAULT_MAX_BATCH})",
    )
    p.add_argument(
        "--onnx-twin",
        choices=CHOICES,
        default="auto",
        help="the ONNX Runtime model: auto (default) the "
        "INT8 CPU twin when the build has one (export.build --precision int8), else fp32; int8; fp32",
    )
    p.add_argument("--name", default=None, help="model name prefix (default: the build folder's name)")
    p.add_argument("--force", action="store_true", help="replace model folders of the same name in --out")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    return p


def main(argv: list[str] | None = None) -> int:
    return cli.run(build_parser(), _main, argv)


def _main(args) -> int:
    pooling = args.pooling or "none"  # the build's own pooling, or none: the engine cannot gain one after the build
    rep = build_repository(
        args.build, args.out, pooling, args.max_batch, args.name, args.force, args.instances, args.onnx_twin
    )
    for n in rep.notes:
        print(f"note: {n}", file=sys.stderr)
    print(json.dumps({"models": rep.models, "notes": rep.notes}, indent=2) if args.json else rep.summary())
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

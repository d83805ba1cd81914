"""CLI: python -m engines.build MODEL.onnx --precision fp16 --profiles 128,512,2048

Build a TensorRT engine from the TensorRT-bound ONNX that export.build wrote. Usage checks first
(exit 2), then whether TensorRT and a GPU are here (exit 3), then the build (engines.tensorrt.builder).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from engines.tensorrt.availability import engine_status_for, require_engine
from engines.tensorrt.builder import build_engine
from engines.tensorrt.flags import add_engine_flags
from engines.tensorrt.graph import count_plugin_nodes, declared_max_len, quantized_format
from engines.tensorrt.profiles import ProfileSet
from export.cli import entry as cli
from export.cli.entry import Parser
from export.errors import EXIT_OK, UsageError
from export.inputs.graph_file import read_graph
from export.inputs.numbers import int_arg
from export.passes.precision import parse_precision
from export.report.schema import TIMING_CACHE
from plugins.locate import find_plugin_library


def build_parser() -> Parser:
    p = Parser(
        prog="python -m engines.build",
        description="Build a TensorRT engine from the TensorRT-bound ONNX that export.build wrote "
        "(report.json artifacts.tensorrt-onnx).",
        epilog="example: python -m engines.build build/ckpt/model.rope-plugin.fp16.onnx "
        "--precision fp16 --batch 1,8,32 --profiles 128,512,2048",
    )
    p.add_argument("onnx", help="ONNX file (mixed precision already applied; the network is strongly typed)")
    p.add_argument("--out", help="folder for <name>.plan and its sidecar (default: the ONNX file's folder)")
    p.add_argument("--name", help="plan name without .plan (default: model.<precision>)")
    p.add_argument(
        "--precision",
        default="fp32",
        help="recorded in the sidecar: fp32 | fp16 | bf16 | int8 | fp8 "
        "(int8/fp8: the Q/DQ graph export.build quantized; calibration happens there, never here)",
    )
    p.add_argument(
        "--max-len",
        type=int_arg(),
        help="longest sequence (default: the length the graph declares, export.build's --max-len)",
    )
    p.add_argument("--plugin-lib", help="plugin library (default: the one python -m plugins.build made)")
    add_engine_flags(p)
    p.add_argument("--timing-cache", help="timing cache file (default: timing.cache beside the plan)")
    p.add_argument("--force", action="store_true", help="rebuild even when the sidecar matches")
    return p


def check_usage(args) -> tuple[Path, str, object, str | None]:
    """Every check a user can fix by changing the command (UsageError, exit 2), before asking whether the
    engine stage can run at all: (onnx path, precision, ProfileSet, plugin library or None)."""
    onnx_path = read_graph(args.onnx, what="ONNX file").path  # export.inputs.graph_file: the one checked loader
    precision = parse_precision(args.precision)
    declared = declared_max_len(onnx_path)
    check_quantized_precision(onnx_path, precision)
    if args.timing_cache and Path(args.timing_cache).exists() and not Path(args.timing_cache).is_file():
        raise UsageError(f"--timing-cache {args.timing_cache} is not a file; pass a file path (created if missing)")
    if args.max_len is not None and args.max_len < 1:
        raise UsageError(f"--max-len must be a positive number of tokens, got {args.max_len}")
    if args.max_len is not None and declared is not None and args.max_len > declared:
        raise UsageError(
            f"--max-len {args.max_len} exceeds the {declared} tokens {onnx_path.name} declares (the "
            f"longest sequence it can accept); pass --max-len <= {declared} or re-export with a larger one"
        )
    max_len = args.max_len or declared
    if max_len is None:
        raise UsageError(
            f"{onnx_path.name} declares no longest sequence (not written by this export.build); pass --max-len"
        )
    profiles = ProfileSet.from_cli(args.batch, args.profiles, max_len, args.choices)
    plugin_lib = args.plugin_lib
    if plugin_lib is not None and not Path(plugin_lib).is_file():
        raise UsageError(f"--plugin-lib {plugin_lib} does not exist; run python -m plugins.build")
    if plugin_lib is None and count_plugin_nodes(onnx_path):
        plugin_lib = find_plugin_library()
    return onnx_path, precision, profiles, plugin_lib


def check_quantized_precision(onnx_path: Path, precision: str) -> None:
    """--precision int8 | fp8 needs a graph quantized to that type; any other precision a graph without Q/DQ."""
    try:
        fmt = quantized_format(onnx_path)
    except ValueError as e:
        raise UsageError(f"{e}; quantize with python -m export.build --precision int8 or fp8") from None
    if precision in ("int8", "fp8") and fmt is None:
        raise UsageError(
            f"{onnx_path.name} has no Q/DQ nodes; --precision {precision} builds from the graph python -m "
            f"export.build --precision {precision} wrote (engines.build never calibrates)"
        )
    if fmt is not None and fmt != precision:
        raise UsageError(f"{onnx_path.name} is quantized to {fmt}; pass --precision {fmt}")


def main(argv: list[str] | None = None) -> int:
    """Usage checks (exit 2), then availability of TensorRT and a GPU (exit 3), then the build."""
    return cli.run(build_parser(), _main, argv)


def _main(args) -> int:
    onnx_path, precision, profiles, plugin_lib = check_usage(args)
    require_engine(engine_status_for(precision), flag=None)
    out = Path(args.out) if args.out else onnx_path.parent
    entry = build_engine(
        onnx_path,
        out,
        name=args.name or f"model.{precision}",
        plugin_lib=plugin_lib,
        profiles=profiles,
        precision=precision,
        workspace_mib=args.workspace_mib,
        timing_cache=args.timing_cache or out / TIMING_CACHE,
        reuse=not args.force,
    )
    print(json.dumps({k: entry[k] for k in ("plan", "reused", "build_seconds", "plugin_layers") if k in entry}))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

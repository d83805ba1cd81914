"""CLI: python -m export.build --model ckpt.pt --max-len 2048

Checkpoint -> model.onnx (plain export) -> rotary pass (TensorRT-bound graph, or standard ONNX
RotaryEmbedding) -> validation in ONNX Runtime against PyTorch -> report.json + report.md, then the
engine stage where TensorRT exists. Exit codes: see export/errors.py (0 ok, 1 verification failed,
2 bad input or usage, 3 a --require-... stage is unavailable here).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

from export.errors import EXIT_OK, RoformerTrtError, UnavailableError, UsageError, VerificationError

log = logging.getLogger("export.build")
MAX_LEN_LIMIT = 65536  # beyond this the table alone is hundreds of MB and validation at max_len takes hours
EXAMPLE = "example: python -m export.build --model demo/ckpt.pt --max-len 2048"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m export.build", description=__doc__.split("\n\n")[1],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter, epilog=EXAMPLE)
    p.add_argument("--model", required=True, help="checkpoint: HF folder, {config, state_dict} .pt, "
                   "state_dict .pt/.bin/.safetensors (+ config.json beside it or --config)")
    p.add_argument("--config", help="config.json for a bare state_dict")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow a pickled nn.Module (runs code from the file; only for files you trust)")
    p.add_argument("--out", help="output folder (default: build/<checkpoint stem>)")
    p.add_argument("--max-len", type=int, help="longest sequence the graphs serve (default: the checkpoint's "
                   "max_position_embeddings); may exceed it, the sinusoidal table is computed")
    p.add_argument("--exporter", default="dynamo", choices=["dynamo", "torchscript"], help="torch.onnx exporter")
    p.add_argument("--opset", type=int, help="ONNX opset (dynamo 18-23, default 18; torchscript 17-20, default 17)")
    p.add_argument("--rope", default="plugin", choices=["plugin", "onnx", "none"],
                   help="plugin: RoformerRotary nodes for TensorRT; onnx: standard RotaryEmbedding; none: as exported")
    p.add_argument("--precision", default="fp32", help="fp32 | fp16 | bf16: the mixed-precision graph TensorRT "
                   "builds from (matmuls low; LayerNorm, Softmax, residuals, rotary math fp32)")
    p.add_argument("--batch", default="1,8,32", help="engine batch range min,opt,max (one number N means 1,N,N)")
    p.add_argument("--profiles", help="sequence bucket tops, one optimization profile each, e.g. 128,512,2048 "
                   "(default: one profile 1..max-len)")
    p.add_argument("--choices", type=int, help="multiple-choice only: number of choices the engine takes (default 2)")
    p.add_argument("--workspace-mib", type=int, default=4096, help="TensorRT builder workspace limit")
    p.add_argument("--bench", action="store_true", help="after validation, benchmark engine / PyTorch / ORT "
                   "into <out>/bench/ (on a machine without a GPU: ORT and PyTorch CPU)")
    p.add_argument("--bench-grid", help="BATCHxSEQ list for --bench, e.g. 1x128,8x512 (default: each profile's "
                   "opt length at batch min and opt)")
    p.add_argument("--bench-iters", type=int, default=20, help="timed runs per --bench point (+10%% warm-up)")
    p.add_argument("--bench-compile", action="store_true", help="--bench also times torch.compile(dynamic=True)")
    p.add_argument("--atol", type=float, help="override every atol of the thresholds")
    p.add_argument("--rtol", type=float, help="override every rtol of the thresholds")
    p.add_argument("--thresholds", help="thresholds TOML (format in export/thresholds.py), read by engines.gate too")
    p.add_argument("--skip-validation", action="store_true", help="export only (the report says not validated)")
    p.add_argument("--require-engine", action="store_true", help="exit 3 if the TensorRT engine stage cannot run here")
    p.add_argument("--json", action="store_true", help="print report.json to stdout at the end")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, format="%(name)s: %(message)s")
    try:
        report, out = run(args, argv)
    except RoformerTrtError as e:
        if args.debug:
            traceback.print_exc()
        kind = "verification failed" if isinstance(e, VerificationError) else "error"
        print(f"{kind}: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("error: interrupted; no partial artifact was kept", file=sys.stderr)
        return 130
    if args.json:
        import json
        print(json.dumps(report, indent=2, default=str))
    else:
        print(f"ok: {out / 'report.json'}")
    return EXIT_OK


def run(args, argv: list[str]) -> tuple[dict, Path]:
    from export.checkpoint import load_checkpoint
    from export.progress import info, status

    check_max_len(args.max_len)
    with status("loading checkpoint"):
        ckpt = load_checkpoint(args.model, args.config, args.trust_pickle)
    max_len = args.max_len or ckpt.config.max_position_embeddings
    out = Path(args.out) if args.out else Path("build") / Path(args.model).stem
    created = prepare_out_dir(out)
    try:
        return _run_stages(args, argv, ckpt, max_len, out, info, status)
    except UsageError:
        if created and not any(out.iterdir()):
            shutil.rmtree(out, ignore_errors=True)
        raise


def _run_stages(args, argv, ckpt, max_len, out, info, status) -> tuple[dict, Path]:
    from export.passes.precision import parse_precision
    from engines.profiles import ProfileSet
    from export.stages.bench import parse_grid
    from export.stages.engine import run_engine_stage
    from export.onnx_export import check_export_args, export_onnx
    from export.stages.precision import run_precision_stage
    from export.report import new_report, save_report
    from export.thresholds import ThresholdError, Thresholds
    from export.validate import TorchReference, failures, validate_graphs, validation_shapes

    check_export_args(args.exporter, args.opset, max_len)
    try:
        thresholds = Thresholds.from_cli(args.thresholds, args.atol, args.rtol)
    except ThresholdError as e:
        raise UsageError(str(e)) from None
    precision = parse_precision(args.precision)
    profiles = ProfileSet.from_cli(args.batch, args.profiles, max_len, engine_choices(args.choices, ckpt.task))
    grid = parse_grid(args.bench_grid, profiles) if args.bench else None
    if args.bench and args.bench_iters < 1:
        raise UsageError(f"--bench-iters must be >= 1, got {args.bench_iters}")
    if args.workspace_mib < 1:
        raise UsageError(f"--workspace-mib must be >= 1, got {args.workspace_mib}")
    report = new_report(argv)
    report["model"] = model_facts(ckpt)
    report["checkpoint"] = {"path": str(args.model), "format": ckpt.source_format}
    report["profiles"] = profiles.to_report()
    if profiles.added_last:
        info(f"--profiles tops end below --max-len {max_len}: added a last profile up to {max_len}")

    with status(f"exporting ONNX ({args.exporter})"):
        report["export"] = export_onnx(ckpt.model, ckpt.task, out / "model.onnx", max_len, args.exporter, args.opset)
    report["artifacts"]["onnx"] = "model.onnx"
    info(f"exported model.onnx in {report['export']['seconds']} s")

    graphs = {"onnx": (out / "model.onnx", "fp32")}
    rewrite_failure = None
    trt_key = "onnx"
    if args.rope != "none":
        from export.stages.rope import run_rope_stage
        rewrite_failure = run_rope_stage(args.rope, ckpt, out, max_len, report, graphs)
        trt_key = f"rope-{args.rope}"
    report["plugin"] = plugin_facts()

    trt_onnx = run_precision_stage(precision, out / report["artifacts"][trt_key], trt_key, report, graphs)
    report["artifacts"]["tensorrt-onnx"] = trt_onnx.name
    if args.skip_validation:
        report["validation_skipped"] = True
    else:
        shapes = validation_shapes(max_len, ckpt.task)
        report["validation"] = validate_graphs(graphs, TorchReference(ckpt.model, ckpt.task), shapes, thresholds,
                                               ckpt.config.vocab_size, ckpt.config.type_vocab_size)
    # An engine is built only from a graph that kept every rotary site and matched PyTorch in ORT.
    why_not = "the rotary stage failed" if rewrite_failure else (
        "the ONNX graphs failed validation" if failures(report["validation"]) else None)
    if why_not:
        report["engine"] = {"status": "skipped", "reason": why_not, "profiles": report["profiles"]}
    else:
        try:
            report["validation"] += run_engine_stage(trt_onnx, precision, profiles, report,
                                                     validate=not args.skip_validation, ckpt=ckpt,
                                                     thresholds=thresholds, workspace_mib=args.workspace_mib)
        except RoformerTrtError as e:  # parser errors, a failed build: the report still says what happened
            report["engine"] = {"status": "failed", "reason": str(e), "profiles": report["profiles"]}
            report["failure"] = f"engine stage: {e}"
            save_report(report, out)
            raise
    failure_lines = failures(report["validation"])
    if args.bench and rewrite_failure is None and not failure_lines:
        from export.stages.bench import run_bench_stage
        run_bench_stage(grid, report, out, model=ckpt.model, config=ckpt.config, iters=args.bench_iters,
                        compile_=args.bench_compile)
    report["passed"] = not failure_lines and rewrite_failure is None and not args.skip_validation
    if rewrite_failure:
        report["failure"] = rewrite_failure
    elif failure_lines:
        report["failure"] = f"{len(failure_lines)} validation check(s) failed"
    save_report(report, out)
    if rewrite_failure:
        raise VerificationError(f"{rewrite_failure} (artifacts kept in {out}/)")
    if failure_lines:
        raise VerificationError("outputs differ from PyTorch beyond thresholds:\n  " + "\n  ".join(failure_lines))
    if args.require_engine and report["engine"].get("status") == "skipped":
        raise UnavailableError(f"--require-engine: {report['engine']['reason']}")
    return report, out


def check_max_len(max_len: int | None) -> None:
    if max_len is None:
        return
    if max_len <= 0:
        raise UsageError(f"--max-len must be a positive number of tokens, got {max_len}; e.g. --max-len 2048")
    if max_len > MAX_LEN_LIMIT:
        raise UsageError(f"--max-len {max_len} is beyond the supported {MAX_LEN_LIMIT}; pass a smaller --max-len")


def prepare_out_dir(out: Path) -> bool:
    """Create the output folder (True if we created it) and prove it is writable before any work."""
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UsageError(f"--out {out} is not writable ({e.strerror}); pass a folder you can write to") from None
    return created


def model_facts(ckpt) -> dict:
    c = ckpt.config
    return {"layers": c.num_hidden_layers, "hidden": c.hidden_size, "heads": c.num_attention_heads,
            "head_dim": c.hidden_size // c.num_attention_heads, "embedding_size": c.embedding_size,
            "vocab_size": c.vocab_size, "max_position_embeddings": c.max_position_embeddings,
            "rotary_value": bool(c.rotary_value), "task": ckpt.task,
            "params": sum(p.numel() for p in ckpt.model.parameters()), "table": ckpt.table}


def plugin_facts() -> dict:
    try:
        from plugins.locate import find_plugin_library, library_info
    except ImportError as e:  # the plugins package is part of this repo; a broken checkout surfaces here
        return {"status": "unavailable", "reason": f"plugins.locate not importable: {e}"}
    lib = find_plugin_library()
    if lib is None:
        return {"status": "unavailable", "reason": "plugin library not built; run python -m plugins.build"}
    return library_info(lib)


def engine_choices(choices: int | None, task: str) -> int | None:
    """Choices the engine profiles fix for a multiple-choice head (default 2); None for other heads."""
    if task != "multiple-choice":
        if choices is not None:
            raise UsageError(f"--choices applies to multiple-choice checkpoints only; this one is {task}")
        return None
    return 2 if choices is None else choices


if __name__ == "__main__":
    sys.exit(main())

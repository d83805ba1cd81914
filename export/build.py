"""CLI: python -m export.build --model ckpt.pt --max-len 2048

Checkpoint -> model.onnx (plain export) -> rotary pass (TensorRT-bound graph, or standard ONNX
RotaryEmbedding) -> validation in ONNX Runtime against PyTorch -> report.json + report.md, then the
engine stage where TensorRT exists. Exit codes: export/errors.py (0 ok, 1 verification failed,
2 bad input or usage, 3 a --require-... stage is unavailable here, 4 internal error, 130 interrupted).

Order of work: every flag is checked first (exit 2, nothing written), then `--require-engine` (exit 3,
nothing written), then the checkpoint is loaded and the stages run in a staging folder inside --out
that is moved into place at the end (export/staging.py): --out never holds a report beside files of
another run. The stages, in export/stages/, each return their report section; this file assembles them.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from engines.tensorrt.availability import engine_stage_status, require_engine

from engines.tensorrt.flags import add_engine_flags
from engines.tensorrt.profiles import ProfileSet
from export import __version__, cli
from export.checkpoint import LoadedCheckpoint, load_checkpoint
from export.cli import InterruptNote, Parser
from export.digest import artifact_hashes, sha256_tree
from export.errors import EXIT_OK, RoformerTrtError, UnavailableError, UsageError, VerificationError
from export.files import load_toml
from export.onnx_export import check_export_args, export_onnx
from export.passes.precision import parse_precision
from export.progress import info, status
from export.report import ONNX_KEY, TENSORRT_ONNX_KEY, TIMING_CACHE, Report, engine_key, rope_key
from export.report_io import report_text, save_report
from export.reproduce import reproduce_commands
from export.stages.bench import parse_grid, run_bench_stage
from export.stages.engine import run_engine_stage
from export.stages.precision import run_precision_stage
from export.stages.rope import run_rope_stage
from export.staging import BuildFolder
from export.thresholds import ThresholdError, Thresholds
from export.validate import TorchReference, failures, validate_graphs, validation_shapes
from plugins.identity import PLUGIN_LIB, STATIC_PLUGIN_LIB
from plugins.locate import find_static_plugin_library, plugin_library_status

MAX_LEN_LIMIT = 65536  # beyond this the table alone is hundreds of MB and validation at max_len takes hours
EXAMPLE = "example: python -m export.build --model demo/ckpt.pt --max-len 2048"


def build_parser() -> Parser:
    p = Parser(prog="python -m export.build", description=__doc__.split("\n\n")[1], epilog=EXAMPLE)
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
    add_engine_flags(p)
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
    return p



def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    note = InterruptNote("nothing was written")
    return cli.run(build_parser(), lambda args: _main(args, argv, note), argv, usage_errors=(ThresholdError,),
                   interrupt_note=note)


@dataclass(frozen=True)
class Flags:
    """Every flag, checked before any work (exit 2 with one line on the first bad one)."""

    thresholds: Thresholds
    precision: str
    opset: int

    @classmethod
    def check(cls, args) -> "Flags":
        if not Path(args.model).exists():
            raise UsageError(f"checkpoint {args.model} does not exist; pass --model PATH to a .pt/.safetensors file "
                             "or HF folder")
        check_max_len(args.max_len)
        opset = check_export_args(args.exporter, args.opset, args.max_len or 1)
        data = load_toml(args.thresholds, what="thresholds file") if args.thresholds else None
        thresholds = Thresholds.from_cli(data, str(args.thresholds), args.atol, args.rtol)
        precision = parse_precision(args.precision)
        # --batch, --profiles, --choices and --bench-grid as far as they can be judged without the checkpoint
        # (its max_position_embeddings is the default --max-len); checked again once it is loaded
        profiles = ProfileSet.from_cli(args.batch, args.profiles, args.max_len or MAX_LEN_LIMIT, args.choices)
        if args.bench:
            parse_grid(args.bench_grid, profiles)
        if args.bench and args.bench_iters < 1:
            raise UsageError(f"--bench-iters must be >= 1, got {args.bench_iters}")
        if args.workspace_mib < 1:
            raise UsageError(f"--workspace-mib must be >= 1, got {args.workspace_mib}")
        return cls(thresholds, precision, opset)


def _main(args, argv: list[str], note: InterruptNote) -> int:
    flags = Flags.check(args)
    if args.require_engine:
        require_engine(engine_stage_status())  # exit 3 in seconds, before anything is loaded or written
    timings: dict[str, float] = {}
    with _timed(timings, "load"), status("loading checkpoint"):
        ckpt = load_checkpoint(args.model, args.config, args.trust_pickle)
    max_len = args.max_len or ckpt.config.max_position_embeddings
    profiles = ProfileSet.from_cli(args.batch, args.profiles, max_len, engine_choices(args.choices, ckpt.task))
    grid = parse_grid(args.bench_grid, profiles) if args.bench else None
    out = Path(args.out) if args.out else Path("build") / Path(args.model).stem
    with BuildFolder(out) as folder:
        note.text = f"nothing was changed in {out}/ (the previous build there, if any, is untouched)"
        folder.reuse(TIMING_CACHE, f"model.{flags.precision}.plan", f"model.{flags.precision}.plan.json")
        report, error = _run_stages(args, argv, flags, ckpt, max_len, profiles, grid, folder.stage, timings)
        folder.commit({Path(rel).parts[0] for rel in report.artifacts_sha256},
                      on_done=lambda: setattr(note, "text", f"the finished build in {out}/ is in place"))
    if error is not None:
        raise error
    if args.json:
        print(report_text(report), end="")
    else:
        print(f"ok: {out / 'report.json'}")
    return EXIT_OK


def _run_stages(args, argv, flags: Flags, ckpt: LoadedCheckpoint, max_len: int, profiles: ProfileSet, grid,
                work: Path, timings: dict[str, float]) -> tuple[Report, RoformerTrtError | None]:
    """Every stage into `work`; returns the saved report and the error to raise once it is in place."""
    report = _new_report(argv, args, ckpt, profiles, timings)
    if profiles.added_last:
        info(f"--profiles tops end below --max-len {max_len}: added a last profile up to {max_len}")
    graphs, rewrite_failure = _export_and_rewrite(args, flags, ckpt, max_len, work, report, timings)
    with _timed(timings, "precision"):
        trt_key = rope_key(args.rope) if report.rewrite else ONNX_KEY
        stage = run_precision_stage(flags.precision, work / report.artifacts[trt_key], trt_key)
    report.precision = stage.section
    report.add_artifacts(stage.artifacts)
    graphs.update(stage.graphs)
    _validate(args, flags, ckpt, max_len, graphs, report, timings)
    error = _engine(args, flags, ckpt, profiles, work, report, rewrite_failure, timings)
    failure_lines = failures(report.validation)
    if error is None and args.bench and rewrite_failure is None and not failure_lines:
        with _timed(timings, "bench"):
            stage = run_bench_stage(grid, report, work, model=ckpt.model, config=ckpt.config,
                                    iters=args.bench_iters, compile_=args.bench_compile)
        report.bench = stage.section
        report.add_artifacts(stage.artifacts)
    report.passed = error is None and not failure_lines and rewrite_failure is None and not args.skip_validation
    if error is None and rewrite_failure:
        report.failure, error = rewrite_failure, VerificationError(f"{rewrite_failure} (artifacts kept in the "
                                                                   f"output folder)")
    elif error is None and failure_lines:
        report.failure = f"{len(failure_lines)} validation check(s) failed"
        error = VerificationError("outputs differ from PyTorch beyond thresholds:\n  " + "\n  ".join(failure_lines))
    elif error is None and args.require_engine and (report.engine or {}).get("status") != "built":
        error = UnavailableError(f"--require-engine: {(report.engine or {}).get('reason')}")
    report.reproduce = reproduce(report, flags, ckpt)
    report.artifacts_sha256 = artifact_hashes(work, report.artifacts.values())
    save_report(report, work)
    return report, error


def _new_report(argv, args, ckpt: LoadedCheckpoint, profiles: ProfileSet, timings: dict[str, float]) -> Report:
    report = Report(command=argv, version=__version__, created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    timings=timings)
    report.model = model_facts(ckpt)
    report.checkpoint = {"path": str(args.model), "format": ckpt.source_format, "sha256": sha256_tree(args.model)}
    report.profiles = profiles.to_report()
    report.plugin = plugin_facts()
    return report


def _export_and_rewrite(args, flags: Flags, ckpt, max_len: int, work: Path, report: Report,
                        timings: dict[str, float]) -> tuple[dict, str | None]:
    """model.onnx, then the rotary pass; returns the graphs to validate and a coverage failure line."""
    with _timed(timings, "export"), status(f"exporting ONNX ({args.exporter})"):
        report.export = export_onnx(ckpt.model, ckpt.task, work / "model.onnx", max_len, args.exporter, flags.opset)
    report.add_artifacts({ONNX_KEY: "model.onnx"})
    info(f"exported model.onnx in {report.export['seconds']} s")
    graphs = {ONNX_KEY: (work / "model.onnx", "fp32")}
    if args.rope == "none":
        return graphs, None
    with _timed(timings, "rotary"):
        stage = run_rope_stage(args.rope, ckpt, work, max_len)
    report.rewrite = stage.section
    report.add_artifacts(stage.artifacts)
    graphs.update(stage.graphs)
    return graphs, stage.failure


def _validate(args, flags: Flags, ckpt, max_len: int, graphs: dict, report: Report, timings) -> None:
    if args.skip_validation:
        report.validation_skipped = True
        return
    with _timed(timings, "validation"):
        report.validation = validate_graphs(graphs, TorchReference(ckpt.model, ckpt.task),
                                            validation_shapes(max_len, ckpt.task), flags.thresholds,
                                            ckpt.config.vocab_size, ckpt.config.type_vocab_size)


def _engine(args, flags: Flags, ckpt, profiles: ProfileSet, work: Path, report: Report, rewrite_failure,
            timings) -> RoformerTrtError | None:
    """The engine stage, only from a graph that kept every rotary site and matched PyTorch in ORT.
    Returns the stage's error (the report still records it) or None."""
    why_not = "the rotary stage failed" if rewrite_failure else (
        "the ONNX graphs failed validation" if failures(report.validation) else None)
    if why_not:
        report.engine = {"status": "skipped", "reason": why_not, "profiles": report.profiles}
        return None
    try:
        with _timed(timings, "engine"):
            stage = run_engine_stage(work / report.artifacts[TENSORRT_ONNX_KEY], flags.precision, profiles,
                                     validate=not args.skip_validation, ckpt=ckpt, thresholds=flags.thresholds,
                                     workspace_mib=args.workspace_mib)
    except RoformerTrtError as e:  # parser errors, a failed build: the report still says what happened
        report.engine = {"status": "failed", "reason": str(e), "profiles": report.profiles}
        report.failure = f"engine stage: {e}"
        return e
    report.engine = stage.section
    report.add_artifacts(stage.artifacts)
    report.validation += stage.cases
    return None


@contextmanager
def _timed(timings: dict[str, float], stage: str):
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = round(timings.get(stage, 0.0) + time.perf_counter() - t0, 2)


def check_max_len(max_len: int | None) -> None:
    if max_len is None:
        return
    if max_len <= 0:
        raise UsageError(f"--max-len must be a positive number of tokens, got {max_len}; e.g. --max-len 2048")
    if max_len > MAX_LEN_LIMIT:
        raise UsageError(f"--max-len {max_len} is beyond the supported {MAX_LEN_LIMIT}; pass a smaller --max-len")


def model_facts(ckpt) -> dict:
    c = ckpt.config
    return {"layers": c.num_hidden_layers, "hidden": c.hidden_size, "heads": c.num_attention_heads,
            "head_dim": c.hidden_size // c.num_attention_heads, "embedding_size": c.embedding_size,
            "vocab_size": c.vocab_size, "type_vocab_size": c.type_vocab_size,
            "max_position_embeddings": c.max_position_embeddings,
            "rotary_value": bool(c.rotary_value), "task": ckpt.task,
            "params": sum(p.numel() for p in ckpt.model.parameters()), "table": ckpt.table}


def plugin_facts() -> dict:
    """The plugin library's path and sha256, or what happened when it is not built and what to run."""
    return plugin_library_status()


def reproduce(report: Report, flags: Flags, ckpt: LoadedCheckpoint) -> dict | None:
    """trtexec and Polygraphy commands a TensorRT user runs to check the engine independently."""
    trt_onnx = report.artifacts.get(TENSORRT_ONNX_KEY)
    if trt_onnx is None or not report.profiles:
        return None
    t = flags.thresholds.lookup(flags.precision, engine_key(flags.precision), "last_hidden_state")
    plugin_lib = static_lib = None
    if (report.rewrite or {}).get("mode") == "plugin":  # a library that is not built here is named for the TRT host
        static = find_static_plugin_library()
        plugin_lib = (report.plugin or {}).get("path") or PLUGIN_LIB
        static_lib = str(static) if static else STATIC_PLUGIN_LIB
    return reproduce_commands(
        trt_onnx=trt_onnx, reference_onnx="model.onnx", plan=f"model.{flags.precision}.plan", profiles=report.profiles,
        precision=flags.precision, vocab_size=ckpt.config.vocab_size, type_vocab_size=ckpt.config.type_vocab_size,
        atol=t.atol, rtol=t.rtol, plugin_lib=plugin_lib, static_plugin_lib=static_lib,
        rank=3 if ckpt.task == "multiple-choice" else 2)


def engine_choices(choices: int | None, task: str) -> int | None:
    """Choices the engine profiles fix for a multiple-choice head (default 2); None for other heads."""
    if task != "multiple-choice":
        if choices is not None:
            raise UsageError(f"--choices applies to multiple-choice checkpoints only; this one is {task}")
        return None
    return 2 if choices is None else choices


if __name__ == "__main__":
    sys.exit(main())

"""CLI: python -m export.build --model ckpt.pt --max-len 2048

Checkpoint -> model.onnx (plain export) -> rotary pass (TensorRT-bound graph, or standard ONNX
RotaryEmbedding) -> precision graph -> validation in ONNX Runtime against PyTorch -> the engine stage where
TensorRT exists -> report.json + report.md. Exit codes: export/errors.py (0 ok, 1 verification failed,
2 bad input or usage, 3 a --require-... stage is unavailable here, 4 internal error, 130 interrupted).

Order of work: every flag is checked first, then --out and every path this run will write (no folder, no file it
cannot write and no file of the user's there: exit 2, nothing written), then `--require-engine` (exit 3). Then
the checkpoint is read and checked (keys, shapes, dtypes) without building the model, the length and profiles
are decided once, the memory the build needs is compared with what is available, and only then is the model
built. The stages (export/stages/) run in a staging folder inside --out and each returns its result; this file alone
assembles report.json from them, judges it with export.report.verdict (on the staged files: the exit status is
that verdict's, `build_error`), and moves the set into place (export/folder/staging.py): --out never holds a
report beside files of another run, and a user's files are never moved, replaced or removed.
"""

from __future__ import annotations

import os
import sys
import time
from argparse import Namespace
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from engines.tensorrt.availability import engine_status_for, require_engine
from export import __version__, build_flags, memory
from export.build_plan import Flags, Plan
from export.build_report import checkpoint_facts, model_facts
from export.build_tasks import build_all, held_tasks, task_files
from export.checkpoint.rebuild import LoadedCheckpoint, inspect_checkpoint, materialize
from export.cli import entry as cli
from export.cli.entry import InterruptNote, Parser
from export.errors import EXIT_OK, RoformerTrtError, UnavailableError
from export.families.adapters import ALL
from export.folder import disk
from export.folder.digest import artifact_hashes
from export.folder.layout import ONNX_FILE, TASKS_INDEX, Planned, plan_file, sidecar_file
from export.folder.staging import BuildFolder
from export.passes.pooling import HIDDEN
from export.passes.pooling.request import Resolved, resolve
from export.passes.quantize.data import CalibSet
from export.progress import info, status
from export.report.persist import report_text, save_report
from export.report.reproduce import reproduce_commands
from export.report.schema import ONNX_KEY, TENSORRT_ONNX_KEY, TIMING_CACHE, Report, engine_key, rope_key
from export.report.thresholds import ThresholdError
from export.report.verdict import OUTPUT, build_error, judge, passed
from export.stages.bench import run_bench_stage
from export.stages.diagnosis import run_diagnosis_stage
from export.stages.diagnosis import summary as diagnosis_summary
from export.stages.engine import run_engine_stage
from export.stages.onnx import run_export_stage
from export.stages.pooling import run_pooling_stage, with_engine_outputs
from export.stages.precision import run_precision_stage
from export.stages.quantize import calibration_set, run_quantize_stage
from export.stages.result import StageResult
from export.stages.rope import run_rope_stage
from export.stages.validation import run_validation_stage
from export.validate import failures
from plugins.identity import PLUGIN_LIB, STATIC_PLUGIN_LIB
from plugins.locate import find_static_plugin_library, plugin_library_status

EXAMPLE = "example: python -m export.build --model demo/ckpt.pt --max-len 2048"


def build_parser() -> Parser:
    return build_flags.build_parser(__doc__.split("\n\n")[1], EXAMPLE)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    note = InterruptNote("nothing was written")
    return cli.run(
        build_parser(), lambda args: _main(args, argv, note), argv, usage_errors=(ThresholdError,), interrupt_note=note
    )


def _main(args: Namespace, argv: list[str], note: InterruptNote) -> int:
    flags = Flags.check(args)
    if args.max_memory is None and os.environ.get(memory.ENV):
        memory.env_limit()  # read before any work, like --max-memory (exit 2 for anything but a size)
    engine = engine_status_for(flags.precision)  # FP8 on a GPU without FP8 tensor cores: skipped, named here
    if args.require_engine:
        require_engine(engine)  # exit 3 in seconds, before anything is loaded or written
    planned = flags.planned(args, engine["status"] == "available")
    with BuildFolder(flags.out, force=args.force) as folder:
        tasks = (
            held_tasks(args.model, args.config, args.trust_pickle, args.attention) if args.adapter_task == ALL else None
        )
        folder.check_targets(planned.files() if tasks is None else task_files(planned.files(), tasks))
        disk_need, bench_interrupted = [0], False
        try:
            if tasks is None:
                report, error, files, hashes, bench_interrupted = _one(
                    args, argv, flags, planned, folder, note, disk_need
                )
            else:
                note.text = f"nothing was changed in {flags.out}/ (the previous build there, if any, is untouched)"
                new_run = lambda: Run(args, argv, flags, planned)  # noqa: E731
                report, error, files, hashes = build_all(new_run, folder.staged(), tasks, disk_need)
            folder.commit(
                files, hashes, on_done=lambda: setattr(note, "text", f"the finished build in {flags.out}/ is in place")
            )
        except (RoformerTrtError, KeyboardInterrupt):
            raise
        except Exception as e:  # a disk that filled up is the user's to fix: named as such, exit 2
            full = disk.full_disk(flags.out, disk_need[0], e)
            if full is None:
                raise
            raise full from e
    if error is not None:
        raise error
    if bench_interrupted:
        note.text = f"the benchmark; the validated build in {flags.out}/ is in place, without bench results"
        raise KeyboardInterrupt
    where = flags.out / (TASKS_INDEX if tasks else "report.json")
    print(report_text(report), end="") if args.json else print(f"ok: {where}")
    return EXIT_OK


def _one(args, argv, flags, planned, folder, note, disk_need):
    run = Run(args, argv, flags, planned)
    ckpt, plan = run.load()
    disk_need[0] = run.disk_need
    note.text = f"nothing was changed in {flags.out}/ (the previous build there, if any, is untouched)"
    folder.reuse(TIMING_CACHE, plan_file(flags.precision), sidecar_file(plan_file(flags.precision)))
    report, error = run.stages(ckpt, plan, folder.staged())
    return report, error, report.artifacts_sha256, report.artifacts_sha256, run.bench_interrupted


@dataclass
class Run:
    """One build: the command, its checked flags, and the seconds each stage took."""

    args: Namespace
    argv: list[str]
    flags: Flags
    planned: Planned
    timings: dict[str, float] = field(default_factory=dict)
    disk_need: int = 0
    calib: CalibSet | None = None  # --precision int8|fp8: read and checked before the model is built
    bench_interrupted: bool = False  # Ctrl-C during --bench: the build is published, then the command exits 130
    pooled: Resolved = field(default_factory=lambda: Resolved(None))  # the pooling, once the checkpoint is read

    def load(self, adapter_task: str | None = None) -> tuple[LoadedCheckpoint, Plan]:
        """Read and check the checkpoint, decide the plan, check the memory, then build the model."""
        a = self.args
        with self.timed("load"), status("reading checkpoint"):
            inspected = inspect_checkpoint(
                a.model, a.config, a.trust_pickle, attention=a.attention, adapter_task=adapter_task or a.adapter_task
            )
            facts = inspected.facts
            if self.flags.pooling is not None:  # --pooling auto reads the folder's sentence-transformers files
                self.pooled = resolve(self.flags.pooling, a.model, facts.hidden, inspected.task)
            plan = Plan.decide(a, facts, inspected.task, inspected.family.rotaries(inspected.config))
            estimate = memory.build_estimate(facts, inspected.params, plan.max_len)
            memory.require(estimate, "this build", a.max_memory)
            self.disk_need = disk.need(inspected.params, self.planned)
            disk.require(self.flags.out, self.disk_need)
            if self.flags.quant is not None:  # a bad calibration file is refused before any work
                self.calib = calibration_set(self.flags.quant, facts, plan.max_len)
            if inspected.config_source.startswith("--config"):
                info(f"using {inspected.config_source} instead of the checkpoint's own config")
            if inspected.weights_dtype != "float32":
                info(f"weights stored as {inspected.weights_dtype}")
            ckpt = materialize(inspected, table_rows=plan.max_len)
        if plan.profiles.added_last:
            info(f"--profiles tops end below --max-len {plan.max_len}: added a last profile up to {plan.max_len}")
        return ckpt, plan

    def stages(
        self, ckpt: LoadedCheckpoint, plan: Plan, work: Path, shapes=None, before_validation=None
    ) -> tuple[Report, RoformerTrtError | None]:
        """Every stage into `work`; returns the saved report and the error to raise once it is in place. shapes: the
        validation shapes (None: export.build's); before_validation(artifacts): a check of the graphs first."""
        a = self.args
        results: dict[str, StageResult[Any]] = {}
        with self.timed("export"):
            results["export"] = run_export_stage(
                ckpt.model, ckpt.task, work, plan.max_len, a.exporter, self.flags.opset
            )
        if a.rope != "none":
            with self.timed("rotary"):
                results["rewrite"] = run_rope_stage(a.rope, ckpt, work, plan.max_len, plan.profiles.choices)
        trt_key = rope_key(a.rope) if "rewrite" in results else ONNX_KEY
        pooling = self.pooled.pooling
        if pooling is not None:  # the fp32 TensorRT-bound graph gains sentence_embedding, before precision
            with self.timed("pooling"):
                results["pooling"] = run_pooling_stage(
                    self.pooled, work / _artifacts(results)[trt_key], trt_key, rotary_function=a.rope == "plugin"
                )
        self.low_precision(results, ckpt, plan, work, trt_key)
        if pooling is not None and TENSORRT_ONNX_KEY in _artifacts(results):
            results["pooling"] = with_engine_outputs(
                results["pooling"], work / _artifacts(results)[TENSORRT_ONNX_KEY], plan.max_len
            )
        if before_validation is not None:
            before_validation(_artifacts(results))
        if not a.skip_validation:
            with self.timed("validation"):
                results["validation"] = run_validation_stage(
                    _graphs(results),
                    ckpt.model,
                    ckpt.task,
                    ckpt.facts,
                    shapes or plan.shapes,
                    self.flags.thresholds,
                    pooling,
                )
            if failures(results["validation"].cases):  # where the graph leaves PyTorch, for one failing case
                with self.timed("diagnosis"):
                    diagnosis = run_diagnosis_stage(
                        results["validation"].cases, _graphs(results), ckpt, self.flags.thresholds, work
                    )
                if diagnosis is not None:
                    results["diagnosis"] = diagnosis
        error = self.engine(results, ckpt, plan, work)
        if error is None and a.bench and not self.why_no_engine(results):
            try:
                with self.timed("bench"):
                    results["bench"] = self.bench(results, ckpt, plan, work)
            except KeyboardInterrupt:  # the benchmark is an addition: the validated build is published without it
                self.bench_interrupted = True
                info("benchmark interrupted: publishing the validated build without bench results")
        return self.finish(results, ckpt, plan, work, error)

    def low_precision(self, results: dict, ckpt, plan: Plan, work: Path, trt_key: str) -> None:
        """The precision stage (fp16/bf16 graphs), or for int8/fp8 the quantization stage, from the fp32
        TensorRT-bound graph; none after a failed rotary rewrite (the quantized graph would have no sites)."""
        arts, outputs = _artifacts(results), self.pooled.pooling.outputs if self.pooled.pooling else None
        if self.flags.quant is None:
            with self.timed("precision"):
                results["precision"] = run_precision_stage(
                    self.flags.precision, work / arts[trt_key], trt_key, outputs=outputs
                )
        elif not results["rewrite"].failure:
            cpu_key = rope_key("onnx") if self.args.rope == "onnx" else ONNX_KEY
            assert self.calib is not None, "load() reads the calibration set whenever the build quantizes"
            with self.timed("quantize"):
                results["quantize"] = run_quantize_stage(
                    self.flags.quant,
                    self.calib,
                    work / arts[trt_key],
                    trt_key,
                    work / arts[cpu_key],
                    cpu_key,
                    ckpt,
                    plan.shapes,
                    self.flags.thresholds,
                    self.pooled.pooling,
                )

    def engine(self, results: dict, ckpt, plan: Plan, work: Path) -> RoformerTrtError | None:
        """The engine stage, only from a graph that kept every rotary site and matched PyTorch in ORT; its
        error (a failed parse or build) is returned for the report to record."""
        why_not = self.why_no_engine(results)
        if why_not:
            results["engine"] = StageResult(
                {"status": "skipped", "reason": why_not, "profiles": plan.profiles.to_report()}
            )
            return None
        try:
            with self.timed("engine"):
                results["engine"] = run_engine_stage(
                    work / _artifacts(results)[TENSORRT_ONNX_KEY],
                    self.flags.precision,
                    plan.profiles,
                    validate=not self.args.skip_validation,
                    ckpt=ckpt,
                    thresholds=self.flags.thresholds,
                    workspace_mib=self.args.workspace_mib,
                    pooling=self.pooled.pooling,
                )
        except RoformerTrtError as e:  # parser errors, a failed build: the report still says what happened
            results["engine"] = StageResult(
                {"status": "failed", "reason": str(e), "profiles": plan.profiles.to_report()},
                failure=f"engine stage: {e}",
            )
            return e
        return None

    @staticmethod
    def why_no_engine(results: dict) -> str | None:
        if "rewrite" in results and results["rewrite"].failure:
            return "the rotary stage failed"
        if "quantize" in results and results["quantize"].failure:
            return "the quantized graph departs from its placement"
        if "validation" in results and failures(results["validation"].cases):
            return "the ONNX graphs failed validation"
        return None

    def bench(self, results: dict, ckpt, plan: Plan, work: Path) -> StageResult:
        arts = _artifacts(results)
        engines = (results["engine"].section or {}).get("engines") or []
        plan_path = work / engines[0]["plan"] if engines else None
        return run_bench_stage(
            plan.grid,
            work,
            ort_graph=work / arts.get(rope_key("onnx"), arts[ONNX_KEY]),
            plan=plan_path,
            plugin_lib=plugin_library_status().get("path"),
            model=ckpt.model,
            facts=ckpt.facts,
            iters=self.args.bench_iters,
            compile_=self.args.bench_compile,
        )

    def finish(
        self, results: dict, ckpt, plan: Plan, work: Path, error: RoformerTrtError | None
    ) -> tuple[Report, RoformerTrtError | None]:
        """Assemble the report, judge it (export.report.verdict, on the files in `work`), save it; returns it and the
        error to raise: the engine stage's own, else the verdict's (build_error), else --require-engine's."""
        report = assemble_report(self, results, ckpt, plan, work)
        checks = judge(report, self.flags.thresholds, work, own_flag=False)
        report.passed = passed(checks)
        where = diagnosis_summary(report.diagnosis)
        verdict_error = build_error(report, checks, validated=not self.args.skip_validation, where=where)
        outputs = [c for c in checks if c.rule == OUTPUT and not c.passed]
        if outputs and not report.failure:
            report.failure = f"{len(outputs)} validation check(s) failed" + (f"; {where}" if where else "")
        if error is None:
            error = verdict_error
        if error is None and self.args.require_engine and (report.engine or {}).get("status") != "built":
            error = UnavailableError(f"--require-engine: {(report.engine or {}).get('reason')}")
        save_report(report, work)
        return report, error

    @contextmanager
    def timed(self, stage: str):
        """Times the stage; after it, what it freed goes back to the system, so the next stage's peak starts from
        what is still live (export.memory.release_freed)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[stage] = round(self.timings.get(stage, 0.0) + time.perf_counter() - t0, 2)
            memory.release_freed()


def assemble_report(
    run: Run, results: dict[str, StageResult], ckpt: LoadedCheckpoint, plan: Plan, work: Path
) -> Report:
    """The one place report.json is put together: every section from the stage that produced it."""

    def section(name):
        return results[name].section if name in results else None

    artifacts = _artifacts(results)
    failure = next((r.failure for r in results.values() if r.failure), None)
    report = Report(
        command=run.argv,
        version=__version__,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        model=model_facts(ckpt),
        checkpoint=checkpoint_facts(run.args, ckpt),
        export=section("export"),
        rewrite=section("rewrite"),
        plugin=plugin_library_status(),
        precision=section("precision"),
        quantization=section("quantize"),
        pooling=section("pooling"),
        adapter=ckpt.adapter,
        profiles=plan.profiles.to_report(),
        validation=[c for r in results.values() for c in r.cases],
        validation_skipped=True if run.args.skip_validation else None,
        diagnosis=section("diagnosis"),
        engine=section("engine"),
        bench=section("bench"),
        artifacts=artifacts,
        artifacts_sha256=artifact_hashes(work, artifacts.values()),
        timings=run.timings,
        failure=failure,
    )
    report.reproduce = reproduce(report, run.flags, ckpt)
    return report


def _artifacts(results: dict[str, StageResult]) -> dict[str, str]:
    return {k: v for r in results.values() for k, v in r.artifacts.items()}


def _graphs(results: dict[str, StageResult]) -> dict:
    return {k: v for r in results.values() for k, v in r.graphs.items()}


def reproduce(report: Report, flags: Flags, ckpt: LoadedCheckpoint) -> dict | None:
    """trtexec and Polygraphy commands a TensorRT user runs to check the engine independently."""
    trt_onnx = report.artifacts.get(TENSORRT_ONNX_KEY)
    if trt_onnx is None or not report.profiles:
        return None
    t = flags.thresholds.lookup(flags.precision, engine_key(flags.precision), "last_hidden_state")
    # Polygraphy compares element by element: our bound scaled_error <= rtol, i.e. max|e| <= rtol * max|ref|,
    # becomes its --atol with the largest reference magnitude the validation saw (max_abs / scaled_error).
    scales = [
        o["max_abs"] / o["scaled_error"]
        for c in report.validation
        for o in c["outputs"].values()
        if o.get("scaled_error")
    ]
    atol = max([t.atol] + ([t.rtol * max(scales)] if scales else []))
    plugin_lib = static_lib = None
    if (report.rewrite or {}).get("mode") == "plugin":  # a library that is not built here is named for the TRT host
        static = find_static_plugin_library()
        plugin_lib = (report.plugin or {}).get("path") or PLUGIN_LIB
        static_lib = str(static) if static else STATIC_PLUGIN_LIB
    cmds = reproduce_commands(
        trt_onnx=trt_onnx,
        reference_onnx="model.onnx",
        plan=plan_file(flags.precision),
        profiles=report.profiles,
        precision=flags.precision,
        vocab_size=ckpt.facts.vocab_size,
        type_vocab_size=ckpt.facts.type_vocab_size,
        atol=atol,
        rtol=0.0,
        plugin_lib=plugin_lib,
        static_plugin_lib=static_lib,
        inputs=ckpt.family.inputs,
        rank=3 if ckpt.task == "multiple-choice" else 2,
    )
    if report.pooling and report.pooling.get("graph") != ONNX_FILE:  # the reference is the unpooled export
        cmds["notes"].append(
            "model.onnx has no sentence_embedding (the TensorRT-bound graph gained it), so Polygraphy "
            f"compares only the outputs both have ({HIDDEN} if the engine kept it); report.json "
            "`validation` grades sentence_embedding against PyTorch."
        )
    return cmds


if __name__ == "__main__":
    sys.exit(main())

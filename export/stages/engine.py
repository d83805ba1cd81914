"""The engine stage of export.build: the TensorRT-bound file -> `<name>.plan`, validated against PyTorch.

Where TensorRT or a GPU is missing the stage is skipped with one line saying why and how to enable it,
and the `engine` section is {"status": "skipped", "reason", "profiles"}; `--require-engine` makes
export.build exit 3 before any work where the stage cannot run. Where both exist: build (or reuse, sidecar
permitting) with engines.build, run with engines.tensorrt.runner, grade at every profile's min/opt/max, a prime
length and padded rows (engines.tensorrt.validate); the cases join the report's validation, so engines.gate
gates them too.
The TensorRT calls are in engines/; this file only wires them, so it has no TensorRT code of its own.
"""

from __future__ import annotations

from pathlib import Path

from engines.tensorrt.availability import engine_status_for
from engines.tensorrt.builder import build_engine
from engines.tensorrt.graph import count_plugin_nodes
from engines.tensorrt.runner import EngineRunner
from engines.tensorrt.validate import validate_engine
from export.errors import UsageError
from export.folder.layout import plan_file, sidecar_file
from export.passes.pooling import Pooling
from export.progress import info
from export.report.schema import TIMING_CACHE, EngineSection, engine_key
from export.stages.result import StageResult
from export.validate import TorchReference
from plugins.locate import find_plugin_library


def run_engine_stage(
    trt_onnx: Path,
    precision: str,
    profiles,
    *,
    validate: bool,
    ckpt=None,
    thresholds=None,
    workspace_mib: int = 4096,
    pooling: Pooling | None = None,
) -> StageResult[EngineSection]:
    """The `engine` section, the plan artifact and the engine's validation cases (none when skipped or
    not validating); ckpt: the loaded checkpoint (its model is not changed: the CUDA reference is a copy);
    pooling: what the graph's sentence_embedding computes, graded like the other outputs."""
    status = engine_status_for(precision)
    if status["status"] != "available":
        info(f"engine stage skipped: {status['reason']}")
        return StageResult({**status, "profiles": profiles.to_report()})
    plugin_lib = None
    if count_plugin_nodes(trt_onnx):
        plugin_lib = find_plugin_library()
        if plugin_lib is None:
            raise UsageError(
                f"{trt_onnx.name} has RoformerRotary nodes but the plugin library is not built; "
                "run python -m plugins.build (or pass --rope onnx)"
            )
    out = trt_onnx.parent
    name = plan_file(precision).removesuffix(".plan")
    info(f"building TensorRT engine {name}.plan ({len(profiles)} profiles)\n{profiles.table()}")
    entry = build_engine(
        trt_onnx,
        out,
        name=name,
        plugin_lib=plugin_lib,
        profiles=profiles,
        precision=precision,
        workspace_mib=workspace_mib,
        timing_cache=out / TIMING_CACHE,
    )
    plan = Path(entry["plan"])
    info(
        f"{'reused' if entry['reused'] else 'built'} {plan.name}"
        + ("" if entry["reused"] else f" in {entry.get('build_seconds')} s")
    )
    section: EngineSection = {
        **status,
        "status": "built",
        "engines": [
            {
                "plan": plan.name,
                "sidecar": sidecar_file(plan.name),
                "precision": precision,
                "onnx": trt_onnx.name,
                "profiles": profiles.to_report(),
                "reused": entry["reused"],
                "build_seconds": entry.get("build_seconds"),
                "plugin_layers": entry.get("plugin_layers"),
                "rebuild_reasons": entry.get("rebuild_reasons", []),
            }
        ],
    }
    artifacts = {engine_key(precision): plan.name, engine_key(precision) + ".sidecar": sidecar_file(plan.name)}
    if not validate:
        return StageResult(section, artifacts=artifacts)
    runner = EngineRunner(plan, plugin_lib)
    reference = TorchReference(ckpt.model, ckpt.task, device="cuda", pooling=pooling)  # only runs where CUDA is
    cases = validate_engine(
        runner,
        reference,
        profiles,
        precision,
        ckpt.facts.vocab_size,
        ckpt.facts.type_vocab_size,
        thresholds,
        outputs=pooling.outputs if pooling else None,
    )
    return StageResult(section, artifacts=artifacts, cases=cases)

"""`export.build --bench`: engines.bench over the build's own profiles, into `<out>/bench/`.

It gets the files it times (the ORT graph, the plan) from the orchestrator, never from the report.

An addition to a build, never a condition of it: it runs after validation and the engine stage, and Ctrl-C
during it publishes the validated build without bench results (export.build, exit 130). Before the first timed run
it says what it will run and about how long that takes here; each point is named as it starts (a line per
point off a terminal).

Grid: by default each profile's opt sequence length at the batch min and opt (`--bench-grid 1x128,8x512`
overrides). Backends: the engine when one was built, PyTorch fp32 (fp16 too on a GPU; torch.compile
with `--bench-compile`), ONNX Runtime on the ORT-runnable graph (`--rope onnx` file, else the plain
export). On a machine without TensorRT or a GPU the ORT and PyTorch CPU rows are still measured.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path

import onnx
import onnxruntime
import torch

from engines.bench import run_bench, write_results
from engines.tensorrt.graph import input_axes
from engines.tensorrt.profiles import INT32_MAX
from export.errors import UsageError
from export.folder.layout import BENCH_DIR
from export.inputs.numbers import NumberError, parse_int_list
from export.progress import info
from export.report.schema import BenchSection, bench_key
from export.stages.result import StageResult


def parse_grid_text(text: str) -> list[tuple[int, int]]:
    """ "BxS,BxS" -> [(B, S), ...] as written (checked before the checkpoint is read)."""
    grid = []
    for item in text.split(","):
        try:
            b, s = parse_int_list(item.lower(), what="--bench-grid", lo=1, hi=INT32_MAX, sep="x")
        except (NumberError, ValueError):  # not ASCII digits, out of range, or not two of them
            raise UsageError(
                f"--bench-grid {text!r}: expected BATCHxSEQ items of positive integers, e.g. --bench-grid 1x128,8x512"
            ) from None
        grid.append((b, s))
    return grid


def parse_grid(text: str | None, profiles) -> list[tuple[int, int]]:
    """ "BxS,BxS" -> [(B, S), ...], each inside the profiles; None -> the default grid."""
    if text is None:
        batches = sorted({profiles.batch.min, profiles.batch.opt})
        return [(b, s.opt) for s in profiles.sequences for b in batches]
    grid = parse_grid_text(text)
    for b, s in grid:
        profiles.profile_for(b, s)  # UsageError naming the range when (b, s) is outside every profile
    return grid


def run_bench_stage(
    grid,
    out: Path,
    *,
    ort_graph: Path,
    plan: Path | None,
    plugin_lib: str | None,
    model,
    facts,
    iters: int,
    compile_: bool,
) -> StageResult[BenchSection]:
    """Benchmark into out/bench/: ORT on `ort_graph`, the engine `plan` when one was built (with `plugin_lib`),
    PyTorch on `model` (never changed: the backends work on copies where they convert it)."""
    backends = ["trt", "torch-fp32", "torch-fp16", "ort"] + (["torch-compile"] if compile_ else [])
    info("benchmark: the build is validated; Ctrl-C stops the benchmark and publishes the build without its results")
    results = run_bench(
        grid,
        model=model,
        onnx_path=ort_graph,
        plan=plan,
        plugin_lib=plugin_lib if plan else None,
        backends=backends,
        iters=iters,
        warmup=max(1, iters // 10),
        vocab_size=facts.vocab_size,
        type_vocab_size=facts.type_vocab_size,
        input_names=list(input_axes(onnx.load(str(ort_graph), load_external_data=False))),
        config=getattr(model, "config", None),  # for the estimate's FLOPs (sequence_cost)
    )
    meta: BenchSection = {
        "date": time.strftime("%Y-%m-%d"),
        "host": host_description(),
        "ort_graph": ort_graph.name,
        "plan": plan.name if plan else None,
        "iters": iters,
    }
    paths = write_results(results, out / BENCH_DIR, dict(meta))
    files = {k: str(Path(v).relative_to(out)) for k, v in paths.items()}
    section: BenchSection = {**meta, "files": files, "results": [r.__dict__ for r in results]}
    return StageResult(section, artifacts={bench_key(k): f for k, f in files.items()})


def host_description() -> str:
    """GPU name or CPU model, with core count and the torch / ONNX Runtime versions the numbers came from."""
    if torch.cuda.is_available():
        device = torch.cuda.get_device_name(0)
    else:
        cpu = next(
            (line.split(":", 1)[1].strip() for line in _cpuinfo() if line.startswith("model name")),
            platform.processor() or "CPU",
        )
        device = f"{cpu}, {torch.get_num_threads()} threads"
    return f"{device}; torch {torch.__version__}, onnxruntime {onnxruntime.__version__}"


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []

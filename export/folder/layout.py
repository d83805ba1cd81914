"""The files a build writes into its folder: one spelling of every name, and which names a run will write.

The stages name their outputs through these functions, and `planned_files` lists, from the flags alone,
every file a run may write, so `export.build` can refuse to overwrite a user's file before any work.
`--pooling` writes no file of its own: the fp32 TensorRT-bound graph (`rope_file(mode)`, or ONNX_FILE with
`--rope none`) gains the `sentence_embedding` output under its own name, and the precision graphs and the
plan made from it inherit it.
"""

from __future__ import annotations

from dataclasses import dataclass

from export.report.schema import CPU_TWIN, REPORT_JSON, REPORT_MD, TIMING_CACHE

ONNX_FILE = "model.onnx"
BENCH_DIR = "bench"
BENCH_FILES = {"json": "bench.json", "markdown": "bench.md", "plot": "bench.png"}
DIAGNOSIS_DIR = "diagnosis"
DIAGNOSIS_FILES = {"json": "diagnosis.json", "md": "diagnosis.md", "png": "diagnosis.png"}
MANIFEST = ".roformer-trt-files.json"  # what runs of roformer-trt wrote here (export.folder.staging)
TASKS_INDEX = "tasks.json"  # export.build --task all: the index of the per-task sub-folders (export/build_tasks.py)


def data_file(graph: str) -> str:
    """The external-data file written beside graph `graph`."""
    return graph + ".data"


def rope_file(mode: str) -> str:
    return f"model.rope-{mode}.onnx"


def precision_files(source: str, precision: str) -> dict[str, str]:
    """{variant: file} of the precision stage for source graph `source` ("model.rope-plugin.onnx")."""
    if precision == "fp32":
        return {}
    stem = source.removesuffix(".onnx")
    variants = [precision] + (["bf16-emulated"] if precision == "bf16" else [])
    return {v: f"{stem}.{v}.onnx" for v in variants}


def cpu_graph(rope: str) -> str:
    """The fp32 graph ONNX Runtime serves on CPU hosts (engines.triton's `<name>_onnx`): the rope-onnx graph, else the
    plain export (the plugin graph needs TensorRT)."""
    return rope_file("onnx") if rope == "onnx" else ONNX_FILE


def cpu_twin_file(source: str) -> str:
    """The INT8 CPU twin of graph `source` (--precision int8): "model.int8-cpu.onnx"."""
    return f"{source.removesuffix('.onnx')}.{CPU_TWIN}.onnx"


def diagnosis_file(kind: str) -> str:
    """The diagnosis written when validation fails (export/stages/diagnosis.py): kind json | md | png."""
    return f"{DIAGNOSIS_DIR}/{DIAGNOSIS_FILES[kind]}"


def plan_file(precision: str) -> str:
    return f"model.{precision}.plan"


def sidecar_file(plan: str) -> str:
    return plan + ".json"


@dataclass(frozen=True)
class Planned:
    """What a run of export.build is going to write, decided from its flags."""

    rope: str  # plugin | onnx | none
    precision: str
    engine: bool  # the engine stage can run here
    bench: bool
    diagnose: bool = True  # validation runs, so a failing one may write the diagnosis

    def files(self) -> list[str]:
        names = [ONNX_FILE, data_file(ONNX_FILE), REPORT_JSON, REPORT_MD]
        source = ONNX_FILE
        if self.rope != "none":
            source = rope_file(self.rope)
            names.append(source)
        for graph in precision_files(source, self.precision).values():
            names += [graph, data_file(graph)]
        if self.precision == "int8":
            twin = cpu_twin_file(cpu_graph(self.rope))
            names += [twin, data_file(twin)]
        if self.engine:
            names += [plan_file(self.precision), sidecar_file(plan_file(self.precision)), TIMING_CACHE]
        if self.bench:
            names += [f"{BENCH_DIR}/{f}" for f in BENCH_FILES.values()]
        if self.diagnose:
            names += [diagnosis_file(kind) for kind in DIAGNOSIS_FILES]
        return names

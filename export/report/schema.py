"""report.json, the spine of a build: one typed definition of its sections, with a schema version.

Each stage of export.build returns its own section (the TypedDicts below); `export/build.py` puts them
into one `Report`; `export/report/persist.py` writes it (JSON for machines, report.md for people) and reads
it back for `engines.gate`, `engines.triton` and `engines.serving`, which refuse a report of another
schema version or a malformed one (`ReportError`, exit 2). A report without `schema_version` is
version 0. A leaf module: it imports nothing from the project.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any, TypedDict

# 2: scaled_error and row_cosine replace max_rel; min_row_cosine; diagnosis.
# 3: model families (model.family, inputs, attn_implementation, rotary, attention, table, prompts), the pooling
#    section (sentence-transformers' pipeline), the adapter section (task adapters merged), export's repaired
#    rotary caches. A version-2 report lacks what the gate, Triton and serving now read: rebuilt, not guessed.
SCHEMA_VERSION = 3
REPORT_JSON, REPORT_MD = "report.json", "report.md"
TIMING_CACHE = "timing.cache"  # TensorRT's timing cache, shared by every build into the folder (not an artifact)
REBUILD = "rebuild it with python -m export.build"


class ReportError(ValueError):
    """A report.json that cannot be used: one line naming the problem, ending with the fix."""


# ---- sections --------------------------------------------------------------------------------------


class ModelSection(TypedDict, total=False):
    """The family-blind fields (export.families.facts.ModelFacts.to_report), then the family's own (RoFormer:
    embedding_size, rotary_value; ModernBERT: local_attention, layer_types, rope_theta; GTE, NomicBERT, EuroBERT:
    rope_theta, rope_type, rope_parameters; EuroBERT: num_key_value_heads)."""

    family: str
    layers: int
    hidden: int
    heads: int
    head_dim: int
    vocab_size: int
    type_vocab_size: int | None  # None: no token_type_ids input
    max_position_embeddings: int
    task: str
    inputs: list[str]
    attn_implementation: str  # "eager" or "sdpa"
    params: int
    table: str | None  # a stored formula table: "checkpoint" or "generated"; None: the family has none
    rotary: list[dict]  # per layer: layout, dim, table, theta, rope_type, rope_parameters, sites, heads
    attention: list[str]  # per layer: "full" or "sliding, half-window N"
    prompts: dict[str, str]  # text prefixes the family's checkpoints expect, by prompt name ({}: none)
    embedding_size: int
    rotary_value: bool


class CheckpointSection(TypedDict, total=False):
    path: str
    format: str
    sha256: str
    config_source: str  # which config was used: the checkpoint's, the one beside it, or --config
    weights_dtype: str  # the stored weights' dtype, e.g. "float32"
    # the config's auto_map (class -> "repo--module.Class"), left aside because its model_type is built with
    # transformers' own class (export/families/registry.py); None: the config has none
    auto_map_ignored: dict[str, str] | None


class ExportSection(TypedDict):
    exporter: str
    opset: int
    max_len: int
    table_rows: int
    rotary_caches_expanded: int  # exporter RotaryEmbedding nodes whose batch-1 caches were expanded (rotary/repair.py)
    dtype: str
    seconds: float
    files: list[str]


class RewriteSection(TypedDict, total=False):
    mode: str  # plugin | onnx
    expected: int  # rotary sites: 2 per layer, 3 with rotary_value
    expected_nodes: int
    found: int
    rewritten: int
    nodes: int
    already_rewritten: int
    skipped: list[dict]  # {"site", "layer", "reason"}
    layers: list[dict]


class PluginSection(TypedDict, total=False):
    status: str  # built | unavailable
    path: str
    sha256: str
    reason: str
    tensorrt_headers: str  # the version of the TensorRT headers the library was built against, when known


class PrecisionSection(TypedDict, total=False):
    precision: str
    source: str
    ops: dict[str, dict[str, int]]  # op -> {"low": n, "fp32": n}
    casts: int


class PoolingSection(TypedDict, total=False):
    """`export.build` with a pooling only (`--pooling MODE`, or `auto` on a sentence-transformers folder)."""

    mode: str  # sentence-transformers' mode: mean | cls | max | mean_sqrt_len_tokens | weightedmean | lasttoken,
    # or several joined by "+" (concatenated)
    normalize: bool  # L2-normalised (after the truncation)
    dense: list[dict]  # the Dense layers in order: {in_features, out_features, bias, activation}
    truncate_dim: int | None  # Matryoshka: the first N channels kept, before the normalisation
    width: int  # sentence_embedding's channels
    matryoshka_dimensions: list[int] | None  # the widths the checkpoint declares ([]: any), None: it says nothing
    source: dict  # {kind: "sentence-transformers" | "flags", folder, files: {name: sha256}, flags: [...]}
    graph: str  # the fp32 TensorRT-bound graph that gained sentence_embedding (its file name kept)
    outputs: list[str]  # that graph's outputs, and the engine's
    hidden_state: dict  # last_hidden_state {dtype, shape} as the graph declared it before pooling
    engine_graph: str  # the file TensorRT builds from (after the precision stage)
    engine_outputs: dict[str, dict]  # its outputs: name -> {dtype, shape}
    request_bytes: dict  # batch 8 x max_len: bytes per engine output, last_hidden_state, sentence_embedding, saved


class _ProfileAxes(TypedDict):
    index: int
    batch: list[int]  # [min, opt, max]
    sequence: list[int]


class ProfileRow(_ProfileAxes, total=False):
    choices: list[int]  # multiple-choice heads only: [c, c, c], the engine's fixed --choices


class OutputStats(TypedDict, total=False):  # the statistics are defined in export/report/compare.py
    max_abs: float
    mean_abs: float
    scaled_error: float  # max_abs / max|ref|
    cosine: float
    row_cosine: float  # min over non-padded rows; only outputs with rows (last_hidden_state, sentence_embedding)
    n_nan: int
    atol: float
    rtol: float
    min_cosine: float
    min_row_cosine: float
    passed: bool
    error: str  # instead of the statistics when the output could not be compared


class ValidationCase(TypedDict):
    graph: str
    precision: str
    batch: int
    seq: int
    choices: int | None
    padded_rows: int
    outputs: dict[str, OutputStats]
    passed: bool


class DiagnosisSection(TypedDict, total=False):
    """export.diagnose on one failing case (export/stages/diagnosis.py): where the graph first diverges."""

    graph: str  # artifact key of the graph diagnosed
    reference: str  # "pytorch"
    batch: int
    seq: int
    first_divergence: dict | None  # {"stage", "layer", "point", "nodes", ...}; None: nothing diverges
    layers: list[dict]  # per landmark: stage, layer, scaled_error, row_cosine, passed
    complete: bool  # False: the time cap stopped it (`reason` says where)
    reason: str
    seconds: float
    files: dict[str, str]  # json / md / png beside the report


class EngineSection(TypedDict, total=False):
    status: str  # built | skipped | failed
    reason: str
    profiles: list[ProfileRow]
    engines: list[dict]  # plan, sidecar, precision, onnx, profiles, reused, build_seconds, plugin_layers


class BenchSection(TypedDict, total=False):
    date: str
    host: str
    ort_graph: str
    plan: str | None
    iters: int
    files: dict[str, str]
    results: list[dict]


# ---- artifact keys: the one spelling of report.json "artifacts" keys ---------------------------------

PRECISIONS = ("fp32", "fp16", "bf16", "int8", "fp8")  # what a graph computes in; thresholds exist for each
ONNX_KEY = "onnx"  # model.onnx, the plain export
TENSORRT_ONNX_KEY = "tensorrt-onnx"  # the file the engine is built from
EMULATED = "-emulated"  # "bf16-emulated": an fp32 graph that rounds to bf16 where the real one stores bf16
CPU_SUFFIX = "-cpu"
CPU_TWIN = "int8" + CPU_SUFFIX  # "onnx.int8-cpu": the INT8 ONNX Runtime model for CPU hosts (passes/quantize/cpu_twin)


def rope_key(mode: str) -> str:
    return f"rope-{mode}"


def precision_key(source_key: str, variant: str) -> str:
    """variant: fp16, bf16, bf16-emulated, int8 or fp8; e.g. "rope-plugin.fp16", "rope-plugin.int8"."""
    return f"{source_key}.{variant}"


def engine_key(precision: str) -> str:
    return f"engine-{precision}"


def bench_key(kind: str) -> str:
    return f"bench-{kind}"


def diagnosis_key(kind: str) -> str:
    return f"diagnosis-{kind}"


def key_precision(key: str) -> str | None:
    """The precision a graph artifact computes in, read from its key (never from a label beside it):
    "onnx", "rope-plugin" -> fp32; "rope-plugin.fp16" -> fp16; "rope-plugin.bf16-emulated" -> bf16;
    "rope-plugin.int8" -> int8; "onnx.int8-cpu" -> int8 (the CPU twin); "engine-fp16" -> fp16. None for a key
    that names no validated graph (a sidecar, a bench file)."""
    if not isinstance(key, str):
        return None
    if key.startswith("engine-"):
        precision = key.removeprefix("engine-")
    elif "." in key:
        precision = key.rsplit(".", 1)[1].removesuffix(EMULATED).removesuffix(CPU_SUFFIX)
    elif key == ONNX_KEY or key.startswith("rope-"):
        precision = "fp32"
    else:
        return None
    return precision if precision in PRECISIONS else None


# ---- the report ------------------------------------------------------------------------------------


@dataclass
class Report:
    command: list[str]
    version: str
    created: str
    tool: str = "roformer-trt"
    schema_version: int = SCHEMA_VERSION
    model: ModelSection | None = None
    checkpoint: CheckpointSection | None = None
    export: ExportSection | None = None
    rewrite: RewriteSection | None = None
    plugin: PluginSection | None = None
    precision: PrecisionSection | None = None
    pooling: PoolingSection | None = None  # optional (no schema bump): readers of version 1 ignore it
    adapter: dict | None = None  # --task: the task adapter merged into the weights (export/families/adapters.py)
    quantization: dict | None = None  # --precision int8 | fp8: export.stages.quantize
    profiles: list[ProfileRow] = field(default_factory=list)
    validation: list[ValidationCase] = field(default_factory=list)
    validation_skipped: bool | None = None
    diagnosis: DiagnosisSection | None = None
    engine: EngineSection | None = None
    bench: BenchSection | None = None
    reproduce: dict | None = None  # commands that check the engine with NVIDIA's own tools
    artifacts: dict[str, str] = field(default_factory=dict)  # key -> path relative to the report's folder
    artifacts_sha256: dict[str, str] = field(default_factory=dict)  # relative path -> sha256 of the file
    timings: dict[str, float] = field(default_factory=dict)  # stage -> seconds
    passed: bool = False
    failure: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: Any, source: str = "report.json") -> Report:
        """Check the schema version and every section's shape; ReportError (one line) otherwise."""
        if not isinstance(data, dict):
            raise ReportError(f"{source} is not a JSON object; {REBUILD}")
        version = data.get("schema_version", 0)
        if version != SCHEMA_VERSION or isinstance(version, bool):
            raise ReportError(
                f"{source} has schema version {version!r}, this tool reads version {SCHEMA_VERSION}; {REBUILD}"
            )
        known = {f.name for f in fields(cls)}
        for name, want in _SHAPES.items():
            if name in data and data[name] is not None and not _is(data[name], want):
                raise ReportError(f"{source}: {name!r} must be {want}, got {_json_type(data[name])}; {REBUILD}")
        for name in ("command", "version", "created"):
            if name not in data:
                raise ReportError(f"{source}: {name!r} is missing; {REBUILD}")
        for i, case in enumerate(data.get("validation") or []):
            _check_case(case, f"{source}: validation[{i}]")
        _check_paths(data.get("artifacts") or {}, f"{source}: artifacts")
        _check_paths({p: p for p in data.get("artifacts_sha256") or {}}, f"{source}: artifacts_sha256")
        for path, digest in (data.get("artifacts_sha256") or {}).items():
            if not (isinstance(digest, str) and _SHA256.fullmatch(digest)):
                raise ReportError(f"{source}: artifacts_sha256[{path!r}] is not a sha256 hex digest; {REBUILD}")
        return cls(**{k: v for k, v in data.items() if k in known})


_SHA256 = re.compile(r"[0-9a-f]{64}")
_SHAPES = {
    "command": "list",
    "version": "str",
    "created": "str",
    "tool": "str",
    "model": "object",
    "checkpoint": "object",
    "export": "object",
    "rewrite": "object",
    "plugin": "object",
    "precision": "object",
    "pooling": "object",
    "adapter": "object",
    "quantization": "object",
    "profiles": "list",
    "validation": "list",
    "validation_skipped": "bool",
    "diagnosis": "object",
    "engine": "object",
    "bench": "object",
    "reproduce": "object",
    "artifacts": "object",
    "artifacts_sha256": "object",
    "timings": "object",
    "passed": "bool",
    "failure": "str",
}
_TYPES = {"list": list, "str": str, "object": dict, "bool": bool}


def _is(value: Any, want: str) -> bool:
    return isinstance(value, _TYPES[want])


def _json_type(value: Any) -> str:
    return {dict: "object", list: "list", str: "str", bool: "bool", int: "number", float: "number"}.get(
        type(value), "null" if value is None else type(value).__name__
    )


def _check_case(case: Any, where: str) -> None:
    if not isinstance(case, dict):
        raise ReportError(f"{where} must be an object; {REBUILD}")
    for key, typ in (("graph", str), ("precision", str), ("outputs", dict)):
        if not isinstance(case.get(key), typ):
            raise ReportError(f"{where}: {key!r} must be {typ.__name__}, got {_json_type(case.get(key))}; {REBUILD}")
    for key in ("batch", "seq"):
        if not isinstance(case.get(key), int) or isinstance(case.get(key), bool):
            raise ReportError(f"{where}: {key!r} must be an integer; {REBUILD}")
    for name, stats in case["outputs"].items():
        if not isinstance(stats, dict):
            raise ReportError(f"{where}: outputs[{name!r}] must be an object; {REBUILD}")


def _check_paths(paths: dict, where: str) -> None:
    """Artifact paths are relative file paths inside the report's folder: no absolute path, no '..'."""
    for key, rel in paths.items():
        if (
            not isinstance(rel, str)
            or not rel
            or "\x00" in rel
            or rel.startswith(("/", "\\"))
            or ".." in re.split(r"[\\/]", rel)
        ):
            raise ReportError(f"{where}[{key!r}] = {rel!r} is not a path inside the build folder; {REBUILD}")

"""Triton `config.pbtxt` for a roformer-trt build: read the I/O, build the config, check it.

In:  an ONNX graph (names, dtypes and `dim_param` shapes of its inputs/outputs), optionally an
     engine entry of `report.json` and its sidecar JSON (profiles, tensor dtypes).
Out: a `model_config_pb2.ModelConfig` and its text form. `check_config` parses the text with
     tritonclient's protobuf (so an unknown field or a typo fails here, not in tritonserver) and
     compares names, dims and dtypes with the ONNX graph.

Triton conventions used (model_config.proto): with `max_batch_size > 0` the batch axis is implicit,
so `dims` is the ONNX shape without its first axis, every symbolic axis written as -1.
A `tensorrt_plan` model gets ONE instance group that lists every optimization profile: Triton's TensorRT
backend makes one execution context per listed profile in each instance and picks, per batch of requests,
a profile whose min..max holds its shapes, while an instance listing a single profile refuses every shape
outside it (engines/triton/backend_rules.py models those rules, with the source lines).
No tensorrt import: everything here runs on a CPU host.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import helper

from export.errors import UnavailableError, UsageError, VerificationError
from export.report.schema import ModelSection

MAX_SEQUENCE_LENGTH = "max_sequence_length"  # config parameter: the positions a served model takes
PROMPTS = "prompts"  # config parameter: {prompt name: text prefix} as JSON (engines.client --prompt NAME)

# numpy dtype name -> Triton DataType enum name (model_config.proto)
TRITON_DTYPE = {
    "bool": "TYPE_BOOL",
    "uint8": "TYPE_UINT8",
    "int8": "TYPE_INT8",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
    "float16": "TYPE_FP16",
    "float32": "TYPE_FP32",
    "float64": "TYPE_FP64",
    "bfloat16": "TYPE_BF16",
}
QUEUE_DELAY_US = 100  # how long a request may wait for others of its shape to join its batch
# spellings a sidecar may use for a TensorRT DataType (str(trt.DataType.HALF) is "DataType.HALF")
_TRT_DTYPE = {
    "FLOAT": "float32",
    "HALF": "float16",
    "BF16": "bfloat16",
    "INT8": "int8",
    "INT32": "int32",
    "INT64": "int64",
    "BOOL": "bool",
    "UINT8": "uint8",
}


@dataclass(frozen=True)
class TensorSpec:
    """One graph input/output. shape: full ONNX shape; a str is a named axis, -1 an unnamed one."""

    name: str
    dtype: str  # numpy name: "int64", "float32", ...
    shape: tuple

    @property
    def batched(self) -> bool:
        return len(self.shape) > 0 and isinstance(self.shape[0], str)

    def triton_dims(self) -> list[int]:
        """Non-batch dims, symbolic -> -1 (e.g. [batch, sequence, 32] -> [-1, 32])."""
        return [d if isinstance(d, int) and d >= 0 else -1 for d in self.shape[1:]]


def _spec(value: onnx.ValueInfoProto) -> TensorSpec:
    t = value.type.tensor_type
    shape = tuple(
        d.dim_param if d.HasField("dim_param") else (d.dim_value if d.HasField("dim_value") else -1)
        for d in t.shape.dim
    )
    return TensorSpec(value.name, helper.tensor_dtype_to_np_dtype(t.elem_type).name, shape)


def read_onnx_io(model: onnx.ModelProto | Path | str) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Graph inputs (initializers excluded) and outputs; weights are not loaded for a path."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    return ([_spec(v) for v in model.graph.input if v.name not in inits], [_spec(v) for v in model.graph.output])


def _dtype_name(raw: str) -> str:
    s = str(raw).split(".")[-1]
    if s.upper() in _TRT_DTYPE:
        return _TRT_DTYPE[s.upper()]
    if s.lower() in TRITON_DTYPE:
        return s.lower()
    raise UsageError(f"sidecar dtype {raw!r} is not one of {sorted(_TRT_DTYPE)} or {sorted(TRITON_DTYPE)}")


def sidecar_dtypes(sidecar: dict) -> dict[str, str]:
    """{tensor name: numpy dtype} from a sidecar's `inputs`/`outputs` lists ({name, dtype} items) or a
    `tensors` mapping ({name: {dtype}}); {} when the sidecar records none."""
    out = {}
    for key in ("inputs", "outputs"):
        for item in sidecar.get(key, []) or []:
            if isinstance(item, dict) and "name" in item and "dtype" in item:
                out[item["name"]] = _dtype_name(item["dtype"])
    for name, item in (sidecar.get("tensors") or {}).items():
        if isinstance(item, dict) and "dtype" in item:
            out[name] = _dtype_name(item["dtype"])
    return out


def _pb2():
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError as e:
        raise UnavailableError(
            f"{e.name or e} is not installed; pip install 'tritonclient[grpc]' (the roformer-trt 'serving' extra)"
        ) from e
    return model_config_pb2, text_format


def make_config(
    name: str,
    platform: str,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    max_batch: int,
    dtypes: dict[str, str] | None = None,
    profiles: list[int] | None = None,
    instances: int = 1,
    queue_delay_us: int = QUEUE_DELAY_US,
    parameters: dict[str, str] | None = None,
):
    """ModelConfig for `platform` "tensorrt_plan", "onnxruntime_onnx" or "python" (Triton's Python backend; one
    KIND_CPU instance each). `dtypes` overrides the ONNX dtypes; `parameters` become `parameters { key value
    { string_value } }` (e.g. MAX_SEQUENCE_LENGTH, which engines.client reads to truncate).

    tensorrt_plan: one KIND_GPU instance group of `instances` instances per GPU, each listing every profile
    index in `profiles` (default [0]): any instance then takes any shape some profile takes (module docstring).
    dynamic_batching, when max_batch > 1: the queue delay only. Triton merges requests only when their
    inputs have equal shapes (model_config.proto, allow_ragged_batch) and up to max_batch_size; no
    preferred_batch_size, which Triton's batcher guide keeps for batch sizes that run much faster than others
    (profiles that differ by batch; ours share one batch range and differ by sequence length)."""
    mc, _ = _pb2()
    dtypes = dtypes or {}
    cfg = mc.ModelConfig(name=name, max_batch_size=max_batch)
    if platform == "python":
        cfg.backend = "python"
    else:
        cfg.platform = platform
    for key, value in (parameters or {}).items():
        cfg.parameters[key].string_value = str(value)
    for spec, field in [(s, cfg.input) for s in inputs] + [(s, cfg.output) for s in outputs]:
        dt = dtypes.get(spec.name, spec.dtype)
        if dt not in TRITON_DTYPE:
            raise UsageError(f"{spec.name}: dtype {dt} has no Triton type")
        if max_batch > 0 and not spec.batched:
            raise UsageError(
                f"{spec.name} has shape {list(spec.shape)}: its first axis must be the named "
                "batch axis to serve with max_batch_size > 0; pass --max-batch 0"
            )
        dims = spec.triton_dims() if max_batch > 0 else [d if isinstance(d, int) else -1 for d in spec.shape]
        field.add(name=spec.name, data_type=mc.DataType.Value(TRITON_DTYPE[dt]), dims=dims)
    if platform == "tensorrt_plan":
        cfg.instance_group.add(
            kind=mc.ModelInstanceGroup.KIND_GPU, count=instances, profile=[str(p) for p in (profiles or [0])]
        )
    else:
        cfg.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=1)
    if max_batch > 1:
        cfg.dynamic_batching.max_queue_delay_microseconds = queue_delay_us
    return cfg


def config_text(cfg) -> str:
    _, text_format = _pb2()
    return text_format.MessageToString(cfg)


def check_config(text: str, inputs: list[TensorSpec], outputs: list[TensorSpec], dtypes: dict[str, str] | None = None):
    """Parse `text` as a ModelConfig and compare it with the graph; returns the parsed message.
    Raises VerificationError listing every difference."""
    mc, text_format = _pb2()
    cfg = mc.ModelConfig()
    try:
        text_format.Parse(text, cfg)
    except text_format.ParseError as e:
        raise VerificationError(f"config.pbtxt does not parse as a Triton ModelConfig: {e}") from e
    dtypes = dtypes or {}
    bad = []
    for kind, specs, got in (("input", inputs, cfg.input), ("output", outputs, cfg.output)):
        want = {s.name: s for s in specs}
        have = {t.name: t for t in got}
        if want.keys() != have.keys():
            bad.append(f"{kind} names {sorted(have)} != ONNX {sorted(want)}")
            continue
        for n, s in want.items():
            dims = s.triton_dims() if cfg.max_batch_size > 0 else [d if isinstance(d, int) else -1 for d in s.shape]
            if list(have[n].dims) != dims:
                bad.append(f"{kind} {n}: dims {list(have[n].dims)} != ONNX {dims}")
            dt = TRITON_DTYPE[dtypes.get(n, s.dtype)]
            if mc.DataType.Name(have[n].data_type) != dt:
                bad.append(f"{kind} {n}: {mc.DataType.Name(have[n].data_type)} != expected {dt}")
    if bad:
        raise VerificationError("config.pbtxt disagrees with the graph: " + "; ".join(bad))
    return cfg


def prompts_parameter(model: ModelSection | None) -> dict[str, str]:
    """{PROMPTS: JSON} of report.json `model.prompts` (the prefixes the family's checkpoints expect before a text,
    by sentence-transformers prompt name); {} when the build declares none."""
    prompts = (model or {}).get("prompts") or {}
    return {PROMPTS: json.dumps(prompts, sort_keys=True, ensure_ascii=False)} if prompts else {}

"""Which graph engines.triton publishes as the ONNX Runtime model for CPU hosts (`<name>_onnx`).

`--onnx-twin auto` (default): the INT8 CPU twin when the build has one (export.build --precision int8 writes it),
else the fp32 graph; `int8`: the twin, or exit 2 when the build has none; `fp32`: the rope-onnx graph, else the
plain export. The INT8 twin is the default because it is faster at the accuracy the gate holds it to: on the demo
model 1.8x to 3x the fp32 graph's speed with per-row cosine >= 0.999 (scripts/bench_quant_cpu.py,
scripts/results/quant/quant_cpu.md).
"""

from __future__ import annotations

from export.errors import UsageError
from export.report.schema import CPU_TWIN, ONNX_KEY, Report, precision_key, rope_key

CHOICES = ("auto", "fp32", "int8")
FP32_KEYS = (rope_key("onnx"), ONNX_KEY)
INT8_KEYS = tuple(precision_key(k, CPU_TWIN) for k in FP32_KEYS)


def twin_keys(report: Report, choice: str = "auto") -> tuple[str, ...]:
    """Artifact keys to try, in order, for the ONNX Runtime model."""
    has_int8 = any(k in report.artifacts for k in INT8_KEYS)
    if choice == "int8" and not has_int8:
        raise UsageError(
            "--onnx-twin int8: the build has no INT8 CPU twin; build it with python -m export.build "
            "--precision int8, or pass --onnx-twin fp32"
        )
    if choice == "int8" or (choice == "auto" and has_int8):
        return INT8_KEYS
    return FP32_KEYS

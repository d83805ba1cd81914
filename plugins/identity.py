"""The RoformerRotary plugin's identity, in one place for every Python module of the project.

The single source is `plugins/roformer_rotary/RoformerRotary_PluginConfig.yaml`; `tests/plugins/test_identity.py`
checks every value here against it, against the contract README's parameter table and against the C++
sources, so the graph pass, the CPU lowering, the precision pass, `engines` and the tests cannot drift
from what the TensorRT adapter accepts. A leaf module: it imports nothing from the project.
"""

from __future__ import annotations

from pathlib import Path

CONFIG_YAML = Path(__file__).resolve().parent / "roformer_rotary" / "RoformerRotary_PluginConfig.yaml"
CONTRACT_README = CONFIG_YAML.with_name("README.md")

# ONNX node / TensorRT creator: the parser looks the creator up by (op, plugin_version, plugin_namespace).
PLUGIN_OP = "RoformerRotary"
PLUGIN_VERSION = "1"
PLUGIN_NAMESPACE = "roformer_trt"
# ONNX node domain: onnx.checker needs one, and TensorRT's parser retries the creator lookup with it as the
# namespace when plugin_namespace finds none (onnx-tensorrt FallbackPluginImporter): the same string, then.
PLUGIN_DOMAIN = "roformer_trt"
SINCOS_INITIALIZER = "roformer_rotary_sincos"

# Creator fields = ONNX attributes TensorRT's parser passes (all INT, length 1).
ATTR_INTERLEAVED = "interleaved"
ATTR_ROTARY_DIM = "rotary_dim"
ATTR_NUM_TENSORS = "num_tensors"
FIELDS = (ATTR_INTERLEAVED, ATTR_ROTARY_DIM, ATTR_NUM_TENSORS)
# Read by the parser to select the creator; not passed to createPlugin.
ATTR_PLUGIN_VERSION = "plugin_version"
ATTR_PLUGIN_NAMESPACE = "plugin_namespace"

# `interleaved`: which channels form a pair (contract README "Math"); the values of the C++ enum RotaryLayout.
LAYOUT_SPLIT_HALVES = 0  # pairs (x[j], x[j + R/2]): HF rotate_half (GPT-NeoX, LLaMA, ModernBERT, ...)
LAYOUT_INTERLEAVED = 1  # pairs (x[2j], x[2j + 1]): RoFormer
INTERLEAVED_ALLOWED = (LAYOUT_SPLIT_HALVES, LAYOUT_INTERLEAVED)
MIN_TENSORS, MAX_TENSORS = 1, 4
DEFAULT_NUM_TENSORS = 2

# Codes of the C entry points roformer_rotary_launch / roformer_rotary_host (C++ enum RotaryDType).
DTYPE_CODES = {"float32": 0, "float16": 1, "bfloat16": 2}

# Libraries `python -m plugins.build` makes, and which loader each one serves.
PLUGIN_LIB = "libroformer_trt_plugin.so"  # loadLibrary / trtexec --dynamicPlugins: getCreators + setLoggerFinder
STATIC_PLUGIN_LIB = "libroformer_trt_plugin_static.so"  # dlopen / LD_PRELOAD / Triton / --staticPlugins
# Exported by both adapter libraries: int32_t roformer_trt_plugin_tensorrt_major(), the TensorRT major of the
# headers they were built with (they refuse to register with a runtime of another major).
TENSORRT_MAJOR_SYMBOL = "roformer_trt_plugin_tensorrt_major"
KERNEL_LIB = "libroformer_rotary_kernels.so"  # extern "C" roformer_rotary_launch (CUDA)
HOST_LIB = "libroformer_rotary_host.so"  # C++ host reference (no CUDA)
LIBRARIES = {"plugin": PLUGIN_LIB, "plugin_static": STATIC_PLUGIN_LIB, "kernels": KERNEL_LIB, "host": HOST_LIB}


def plugin_node_problem(
    attrs: dict, n_inputs: int, table_width: int | None = None, head_dim: int | None = None
) -> str | None:
    """Why TensorRT's adapter would refuse a RoformerRotary node with these attributes, or None.

    attrs: the node's attributes as plain Python values; n_inputs: its input count (x_0..x_{k-1}, sincos);
    table_width / head_dim: R of the sincos table and Dh of x, when known. The CPU lowering calls this
    so the ONNX Runtime twin cannot accept a graph the plugin would reject.
    """
    missing = [f for f in (ATTR_ROTARY_DIM,) if f not in attrs]
    if missing:
        return f"missing required attribute {missing[0]!r}"
    interleaved = attrs.get(ATTR_INTERLEAVED, LAYOUT_INTERLEAVED)
    if interleaved not in INTERLEAVED_ALLOWED:
        return (
            f"{ATTR_INTERLEAVED}={interleaved!r}; the plugin takes {ATTR_INTERLEAVED}=1 (pairs (2j, 2j+1)) or 0 "
            "(pairs (j, j+R/2))"
        )
    k = attrs.get(ATTR_NUM_TENSORS, DEFAULT_NUM_TENSORS)
    if not isinstance(k, int) or not MIN_TENSORS <= k <= MAX_TENSORS:
        return f"{ATTR_NUM_TENSORS}={k!r}; allowed {MIN_TENSORS}..{MAX_TENSORS}"
    if n_inputs != k + 1:
        return f"{n_inputs} inputs but {ATTR_NUM_TENSORS}={k}; the node takes num_tensors + 1 inputs (x_i..., sincos)"
    r = attrs[ATTR_ROTARY_DIM]
    if not isinstance(r, int) or r < 2 or r % 2:
        return f"{ATTR_ROTARY_DIM}={r!r}; must be even and >= 2"
    if table_width is not None and r != table_width:
        return f"{ATTR_ROTARY_DIM}={r} but the sincos table is {table_width} wide; they must be equal"
    if head_dim is not None and r > head_dim:
        return f"{ATTR_ROTARY_DIM}={r} exceeds the head size {head_dim}"
    return None

"""Rotary pass: find every rotary site of an exported graph, verify each one numerically, rewrite it.

A *site* is one rotated tensor (query, key, value when `rotary_value`), HF's
`x * cos_pos + rotate_half(x) * sin_pos`; with RoFormer's interleaved rotate_half:

    Slice(x, 1::2) -> Neg -> Unsqueeze(-1) --+
    Slice(x, 0::2) ----------> Unsqueeze(-1) -+-> Concat(-1) -> Reshape -> Mul(., sin) --+
    x ----------------------------------------------------------------> Mul(., cos) -----+-> Add

Layout: x_BHSDh is [B, H, S, Dh]. The pass is split the way onnxscript's rewriter splits a rule:
- `rules`: each site layout as a rule object (its rotate_half pattern, its numpy reference, the
  `interleaved` value that replaces it) and the registry `LAYOUTS`; a new layout is one rule;
- `pattern`: the small declarative pattern language the rules are written in;
- `match`: read-only matching (a `Site`, or a `Miss` with a reason), the per-site dims check, layers;
- `probe`: each site's own subgraph run in ONNX Runtime against its layout's reference;
- `rewrite`: one `roformer_trt::RoformerRotary` node per layer (plugins/roformer_rotary/README.md), or
  one ai.onnx `RotaryEmbedding` (opset 23) per site;
- `driver`: `fuse_rotary`, which runs them in that order and returns the new model and a `PassReport`.
The pass works on structure: it reads only the initializers the probe needs (the position table, shape
constants), and the rewritten model keeps pointing at the input's external data.
"""

from export.passes.rotary.driver import MODES, ONNX_ROTARY_OPSET, fuse_rotary
from export.passes.rotary.results import Miss, PassReport, Site
from export.passes.rotary.rewrite import COS_CACHE_NAME, SIN_CACHE_NAME, SINCOS_NAME
from export.passes.rotary.rules import LAYOUTS, Layout

__all__ = [
    "COS_CACHE_NAME",
    "LAYOUTS",
    "MODES",
    "Layout",
    "Miss",
    "ONNX_ROTARY_OPSET",
    "PassReport",
    "SINCOS_NAME",
    "SIN_CACHE_NAME",
    "Site",
    "fuse_rotary",
]

"""The same landmarks as export/diagnose/locate.py, taken from the PyTorch model itself (fp32, eval).

In:  an HF model of a supported family (any task head), numpy feeds, the layers to capture. Out:
{(stage, layer): [arrays]} with the shapes the ONNX landmarks have: attention_input [B, S, H] x2 (the query and
key Linear outputs) or x1 (a fused QKV Linear, [B, S, 3H]); rotary_output [B, heads, S, Dh] x2 (the rotated
query and key); attention_output, ffn_output, layer_output [B, S, H]; embeddings [B, S, E]; plus ("head", name)
for every model output that is not the last layer's output (last_hidden_state too for a pre-norm family, whose
final norm follows the last layer). Where each is read is the family's layer map (`Family.layer_map`: module
paths and whether a module's output or its input); forward hooks on those modules and the family's rotary tap,
all removed afterwards, so the model is left as it was.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager

import numpy as np
import torch

from export.diagnose.structure import Key
from export.families.family import PRE_NORM, Tap
from export.families.registry import family_of_model
from export.spec import ExportSpec
from export.validate import true_fp32

LAYER_STAGES = ("attention_output", "ffn_output", "layer_output")


def capture(
    model: torch.nn.Module,
    task: str,
    feeds: dict[str, np.ndarray],
    layers: set[int] | None = None,
    embeddings: bool = True,
    head: bool = True,
) -> dict[Key, list[np.ndarray]]:
    """Run `model` (fp32, eval, CPU) once on `feeds`; the landmarks of `layers` (None: all), the embeddings and
    the head outputs as float32 arrays."""
    family = family_of_model(model)
    lm = family.layer_map
    base = family.base(model)
    layer_list = base.get_submodule(lm.layers)
    assert isinstance(layer_list, torch.nn.ModuleList), lm.layers  # LayerMap.layers names the family's ModuleList
    wanted = set(range(len(layer_list))) if layers is None else set(layers)
    found: dict[Key, list[np.ndarray]] = {}

    def keep(key):
        return lambda arrays: found.setdefault(key, []).extend(_np(a) for a in arrays)

    with ExitStack() as stack:
        if embeddings:
            stack.enter_context(_hooked(base, lm.embeddings, keep(("embeddings", None))))
        for k in sorted(wanted):
            layer = layer_list[k]
            for tap in lm.attention_input:
                stack.enter_context(_hooked(layer, tap, keep(("attention_input", k))))
            for stage in LAYER_STAGES:
                stack.enter_context(_hooked(layer, getattr(lm, stage), keep((stage, k))))
            stack.enter_context(lm.rotary_tap(layer, keep(("rotary_output", k))))
        with torch.no_grad(), true_fp32():
            out = model(**{k: torch.from_numpy(v) for k, v in feeds.items()}, return_dict=True)
    if head:
        for name in head_outputs(family, task):
            found[("head", name)] = [_np(out[name])]
    return found


def head_outputs(family, task: str) -> list[str]:
    """The outputs compared as head landmarks: all but the last layer's own output (last_hidden_state of a
    post-norm family)."""
    return [n for n in ExportSpec(task).output_names if n != "last_hidden_state" or family.layer_map.norm == PRE_NORM]


def _np(t) -> np.ndarray:
    t = t[0] if isinstance(t, tuple) else t
    return t.detach().float().cpu().numpy()


@contextmanager
def _hooked(root: torch.nn.Module, tap: Tap, record):
    """record([tensor]) with the output (or the first input) of root's submodule `tap.module` at every call."""
    module = root.get_submodule(tap.module)
    if tap.port == "input":
        handle = module.register_forward_pre_hook(lambda _m, inputs: record([inputs[0]]))
    else:
        handle = module.register_forward_hook(lambda _m, _inputs, output: record([output]))
    try:
        yield
    finally:
        handle.remove()

"""The same landmarks as export/diagnose/locate.py, taken from the PyTorch model itself (fp32, eval).

In:  an HF RoFormer model (any task head), numpy feeds, the layers to capture. Out: {(stage, layer): [arrays]}
with the shapes the ONNX landmarks have (attention_input [B, S, H] x2: the query and key Linear outputs;
rotary_output [B, heads, S, Dh] x2: what apply_rotary_position_embeddings returns; attention_output,
ffn_output (the output dense before the residual Add), layer_output [B, S, H]; embeddings [B, S, E]), plus
("head", name) for every model output but last_hidden_state (which is the last layer_output).
Forward hooks on the submodules, and the rotary function wrapped on the attention instance for the call;
everything is removed afterwards, so the model is left as it was.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager

import numpy as np
import torch

from export.spec import ExportSpec
from export.validate import true_fp32


def capture(
    model: torch.nn.Module,
    task: str,
    feeds: dict[str, np.ndarray],
    layers: set[int] | None = None,
    embeddings: bool = True,
    head: bool = True,
) -> dict[tuple[str, object], list[np.ndarray]]:
    """Run `model` (fp32, eval, CPU) once on `feeds`; the landmarks of `layers` (None: all), the embeddings and
    the head outputs as float32 arrays."""
    base = model.base_model
    n_layers = len(base.encoder.layer)
    wanted = set(range(n_layers)) if layers is None else set(layers)
    found: dict[tuple[str, object], list[np.ndarray]] = {}

    def keep(key):
        def hook(_module, _inputs, output):
            found.setdefault(key, []).append(_np(output))

        return hook

    with ExitStack() as stack:
        if embeddings:
            stack.enter_context(_hooked(base.embeddings.LayerNorm, keep(("embeddings", None))))
        for k in sorted(wanted):
            layer = base.encoder.layer[k]
            for module, stage in (
                (layer.attention.self.query, "attention_input"),
                (layer.attention.self.key, "attention_input"),
                (layer.attention.output, "attention_output"),
                (layer.output.dense, "ffn_output"),
                (layer.output, "layer_output"),
            ):
                stack.enter_context(_hooked(module, keep((stage, k))))
            stack.enter_context(_rotary_tap(layer.attention.self, found, k))
        with torch.no_grad(), true_fp32():
            out = model(**{k: torch.from_numpy(v) for k, v in feeds.items()}, return_dict=True)
    if head:
        for name in ExportSpec(task).output_names:
            if name != "last_hidden_state":
                found[("head", name)] = [_np(out[name])]
    return found


def _np(t) -> np.ndarray:
    t = t[0] if isinstance(t, tuple) else t
    return t.detach().float().cpu().numpy()


@contextmanager
def _hooked(module: torch.nn.Module, hook):
    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def _rotary_tap(attention: torch.nn.Module, found: dict, k: int):
    """Wrap the instance's apply_rotary_position_embeddings (a staticmethod HF calls through self) for the run."""
    original = attention.apply_rotary_position_embeddings

    def tapped(*args, **kwargs):
        result = original(*args, **kwargs)
        found.setdefault(("rotary_output", k), []).extend(_np(t) for t in result[:2])  # query, key
        return result

    attention.apply_rotary_position_embeddings = tapped
    try:
        yield
    finally:
        del attention.apply_rotary_position_embeddings  # the class's staticmethod shows through again

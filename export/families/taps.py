"""A `RotaryTap` (export/families/family.py) for the transformers models whose attention calls a module-level
rotary function by name: `apply_rotary_pos_emb(q, k, cos, sin)` returning (q, k), as llama's code and every
model copied from it do (every rotary family of transformers 5.25 but RoFormer).

`function_tap(module, attention)`: while the tap is open the module's function is wrapped and records the rotated
query and key of the calls made while this layer's attention submodule runs (pre/post hooks mark when).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from export.families.family import RotaryTap


def function_tap(module: str, attention: str, name: str = "apply_rotary_pos_emb") -> RotaryTap:
    """module: the transformers modeling module (e.g. "transformers.models.gte.modeling_gte"); attention: the
    attention submodule's path below the layer (e.g. "self_attn")."""

    @contextmanager
    def tap(layer: torch.nn.Module, record) -> Iterator[None]:
        mod = importlib.import_module(module)
        original, active = getattr(mod, name), [False]

        def tapped(*args, **kwargs):
            result = original(*args, **kwargs)
            if active[0]:
                record(list(result[:2]))  # query, key
            return result

        attn = layer.get_submodule(attention)
        before = attn.register_forward_pre_hook(lambda *_: active.__setitem__(0, True))
        after = attn.register_forward_hook(lambda *_: active.__setitem__(0, False))
        setattr(mod, name, tapped)
        try:
            yield
        finally:
            setattr(mod, name, original)
            before.remove()
            after.remove()

    return tap

"""A config's `rope_parameters` (transformers 5.25) -> the `RotaryTable` the family's layers use, or a refusal.

transformers 5.25 keeps every rotary setting of a config in `rope_parameters` ({"rope_type", "rope_theta", and
what the type needs}; an old `rope_scaling` / `rope_theta` pair is folded into it by
`RotaryEmbeddingConfigMixin.standardize_rope_params`), and a model's rotary module computes its inverse
frequencies with `ROPE_INIT_FUNCTIONS[rope_type]` (modeling_rope_utils.py). `rotary_table` reads the dict the
config class left and builds the same table (export/families/spec.py: default, linear, dynamic), refusing
with the reason:
- a rope type spec.py does not implement (yarn, longrope, llama3, proportional: their formulas are not written
  here), and "ntk", which transformers does not define: the fixed-NTK table of the GTE checkpoints' original
  code (Alibaba-NLP/new-impl `NTKScalingRotaryEmbedding`, base theta * f, inv_freq / f**(2 / R)) is exactly
  rope_type "linear" with rope_theta theta * f and factor f**(2 / R), which is how such a config is written for
  transformers;
- a partial rotary (`partial_rotary_factor` < 1: the families here rotate the whole head);
- a factor that is not a finite number >= 1 (HF only warns).
A sequence-dependent type ("dynamic") gives a table valid for `max_position_embeddings` positions
(`RotaryTable.max_rows`); export.build_plan refuses a longer --max-len with the reason.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import TypeGuard

from export.errors import UsageError
from export.families.spec import ROPE_TYPES, RotaryTable

KEYS = {  # what each implemented type reads besides rope_type and rope_theta (modeling_rope_utils.py 5.25)
    "default": (),
    "linear": ("factor",),
    "dynamic": ("factor",),
}
IGNORED = ("rope_type", "rope_theta", "type", "partial_rotary_factor")


def rotary_table(name: str, params: Mapping, dim: int, max_positions: int, path) -> RotaryTable:
    """The table `params` (one config's rope_parameters, already standardised by its config class) describes."""
    rope_type = params.get("rope_type", params.get("type", "default"))
    where = f"{path}: config rope_parameters"
    if rope_type == "ntk":
        raise UsageError(
            f"{where} rope_type 'ntk' is no transformers rope type; the fixed-NTK table of GTE's original code "
            "(theta, factor f) is rope_type 'linear' with rope_theta theta*f and factor f**(2/head_dim): "
            "write the config that way"
        )
    if rope_type not in ROPE_TYPES:
        raise UsageError(
            f"{where} rope_type is {rope_type!r}; this toolchain builds the tables of {', '.join(ROPE_TYPES)} "
            "only (other types change the table's formula)"
        )
    partial = params.get("partial_rotary_factor", 1.0)
    if partial is not None and partial != 1.0:
        raise UsageError(f"{where} partial_rotary_factor is {partial!r}; this family rotates the whole head (1.0)")
    theta = params.get("rope_theta")
    if not _positive(theta):
        raise UsageError(f"{where} rope_theta is {theta!r}; it must be a finite number > 0")
    extra: dict[str, object] = {}
    for key in KEYS[rope_type]:
        value = params.get(key)
        if not _positive(value) or value < 1.0:
            raise UsageError(f"{where} {key} is {value!r}; rope_type {rope_type!r} needs a finite number >= 1")
        extra[key] = float(value)
    if rope_type == "dynamic":
        extra["max_position_embeddings"] = int(max_positions)
    return RotaryTable(name, dim, float(theta), rope_type, 1.0, tuple(sorted(extra.items())))


def _positive(v: object) -> TypeGuard[float]:
    """A finite real number > 0 (float in typing's numeric tower; float(): typeshed's Real has no `>`)."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) and float(v) > 0

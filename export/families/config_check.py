"""Checks every family's config check is made of: one UsageError line (exit 2) naming the field and the rule.

`check_values(config, path, ints, reals)`: sizes that must be whole numbers >= 1 and reals in a range (a bool is
refused although Python counts it as an int; NaN and inf are never config values). `refuse_remote_code`: a
config that asks for code from its repository (`auto_map`, `trust_remote_code`) is refused with the reason:
the toolchain runs transformers' own classes only (export.families.registry ignores an `auto_map` beside a
model_type transformers and a family file implement, as transformers' AutoConfig does; `code_origin` names where
its code is). `build_config(cls_name, config, path)`: the transformers
config class from the dict, its own refusals turned into ours. `check_heads`: heads divide the width and the
head size is even (rotary rotates channel pairs). `check_original_names`: fields a hub config still carries under
its first implementation's names, which transformers' class does not read (it keeps its defaults): each must agree
with what the class computes, else the one line says which field and why.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping
from pathlib import Path

from export.errors import UsageError

REMOTE_CODE_FIELDS = ("auto_map", "trust_remote_code")


def short(e: BaseException) -> str:
    return str(e).splitlines()[0][:160] if str(e) else type(e).__name__


def code_origin(auto_map: Mapping) -> str:
    """Where an auto_map's code lives: the other repositories its "repo--module.Class" entries name, else the
    checkpoint's own folder ("module.Class")."""
    repos = sorted({str(v).split("--", 1)[0] for v in auto_map.values() if "--" in str(v)})
    return ", ".join(repos) if repos else "the checkpoint's own folder"


def refuse_remote_code(config: dict, path: Path, why: str = "") -> None:
    """why: what is particular to this config's model_type (a sentence), added to the line."""
    asks = [f for f in REMOTE_CODE_FIELDS if config.get(f)]
    if asks:
        auto = config.get("auto_map")
        origin = f" (code in {code_origin(auto)})" if asks[0] == "auto_map" and isinstance(auto, Mapping) else ""
        raise UsageError(
            f"{path}: config has {asks[0]}{origin}: it asks for model code from its repository, which roformer-trt "
            f"never runs (it exports transformers' own classes){why}; use a checkpoint whose model_type transformers "
            "implements, or remove the field"
        )


def check_original_names(
    config: Mapping,
    built,
    path,
    renamed: Mapping[str, str],
    fixed: Mapping[str, tuple[tuple, str]],
) -> None:
    """renamed: original name -> the field transformers reads instead (an attribute of `built`, or a key of its
    rope_parameters), which must hold the same value; fixed: original name -> (the values the class implements,
    what another value would mean). A field the config leaves out, or sets to null in `renamed`, is not checked."""
    for old, new in renamed.items():
        if config.get(old) is None:
            continue
        value = getattr(built, new, None)
        value = (getattr(built, "rope_parameters", None) or {}).get(new) if value is None else value
        if config[old] != value:
            raise UsageError(
                f"{path}: config {old} is {config[old]!r} (its first implementation's name), but transformers' "
                f"{type(built).__name__} reads {new}, which is {value!r} here; set {new} to {config[old]!r}"
            )
    for old, (values, meaning) in fixed.items():
        if old in config and config[old] not in values:
            raise UsageError(
                f"{path}: config {old} is {config[old]!r}: {meaning}, which transformers' {type(built).__name__} "
                f"does not implement (it computes {old} = {values[0]!r})"
            )


def check_values(
    config: Mapping, path, ints: Iterable[str], reals: Mapping[str, tuple[float, float, bool]], nullable=()
) -> None:
    """ints: fields that must be integers >= 1; reals: field -> (low, high, low inclusive); nullable: fields
    that may also be null. A field the config leaves out is not checked (the class's default is, afterwards)."""
    for field in ints:
        if field not in config or (field in nullable and config[field] is None):
            continue
        v = config[field]
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise UsageError(
                f"{path}: config {field} is {v!r} ({type(v).__name__}); it must be an integer >= 1, "
                "fix the checkpoint's config"
            )
        if v < 1:
            raise UsageError(f"{path}: config {field} is {v}; it must be an integer >= 1, fix the checkpoint's config")
    for field, (lo, hi, lo_ok) in reals.items():
        if field not in config or config[field] is None:
            continue
        v = config[field]
        ok = (
            not isinstance(v, bool)
            and isinstance(v, numbers.Real)
            and math.isfinite(v)
            and (lo <= float(v) if lo_ok else lo < float(v))  # float(): typeshed's Real has no reflected compare
            and v <= hi
        )
        if not ok:
            interval = f"{'[' if lo_ok else '('}{lo}, {hi}]"
            raise UsageError(
                f"{path}: config {field} is {v!r}; it must be a finite number in {interval}, fix the "
                "checkpoint's config"
            )


def build_config(cls_name: str, config: dict, path):
    """transformers.<cls_name>(**config) without model_type; HF's own refusals are the file's problem."""
    import transformers

    try:
        return getattr(transformers, cls_name)(**{k: v for k, v in config.items() if k != "model_type"})
    except Exception as e:  # HF validates some fields itself; any refusal is the file's problem
        raise UsageError(f"{path}: config is not a valid {cls_name} ({short(e)})") from None


def check_heads(hidden: int, heads: int, path) -> int:
    """The head size; refused when heads do not divide the width or the head size is odd."""
    if hidden % heads:
        raise UsageError(
            f"{path}: config num_attention_heads {heads} does not divide hidden_size {hidden}; "
            "fix the checkpoint's config (each head gets hidden_size / heads channels)"
        )
    if (hidden // heads) % 2:
        raise UsageError(
            f"{path}: config hidden_size {hidden} / num_attention_heads {heads} gives an odd "
            "head size; rotary embeddings rotate channel pairs, fix the checkpoint's config"
        )
    return hidden // heads

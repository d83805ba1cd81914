"""A checkpoint of any supported family, checked before anything is allocated, then rebuilt as the HF model.

Two steps, so a build decides its memory before spending it:
1. `inspect_checkpoint(path, --config, ...)`: the files are read (export.checkpoint.formats; tensors memory-mapped),
   the family found (export.families.registry: remote code and unsupported families refused; an auto_map beside a
   model_type the family builds with transformers' own class is set aside, never imported, and reported), the config
   checked field by field by the family's file, the task head detected, the layer count and then every key,
   shape and dtype compared with a model built on the `meta` device (no memory), the weights checked for NaN/inf.
   bf16/fp16/fp64 weights are ordinary checkpoints: they are upcast to fp32 (the report says so); integer
   weights are refused.
2. `materialize(inspected, table_rows)`: the fp32 eval-mode model with exactly the checkpoint's weights (only
   tied weights and a family's formula tables may be absent: RoFormer's sinusoidal table is rebuilt for
   `table_rows` rows, the build's --max-len, in float64 and rounded once; a stored one is verified against the
   formula in its own dtype, then replaced by it), running the attention kernel asked for (eager or sdpa, never
   flash-attention: it does not export).
`load_checkpoint` does both. Between them `export.build` checks the memory the build will need.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from export.checkpoint.conversion import convert_keys
from export.checkpoint.formats import read_checkpoint, short
from export.errors import UsageError
from export.families.adapters import choose
from export.families.config_check import code_origin
from export.families.facts import ModelFacts
from export.families.family import Family
from export.families.registry import family_of, ignored_auto_map
from export.families.spec import LayerAttention, LayerRotary
from export.progress import info

if TYPE_CHECKING:  # transformers is imported where a model is built: reading a checkpoint needs none of it
    from transformers import PreTrainedConfig, PreTrainedModel

PREFIXES = ("module.", "model.")


@dataclass
class InspectedCheckpoint:
    config: PreTrainedConfig  # the family's transformers config, checked by its file
    state: dict  # fp32 tensors, keys as the task's HF class names them
    task: str
    source_format: str
    config_source: str  # which config was used: the checkpoint's, the one beside it, or --config
    weights_dtype: str  # e.g. "float32", or "bfloat16 (upcast to float32)"
    table: str | None  # a formula table: "checkpoint" (verified) or "generated" (absent); None: the family has none
    path: Path
    family: Family
    attn_implementation: str  # "eager" or "sdpa"
    params: int = 0  # parameters of the model the state fills (counted on the meta device)
    adapter: dict | None = None  # the task adapter merged (TaskAdapters.describe), or the tasks held (--task none)
    auto_map_ignored: dict | None = None  # the config's auto_map, left aside (registry.ignored_auto_map)

    @property
    def facts(self) -> ModelFacts:
        return self.family.facts(self.config)


@dataclass
class LoadedCheckpoint:
    model: torch.nn.Module
    config: PreTrainedConfig
    task: str
    source_format: str
    table: str | None
    family: Family
    config_source: str = "checkpoint"
    weights_dtype: str = "float32"
    attn_implementation: str = "eager"
    adapter: dict | None = None  # report.json `adapter`: the task adapter merged into the weights, if any
    auto_map_ignored: dict | None = None  # report.json `checkpoint.auto_map_ignored`

    @property
    def facts(self) -> ModelFacts:
        return self.family.facts(self.config)

    @property
    def rotary(self) -> list[LayerRotary]:
        return self.family.rotaries(self.config)

    @property
    def attention(self) -> list[LayerAttention]:
        return self.family.attentions(self.config)


def load_checkpoint(
    path: str | Path,
    config_path: str | Path | None = None,
    trust_pickle: bool = False,
    task: str | None = None,
    table_rows: int | None = None,
    attention: str | None = None,
    adapter_task: str | None = None,
) -> LoadedCheckpoint:
    inspected = inspect_checkpoint(path, config_path, trust_pickle, task, attention, adapter_task)
    return materialize(inspected, table_rows)


def inspect_checkpoint(
    path: str | Path,
    config_path: str | Path | None = None,
    trust_pickle: bool = False,
    task: str | None = None,
    attention: str | None = None,
    adapter_task: str | None = None,
) -> InspectedCheckpoint:
    """adapter_task: the task adapter to merge (--task NAME; "none": the base weights), refused for a checkpoint
    without adapters and required for one with them (export/families/adapters.py)."""
    path = Path(path)
    files = read_checkpoint(path, config_path, trust_pickle)
    state = _strip_prefixes(files.state)
    family = family_of(files.config, set(state), path)
    raw, ignored = without_ignored_auto_map(files.config, family)
    impl = attn_implementation(family, attention)
    config = family.make_config(raw, path)
    config._attn_implementation = impl  # whatever the file asks (flash-attention does not export), before any build
    state, adapter = with_adapter(family, state, files.config, path, adapter_task)  # in the checkpoint's own layout
    if family.convert_state is not None:  # a layout transformers' conversion mapping does not cover
        state = family.convert_state(state, config, path)
    if any(re.search(family.layer_key, k) for k in state):  # transformers' names already: compared before a model
        check_layer_count(family, state, config, path)  # of the config's size is described (10000 layers: 35 s)
    state = convert_keys(_meta_model(family, config, "model", path), state, path)  # the original code's names
    task = task or detect_task(family, state, config, path)
    if task == "model":  # a bare encoder: accept keys with or without the base model's prefix
        state = {k.removeprefix(family.base_prefix + "."): v for k, v in state.items()}
    check_layer_count(family, state, config, path)
    state, table = take_tables(family, state, task, path, config)
    expected = _meta_state(family, config, task, path)
    if task != "model":  # a head's encoder keys saved without the base model's prefix (as transformers loads them)
        state = {_prefixed(k, expected, family.base_prefix): v for k, v in state.items()}
    params = sum(v.numel() for k, v in expected.items() if not k.startswith("__"))
    check_keys_and_shapes(state, expected, path)
    state, dtype = upcast(state, path)
    check_finite(state, path)
    ck = InspectedCheckpoint(
        config, state, task, files.source_format, files.config_source, dtype, table, path, family, impl, params, adapter
    )
    ck.auto_map_ignored = ignored
    return ck


def without_ignored_auto_map(config: dict, family: Family) -> tuple[dict, dict | None]:
    """The config dict the family builds from, and the auto_map left out of it (registry.ignored_auto_map: the
    family builds the checkpoint with transformers' own class, the code it names is never imported), logged once."""
    ignored = ignored_auto_map(config, family)
    if not ignored:
        return config, None
    info(
        f"config.json's auto_map (code in {code_origin(ignored)}) ignored: {family.name} is built with transformers' "
        "own class, that code never runs"
    )
    return {k: v for k, v in config.items() if k != "auto_map"}, ignored


def with_adapter(family: Family, state: dict, config: dict, path: Path, task: str | None) -> tuple[dict, dict | None]:
    """The state with the chosen task adapter merged in (in the checkpoint's own layout, before its names are
    converted), and what the report says of it; checkpoints without adapters refuse a task."""
    adapters = None
    if family.adapters is not None:
        state, adapters = family.adapters(state, config, path)
    chosen = choose(adapters, task, path)
    if adapters is None:
        return state, None
    if chosen is not None:
        return adapters.merged(state, chosen), adapters.describe(chosen)
    return state, {"task": None, "tasks": list(adapters.tasks), "kind": adapters.kind}  # --task none: base weights


def attn_implementation(family: Family, asked: str | None) -> str:
    """The attention kernel the model runs with: `asked` when the family's file allows it, else its default."""
    if asked is None:
        return family.attn_implementations[0]
    if asked not in family.attn_implementations:
        raise UsageError(
            f"--attention {asked}: {family.name} exports with {' or '.join(family.attn_implementations)} "
            "attention in transformers; pass one of those"
        )
    return asked


def materialize(ck: InspectedCheckpoint, table_rows: int | None = None) -> LoadedCheckpoint:
    """The fp32 eval-mode HF model holding the checkpoint's weights, its formula tables at least `table_rows` long."""
    cls = ck.family.model_class(ck.task)
    ck.config._attn_implementation = (
        ck.attn_implementation
    )  # eager or sdpa: never flash-attention, which does not export
    torch.manual_seed(0)  # never used for weights that matter: every key comes from the file
    model = cls(ck.config).eval()
    model.load_state_dict(ck.state, strict=False)  # strictness enforced at inspection, with tied keys allowed
    model.tie_weights()
    if ck.family.positions is not None:
        ck.family.positions.restore(model, table_rows)
    if model.config._attn_implementation != ck.attn_implementation:
        raise RuntimeError(f"{cls.__name__} runs {model.config._attn_implementation} attention, not the one asked for")
    return LoadedCheckpoint(
        model.float().eval(),
        ck.config,
        ck.task,
        ck.source_format,
        ck.table,
        ck.family,
        ck.config_source,
        ck.weights_dtype,
        ck.attn_implementation,
        ck.adapter,
        ck.auto_map_ignored,
    )


# ---- keys, shapes, dtypes, values -----------------------------------------------------------------------


def _strip_prefixes(state: dict) -> dict:
    for prefix in PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def detect_task(family: Family, state: dict, config, path: Path) -> str:
    """The task head the weights hold (the family's rule), checked against config.architectures."""
    task = family.detect_task(state, config)
    if task is None:
        raise UsageError(
            f"{path}: keys {sorted(state)[:3]}... are not a {family.name} state_dict; pass a {family.name} checkpoint"
        )
    declared = [t for a in (config.architectures or []) if (t := family.task_of_class(a))]
    if declared and task != "model" and declared[0] != task:
        raise UsageError(
            f"{path}: config.architectures says {config.architectures[0]} but the weights hold a "
            f"{family.heads[task]} head; fix config.json"
        )
    return task


def take_tables(family: Family, state: dict, task: str, path, config=None) -> tuple[dict, str | None]:
    """The state without the family's formula tables, each checked against the formula in its stored dtype;
    "checkpoint" (stored and verified), "generated" (absent), None (the family has none)."""
    if family.positions is None:
        return state, None
    keys = [k for k in family.positions.keys(task) if k in state]
    for k in keys:
        family.positions.check(state[k], path, config)
    return {k: v for k, v in state.items() if k not in keys}, "checkpoint" if keys else "generated"


def check_layer_count(family: Family, state: dict, config, path) -> None:
    """The cheap first comparison, before a model of the config's size is even described: a config that declares
    more encoder layers than the weights hold is refused at once (the key-by-key comparison names the rest)."""
    pattern = re.compile(family.layer_key)
    layers = {int(m.group(1)) for k in state for m in [pattern.search(k)] if m}
    want = family.facts(config).layers
    if len(layers) < want:
        held = f"{len(layers)} (layers {min(layers)}-{max(layers)})" if layers else "none"
        raise UsageError(
            f"{path}: config num_hidden_layers is {want} but the weights hold "
            f"{held}; the config does not belong to these weights, fix it or pass the right --config"
        )


def _meta_model(family: Family, config, task: str, path) -> PreTrainedModel:
    """The task's HF class built on the meta device (no memory); a config it cannot build is refused."""
    cls = family.model_class(task)
    try:
        with torch.device("meta"):
            return cls(config)
    except Exception as e:  # e.g. an unknown hidden_act
        raise UsageError(
            f"{path}: config cannot build {cls.__name__} ({short(e)}); fix the checkpoint's config"
        ) from None


def _prefixed(key: str, expected: dict, prefix: str) -> str:
    return f"{prefix}.{key}" if key not in expected and f"{prefix}.{key}" in expected else key


def _meta_state(family: Family, config, task: str, path) -> dict:
    """The state_dict the task's HF class expects, built on the meta device: shapes and dtypes, no memory."""
    model = _meta_model(family, config, task, path)
    cls = type(model)
    tied = getattr(model, "_tied_weights_keys", None) or {}
    expected = dict(model.state_dict())
    if family.positions is not None:  # a formula table: rebuilt by materialize, never expected from the file
        expected = {k: v for k, v in expected.items() if k not in family.positions.keys(task)}
    expected["__tied__"] = set(tied.keys() if isinstance(tied, dict) else tied)
    expected["__class__"] = cls.__name__
    expected["__family__"] = family.name
    return expected


def check_keys_and_shapes(state: dict, expected: dict, path) -> None:
    tied, name, family = expected.pop("__tied__"), expected.pop("__class__"), expected.pop("__family__")
    missing = sorted(set(expected) - set(state) - tied)
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = ([f"missing {len(missing)} keys {missing[:6]}"] if missing else []) + (
            [f"unexpected {len(unexpected)} keys {unexpected[:6]}"] if unexpected else []
        )
        raise UsageError(
            f"{path} does not match {name}: {'; '.join(parts)}; check the checkpoint and "
            "its config (num_hidden_layers, heads, num_labels)"
        )
    for k, v in state.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise UsageError(
                f"{path}: {k} has shape {tuple(v.shape)}, config expects {tuple(expected[k].shape)}; "
                "check config.json against the weights"
            )
        if expected[k].is_floating_point() and not v.is_floating_point():
            raise UsageError(
                f"{path}: weight {k} is {str(v.dtype).removeprefix('torch.')}, not floating point; "
                f"{family} weights are float32/float16/bfloat16, re-save the checkpoint from training"
            )


def upcast(state: dict, path) -> tuple[dict, str]:
    """fp32 weights, whatever floating dtype the file stored; returns the state and a description of the dtype."""
    dtypes = sorted({str(v.dtype).removeprefix("torch.") for v in state.values() if v.is_floating_point()})
    if dtypes == ["float32"]:
        return state, "float32"
    out = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    return out, f"{'/'.join(dtypes)} (upcast to float32 for the export)"


def check_finite(state: dict, path) -> None:
    """Refuse a checkpoint holding NaN or inf in any floating tensor, naming the first one."""
    for k, v in state.items():
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            bad = int(v.numel() - torch.isfinite(v).sum().item())
            if bad:
                raise UsageError(
                    f"{path}: weight {k} has {bad} non-finite value(s) (NaN/inf); the checkpoint is "
                    "corrupt, re-export it from training"
                )

"""A RoFormer checkpoint, checked before anything is allocated, then rebuilt as the HF model.

Two steps, so a build decides its memory before spending it:
1. `inspect_checkpoint(path, --config, ...)`: the files are read (export.checkpoint.formats; tensors memory-mapped),
   the config checked field by field, the task head detected, the layer count and then every key, shape and
   dtype compared with a model built on the `meta` device (no memory), the weights checked for NaN/inf.
   bf16/fp16/fp64 weights are ordinary checkpoints: they are upcast to fp32 (the report says so); integer
   weights are refused.
2. `materialize(inspected, table_rows)`: the fp32 eval-mode model with exactly the checkpoint's weights (only the
   sinusoidal table and tied weights may be absent) and a table of `table_rows` rows (the build's --max-len;
   the table is a formula, computed in float64 and rounded once to fp32, so it can be longer than
   max_position_embeddings; a stored table is verified against it in its own dtype, then replaced by it).
`load_checkpoint` does both. Between them `export.build` checks the memory the build will need.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from export.checkpoint.formats import read_checkpoint, short
from export.errors import UsageError
from export.reference import sincos_table
from export.spec import ARCHITECTURE_TO_TASK, TASKS

TABLE_KEY = "roformer.encoder.embed_positions.weight"
PREFIXES = ("module.", "model.")
LAYER_KEY = re.compile(r"(?:^|\.)encoder\.layer\.(\d+)\.")


@dataclass
class InspectedCheckpoint:
    config: object  # transformers.RoFormerConfig, checked
    state: dict  # fp32 tensors, keys as the task's HF class names them
    task: str
    source_format: str
    config_source: str  # which config was used: the checkpoint's, the one beside it, or --config
    weights_dtype: str  # e.g. "float32", or "bfloat16 (upcast to float32)"
    table: str  # "checkpoint" (verified against the formula) or "generated" (absent from the file)
    path: Path


@dataclass
class LoadedCheckpoint:
    model: torch.nn.Module
    config: object
    task: str
    source_format: str
    table: str
    config_source: str = "checkpoint"
    weights_dtype: str = "float32"


def load_checkpoint(
    path: str | Path,
    config_path: str | Path | None = None,
    trust_pickle: bool = False,
    task: str | None = None,
    table_rows: int | None = None,
) -> LoadedCheckpoint:
    return materialize(inspect_checkpoint(path, config_path, trust_pickle, task), table_rows)


def inspect_checkpoint(
    path: str | Path, config_path: str | Path | None = None, trust_pickle: bool = False, task: str | None = None
) -> InspectedCheckpoint:
    path = Path(path)
    files = read_checkpoint(path, config_path, trust_pickle)
    config = make_config(files.config, path)
    state = _strip_prefixes(files.state)
    task = task or detect_task(state, config, path)
    if task == "model":  # a bare encoder: accept keys with or without the "roformer." prefix
        state = {k.removeprefix("roformer."): v for k, v in state.items()}
    check_layer_count(state, config, path)
    expected = _meta_state(config, task, path)
    table_key = TABLE_KEY if task != "model" else TABLE_KEY.removeprefix("roformer.")
    check_keys_and_shapes(state, expected, table_key, path)
    table = "checkpoint" if table_key in state else "generated"
    if table == "checkpoint":
        check_table(state[table_key], path)  # in its stored dtype, to that dtype's precision
    state, dtype = upcast({k: v for k, v in state.items() if k != table_key}, path)
    check_finite(state, path)
    return InspectedCheckpoint(config, state, task, files.source_format, files.config_source, dtype, table, path)


def materialize(ck: InspectedCheckpoint, table_rows: int | None = None) -> LoadedCheckpoint:
    """The fp32 eval-mode HF model holding the checkpoint's weights, its table at least `table_rows` long."""
    import transformers

    cls = getattr(transformers, TASKS[ck.task][0])
    torch.manual_seed(0)  # never used for weights that matter: every key comes from the file
    model = cls(ck.config).eval()
    table_key = TABLE_KEY if ck.task != "model" else TABLE_KEY.removeprefix("roformer.")
    state = dict(ck.state)
    emb = model.state_dict()[table_key]  # the formula in fp32 (a stored table was verified against it)
    state[table_key] = torch.from_numpy(sincos_table(emb.shape[0], emb.shape[1]))
    model.load_state_dict(state, strict=False)  # strictness enforced at inspection, with tied keys allowed
    model.tie_weights()
    if table_rows:
        _set_table(model, max(table_rows, _table(model).weight.shape[0]))
    return LoadedCheckpoint(
        model.float().eval(), ck.config, ck.task, ck.source_format, ck.table, ck.config_source, ck.weights_dtype
    )


# ---- the sinusoidal table --------------------------------------------------------------------------------


def _table(model):
    return (model.roformer if hasattr(model, "roformer") else model).encoder.embed_positions


def _set_table(model, rows: int) -> None:
    from transformers.models.roformer.modeling_roformer import RoFormerSinusoidalPositionalEmbedding

    enc = (model.roformer if hasattr(model, "roformer") else model).encoder
    old = enc.embed_positions
    new = RoFormerSinusoidalPositionalEmbedding(rows, old.weight.shape[1])
    with torch.no_grad():
        new.weight.copy_(torch.from_numpy(sincos_table(rows, old.weight.shape[1], dtype=np.float64)))
    enc.embed_positions = new.to(old.weight.dtype).eval()


@contextmanager
def table_of_at_least(model, rows: int) -> Iterator[int]:
    """The model's sinusoidal table with at least `rows` rows while the block runs, restored after it:
    callers given a shorter model (export_onnx used alone) change nothing of it. Yields the rows in use."""
    enc = (model.roformer if hasattr(model, "roformer") else model).encoder
    old = enc.embed_positions
    if old.weight.shape[0] >= rows:
        yield old.weight.shape[0]
        return
    _set_table(model, rows)
    try:
        yield rows
    finally:
        enc.embed_positions = old


def check_table(weight: torch.Tensor, path) -> None:
    """The sinusoidal table is a formula: refuse a checkpoint whose table is anything else."""
    rows, dim = weight.shape
    want = torch.from_numpy(sincos_table(rows, dim, dtype=np.float64))
    err = (weight.double() - want).abs().max().item()
    tol = torch.finfo(weight.dtype).eps  # one ulp at 1.0 of the stored dtype: rounding differences only
    if not err <= tol:
        raise UsageError(
            f"{path}: the sinusoidal position table differs from the RoFormer formula by {err:.3g} "
            f"(> {tol:.1g}); this checkpoint was not trained with standard RoFormer rotary embeddings"
        )


# ---- config ----------------------------------------------------------------------------------------------

# Sizes that must be whole numbers >= 1; embedding_size may also be null (then it is hidden_size).
POSITIVE_INT_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
    "type_vocab_size",
    "embedding_size",
)
# Reals: (low, high, low inclusive); a NaN or inf is never a config value.
REAL_FIELDS = {
    "layer_norm_eps": (0.0, 1.0, False),
    "initializer_range": (0.0, math.inf, True),
    "hidden_dropout_prob": (0.0, 1.0, True),
    "attention_probs_dropout_prob": (0.0, 1.0, True),
}


def make_config(config, path: Path):
    from transformers import RoFormerConfig

    if not isinstance(config, dict):
        config = config.to_dict()
    model_type = config.get("model_type", "roformer")
    if model_type != "roformer":
        raise UsageError(f"{path}: config says model_type={model_type!r}, not a RoFormer; pass a RoFormer checkpoint")
    check_config_values(config, path)
    try:
        cfg = RoFormerConfig(**{k: v for k, v in config.items() if k != "model_type"})
    except Exception as e:  # HF validates some fields itself; any refusal is the file's problem
        raise UsageError(f"{path}: config is not a valid RoFormerConfig ({short(e)})") from None
    check_config_values(cfg.to_dict(), path)  # HF's defaults for the fields the file leaves out
    heads = cfg.num_attention_heads
    if cfg.hidden_size % heads:
        raise UsageError(
            f"{path}: config num_attention_heads {heads} does not divide hidden_size {cfg.hidden_size}; "
            "fix the checkpoint's config (each head gets hidden_size / heads channels)"
        )
    if (cfg.hidden_size // heads) % 2:
        raise UsageError(
            f"{path}: config hidden_size {cfg.hidden_size} / num_attention_heads {heads} gives an odd "
            "head size; rotary embeddings rotate channel pairs, fix the checkpoint's config"
        )
    if cfg.is_decoder:
        raise UsageError(f"{path}: is_decoder=True (RoFormerForCausalLM) is not supported; export an encoder")
    return cfg


def check_config_values(config: dict, path) -> None:
    """Refuse (UsageError naming the field and the rule) a size that is not an integer >= 1, or a real field
    that is not a finite number in its range. bool is refused although Python counts it as an int."""
    for field in POSITIVE_INT_FIELDS:
        if field not in config or (field == "embedding_size" and config[field] is None):
            continue
        v = config[field]
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise UsageError(
                f"{path}: config {field} is {v!r} ({type(v).__name__}); it must be an integer >= 1, "
                "fix the checkpoint's config"
            )
        if v < 1:
            raise UsageError(f"{path}: config {field} is {v}; it must be an integer >= 1, fix the checkpoint's config")
    for field, (lo, hi, lo_ok) in REAL_FIELDS.items():
        if field not in config or config[field] is None:
            continue
        v = config[field]
        ok = (
            not isinstance(v, bool)
            and isinstance(v, numbers.Real)
            and math.isfinite(v)
            and (lo <= v if lo_ok else lo < v)
            and v <= hi
        )
        if not ok:
            interval = f"{'[' if lo_ok else '('}{lo}, {hi}]"
            raise UsageError(
                f"{path}: config {field} is {v!r}; it must be a finite number in {interval}, fix the "
                "checkpoint's config"
            )


# ---- keys, shapes, dtypes, values -----------------------------------------------------------------------


def _strip_prefixes(state: dict) -> dict:
    for prefix in PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def detect_task(state: dict, config, path: Path) -> str:
    keys = set(state)
    if any(k.startswith("cls.predictions.") for k in keys):
        task = "masked-lm"
    elif "classifier.out_proj.weight" in keys:
        task = "sequence-classification"
    elif "qa_outputs.weight" in keys:
        task = "question-answering"
    elif "classifier.weight" in keys:
        # ForMultipleChoice and ForTokenClassification hold the same keys; the architecture says which,
        # else the shape does: a multiple-choice classifier scores each choice with one logit.
        declared = {ARCHITECTURE_TO_TASK.get(a) for a in (config.architectures or [])}
        if declared & {"multiple-choice", "token-classification"}:
            task = (declared & {"multiple-choice", "token-classification"}).pop()
        else:
            one_logit = state["classifier.weight"].shape[0] == 1 and config.num_labels != 1
            task = "multiple-choice" if one_logit else "token-classification"
    elif any(k.startswith("roformer.") for k in keys) or any(k.startswith("embeddings.") for k in keys):
        task = "model"
    else:
        raise UsageError(
            f"{path}: keys {sorted(keys)[:3]}... are not a RoFormer state_dict; pass a RoFormer checkpoint"
        )
    declared = [ARCHITECTURE_TO_TASK[a] for a in (config.architectures or []) if a in ARCHITECTURE_TO_TASK]
    if declared and task != "model" and declared[0] != task:
        raise UsageError(
            f"{path}: config.architectures says {config.architectures[0]} but the weights hold a "
            f"{TASKS[task][0]} head; fix config.json"
        )
    return task


def check_layer_count(state: dict, config, path) -> None:
    """The cheap first comparison, before a model of the config's size is even described: a config that declares
    more encoder layers than the weights hold is refused at once (the key-by-key comparison names the rest)."""
    layers = {int(m.group(1)) for k in state for m in [LAYER_KEY.search(k)] if m}
    if len(layers) < config.num_hidden_layers:
        held = f"{len(layers)} (encoder.layer.{min(layers)}-{max(layers)})" if layers else "none"
        raise UsageError(
            f"{path}: config num_hidden_layers is {config.num_hidden_layers} but the weights hold "
            f"{held}; the config does not belong to these weights, fix it or pass the right --config"
        )


def _meta_state(config, task: str, path) -> dict:
    """The state_dict the task's HF class expects, built on the meta device: shapes and dtypes, no memory."""
    import transformers

    cls = getattr(transformers, TASKS[task][0])
    try:
        with torch.device("meta"):
            model = cls(config)
    except Exception as e:  # e.g. an unknown hidden_act
        raise UsageError(
            f"{path}: config cannot build {cls.__name__} ({short(e)}); fix the checkpoint's config"
        ) from None
    tied = getattr(model, "_tied_weights_keys", None) or {}
    expected = dict(model.state_dict())
    expected["__tied__"] = set(tied.keys() if isinstance(tied, dict) else tied)
    expected["__class__"] = cls.__name__
    return expected


def check_keys_and_shapes(state: dict, expected: dict, table_key: str, path) -> None:
    tied, name = expected.pop("__tied__"), expected.pop("__class__")
    missing = sorted(set(expected) - set(state) - tied - {table_key})
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
                "RoFormer weights are float32/float16/bfloat16, re-save the checkpoint from training"
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

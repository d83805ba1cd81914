"""Load a RoFormer checkpoint in the formats people have, and rebuild the HF model.

In: a path (HF model folder, canonical `{"config", "state_dict"}` .pt, bare state_dict .pt/.bin or
.safetensors with a config, or a pickled nn.Module with `trust_pickle`). Out: `LoadedCheckpoint`
with an eval-mode HF model whose weights are exactly the checkpoint's (missing or unexpected keys
are an error; only the sinusoidal table and tied weights may be absent).
"""

from __future__ import annotations

import numbers
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from export.errors import UsageError
from export.files import MiB, load_json, require_regular_file
from export.reference import sincos_table
from export.spec import ARCHITECTURE_TO_TASK, TASKS

TABLE_KEY = "roformer.encoder.embed_positions.weight"
PREFIXES = ("module.", "model.")
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass
class LoadedCheckpoint:
    model: torch.nn.Module
    config: object  # transformers.RoFormerConfig
    task: str
    source_format: str
    table: str  # "checkpoint" (verified against the formula) or "generated" (absent from the file)


def load_checkpoint(path: str | Path, config_path: str | Path | None = None,
                    trust_pickle: bool = False, task: str | None = None) -> LoadedCheckpoint:
    path = Path(path)
    if not path.exists():
        raise UsageError(f"checkpoint {path} does not exist; pass --model PATH to a .pt/.safetensors file or HF folder")
    if path.is_dir():
        config, state, fmt = _load_hf_folder(path)
    elif require_regular_file(path, what="checkpoint").stat().st_size == 0:
        raise UsageError(f"checkpoint {path} is empty (0 bytes); re-save or re-download it")
    elif path.suffix == ".safetensors":
        state, fmt = _load_safetensors(path), "safetensors state_dict"
        config = _config_beside(path, config_path)
    else:
        obj = _torch_load(path, trust_pickle)
        config, state, fmt = _unpack_torch_object(path, obj, config_path)
    config = _make_config(config, path)
    state = _strip_prefixes(state)
    task = task or _detect_task(state, config, path)
    model, table = _build_model(config, state, task, path)
    return LoadedCheckpoint(model=model, config=config, task=task, source_format=fmt, table=table)


# ---- file formats --------------------------------------------------------------------------------

def _load_hf_folder(folder: Path):
    cfg = folder / "config.json"
    if not cfg.exists():
        raise UsageError(f"{folder}/ has no config.json; pass the folder written by save_pretrained()")
    for name in HF_WEIGHT_FILES:
        weights = folder / name
        if weights.exists():
            require_regular_file(weights, what="checkpoint weights")
            state = _load_safetensors(weights) if name.endswith(".safetensors") else _torch_load(weights, False)
            if not isinstance(state, dict):
                raise UsageError(f"{weights} does not hold a state_dict; re-save it with save_pretrained()")
            return _read_json(cfg), state, f"HF folder ({name})"
    raise UsageError(f"{folder}/ has no {' or '.join(HF_WEIGHT_FILES)}; pass the folder written by save_pretrained()")


def _load_safetensors(path: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise UsageError(f"{path} is not a readable safetensors file ({_short(e)}); re-save or re-download it") from None


def _torch_load(path: Path, trust_pickle: bool):
    with open(path, "rb") as f:
        head = f.read(2)
    # torch.save writes a zip archive; legacy files are a raw pickle (protocol 2+ starts with 0x80)
    if not zipfile.is_zipfile(path) and head[:1] != b"\x80":
        raise UsageError(f"{path} is not a readable PyTorch checkpoint (not a complete torch.save archive nor a "
                         "pickle: truncated or another format); re-save or re-download it")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if not trust_pickle:
            raise UsageError(f"{path} is a pickle that needs arbitrary code to load ({_short(e)}); if you trust "
                             "its source, pass --trust-pickle, or re-save it as {config, state_dict}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise UsageError(f"{path} is not a readable PyTorch checkpoint ({_short(e)}); it may be truncated, "
                         "re-save or re-download it") from None
    # Only reached with trust_pickle=True after the safe load refused: unpickling runs the file's code.
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # any failure inside foreign pickled code is the file's problem, reported as such
        raise UsageError(f"{path} could not be unpickled even with --trust-pickle ({_short(e)})") from None


def _unpack_torch_object(path: Path, obj, config_path):
    if isinstance(obj, torch.nn.Module):
        config = getattr(obj, "config", None)
        if config is None or getattr(config, "model_type", None) != "roformer":
            raise UsageError(f"{path} holds a {type(obj).__name__}, not a HF RoFormer model; "
                             "save a RoFormer model or {config, state_dict}")
        return config.to_dict(), obj.state_dict(), "pickled nn.Module"
    if not isinstance(obj, dict):
        raise UsageError(f"{path} holds a {type(obj).__name__}, not a state_dict or {{config, state_dict}}; "
                         "re-save it as torch.save({'config': cfg.to_dict(), 'state_dict': model.state_dict()})")
    if "state_dict" in obj and "config" in obj:
        if not isinstance(obj["config"], dict) or not isinstance(obj["state_dict"], dict):
            raise UsageError(f"{path}: 'config' must be a dict and 'state_dict' a dict of tensors")
        return obj["config"], obj["state_dict"], "canonical {config, state_dict}"
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return _config_beside(path, config_path), obj, "bare state_dict"
    raise UsageError(f"{path} is a dict with keys {sorted(obj)[:5]}, neither a state_dict nor {{config, state_dict}}; "
                     "re-save it in one of those forms")


def _config_beside(path: Path, config_path) -> dict:
    cfg = Path(config_path) if config_path else path.with_name("config.json")
    if not cfg.exists():
        raise UsageError(f"{path} is a bare state_dict and {cfg} does not exist; pass --config config.json")
    return _read_json(cfg)


def _read_json(path: Path) -> dict:
    data = load_json(path, what="checkpoint config", max_bytes=MiB)  # a RoFormer config.json is ~1 KB
    if not isinstance(data, dict):
        raise UsageError(f"{path} does not hold a JSON object; pass a RoFormer config.json")
    return data


# ---- config, keys, task --------------------------------------------------------------------------

def _make_config(config, path: Path):
    from transformers import RoFormerConfig
    if not isinstance(config, dict):
        config = config.to_dict()
    model_type = config.get("model_type", "roformer")
    if model_type != "roformer":
        raise UsageError(f"{path}: config says model_type={model_type!r}, not a RoFormer; pass a RoFormer checkpoint")
    check_config_values(config, path)
    try:
        cfg = RoFormerConfig(**{k: v for k, v in config.items() if k != "model_type"})
    except (TypeError, ValueError) as e:
        raise UsageError(f"{path}: config is not a valid RoFormerConfig ({_short(e)})") from None
    check_config_values(cfg.to_dict(), path)  # HF's defaults for the fields the file leaves out
    heads = cfg.num_attention_heads
    if cfg.hidden_size % heads:
        raise UsageError(f"{path}: config num_attention_heads {heads} does not divide hidden_size {cfg.hidden_size}; "
                         "fix the checkpoint's config (each head gets hidden_size / heads channels)")
    if (cfg.hidden_size // heads) % 2:
        raise UsageError(f"{path}: config hidden_size {cfg.hidden_size} / num_attention_heads {heads} gives an odd "
                         "head size; rotary embeddings rotate channel pairs, fix the checkpoint's config")
    if cfg.is_decoder:
        raise UsageError(f"{path}: is_decoder=True (RoFormerForCausalLM) is not supported; export an encoder")
    return cfg


# Sizes that must be whole numbers >= 1; embedding_size may also be null (then it is hidden_size).
POSITIVE_INT_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                       "max_position_embeddings", "type_vocab_size", "embedding_size")


def check_config_values(config: dict, path) -> None:
    """Refuse (UsageError naming the field and the rule) a size that is not an integer >= 1.
    bool is refused although Python counts it as an int: `hidden_size: true` is a broken file, not 1."""
    for field in POSITIVE_INT_FIELDS:
        if field not in config or (field == "embedding_size" and config[field] is None):
            continue
        v = config[field]
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise UsageError(f"{path}: config {field} is {v!r} ({type(v).__name__}); it must be an integer >= 1, "
                             "fix the checkpoint's config")
        if v < 1:
            raise UsageError(f"{path}: config {field} is {v}; it must be an integer >= 1, fix the checkpoint's config")


def check_finite(state: dict, path) -> None:
    """Refuse a checkpoint holding NaN or inf in any floating tensor, naming the first one."""
    for k, v in state.items():
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            bad = int(v.numel() - torch.isfinite(v).sum().item())
            if bad:
                raise UsageError(f"{path}: weight {k} has {bad} non-finite value(s) (NaN/inf); the checkpoint is "
                                 "corrupt, re-export it from training")


def _strip_prefixes(state: dict) -> dict:
    for prefix in PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _detect_task(state: dict, config, path: Path) -> str:
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
        raise UsageError(f"{path}: keys {sorted(keys)[:3]}... are not a RoFormer state_dict; pass a RoFormer checkpoint")
    declared = [ARCHITECTURE_TO_TASK[a] for a in (config.architectures or []) if a in ARCHITECTURE_TO_TASK]
    if declared and task != "model" and declared[0] != task:
        raise UsageError(f"{path}: config.architectures says {config.architectures[0]} but the weights hold a "
                         f"{TASKS[task][0]} head; fix config.json")
    return task


def _build_model(config, state: dict, task: str, path: Path):
    import transformers
    cls = getattr(transformers, TASKS[task][0])
    if task == "model":  # a bare encoder: accept keys with or without the "roformer." prefix
        state = {k.removeprefix("roformer."): v for k, v in state.items()}
    torch.manual_seed(0)  # never used for weights that matter: every key must come from the file
    try:
        model = cls(config).eval()
    except (KeyError, ValueError, TypeError, RuntimeError) as e:  # e.g. an unknown hidden_act
        raise UsageError(f"{path}: config cannot build {cls.__name__} ({_short(e)}); fix the checkpoint's config") from None
    table_key = TABLE_KEY if task != "model" else TABLE_KEY.removeprefix("roformer.")
    expected = model.state_dict()
    tied = _tied_keys(model)
    missing = sorted(set(expected) - set(state) - tied - {table_key})
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = ([f"missing {len(missing)} keys {missing[:6]}"] if missing else []) + \
                ([f"unexpected {len(unexpected)} keys {unexpected[:6]}"] if unexpected else [])
        raise UsageError(f"{path} does not match {cls.__name__}: {'; '.join(parts)}; check the checkpoint and "
                         "its config (num_hidden_layers, heads, num_labels)")
    for k, v in state.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise UsageError(f"{path}: {k} has shape {tuple(v.shape)}, config expects {tuple(expected[k].shape)}; "
                             "check config.json against the weights")
    check_finite(state, path)
    table = "checkpoint" if table_key in state else "generated"
    if table == "checkpoint":
        check_table(state[table_key], path)
    else:
        state = dict(state)
        emb = expected[table_key]
        state[table_key] = torch.from_numpy(sincos_table(emb.shape[0], emb.shape[1])).to(emb.dtype)
    model.load_state_dict(state, strict=False)  # strictness enforced above, with tied keys allowed
    model.tie_weights()
    return model.to(next(iter(state.values())).dtype if _all_same_float_dtype(state) else torch.float32), table


def check_table(weight: torch.Tensor, path) -> None:
    """The sinusoidal table is a formula: refuse a checkpoint whose table is anything else."""
    rows, dim = weight.shape
    want = torch.from_numpy(sincos_table(rows, dim, dtype=np.float64)).to(weight.dtype)
    err = (weight.double() - want.double()).abs().max().item()
    tol = torch.finfo(weight.dtype).eps  # one ulp at 1.0: rounding-order differences only
    if not err <= tol:
        raise UsageError(f"{path}: the sinusoidal position table differs from the RoFormer formula by {err:.3g} "
                         f"(> {tol:.1g}); this checkpoint was not trained with standard RoFormer rotary embeddings")


def _tied_keys(model) -> set[str]:
    tied = getattr(model, "_tied_weights_keys", None) or {}
    return set(tied.keys() if isinstance(tied, dict) else tied)


def _all_same_float_dtype(state: dict) -> bool:
    return len({v.dtype for v in state.values() if v.is_floating_point()}) == 1


def _short(e: Exception) -> str:
    return str(e).splitlines()[0][:160] if str(e) else type(e).__name__

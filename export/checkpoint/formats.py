"""Read a checkpoint in the formats people have: its config dict and its tensors, nothing built.

In: a path (HF model folder: config.json + model.safetensors, or shards named by model.safetensors.index.json,
or pytorch_model.bin; canonical `{"config", "state_dict"}` .pt, bare state_dict .pt/.bin or .safetensors with
a config, or a pickled nn.Module with `trust_pickle`), and an optional `--config`.
Out: `CheckpointFiles` (config dict, state dict, format, where the config came from). Tensors of a
torch.save archive are memory-mapped, so reading costs no copy of the weights until they are used.

`--config` beats the config a checkpoint carries (explicit beats implicit; the report records which one
was used). Every way a file can be unreadable is a UsageError naming it (exit 2): pickles that need code
(without `--trust-pickle`), truncated or foreign files, and whatever else torch's safe loader rejects.
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from export.errors import UsageError
from export.inputs.files import MiB, load_json, require_regular_file

HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
HF_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


@dataclass
class CheckpointFiles:
    config: dict
    state: dict
    source_format: str
    config_source: str  # "checkpoint", "config.json beside it", or "--config <path>"


def read_checkpoint(
    path: str | Path, config_path: str | Path | None = None, trust_pickle: bool = False
) -> CheckpointFiles:
    path = Path(path)
    if not path.exists():
        raise UsageError(f"checkpoint {path} does not exist; pass --model PATH to a .pt/.safetensors file or HF folder")
    explicit = _read_json(Path(config_path)) if config_path else None  # read first: a bad --config fails at once
    if path.is_dir():
        config, state, fmt, source = *_load_hf_folder(path), "checkpoint (config.json)"
    elif require_regular_file(path, what="checkpoint").stat().st_size == 0:
        raise UsageError(f"checkpoint {path} is empty (0 bytes); re-save or re-download it")
    elif path.suffix == ".safetensors":
        state, fmt = _load_safetensors(path), "safetensors state_dict"
        config, source = _config_beside(path, explicit)
    else:
        config, state, fmt, source = _unpack_torch_object(path, _torch_load(path, trust_pickle), explicit)
    if explicit is not None:
        config, source = explicit, f"--config {config_path}"
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UsageError(f"{path} holds no tensors to load as a state_dict; pass a model checkpoint")
    return CheckpointFiles(config, state, fmt, source)


def _load_hf_folder(folder: Path) -> tuple[dict, dict, str]:
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
    for name in HF_INDEX_FILES:
        if (folder / name).exists():
            return _read_json(cfg), _load_shards(folder / name), f"HF folder (sharded, {name})"
    raise UsageError(
        f"{folder}/ has no {' or '.join(HF_WEIGHT_FILES + HF_INDEX_FILES)}; pass the folder written by "
        "save_pretrained()"
    )


def _load_shards(index: Path) -> dict:
    """The tensors of a sharded checkpoint: every shard its index names (plain file names in the same folder,
    nothing else), each holding exactly the keys the index maps to it."""
    data = load_json(index, what="checkpoint index", max_bytes=64 * MiB)
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map or not all(isinstance(v, str) for v in weight_map.values()):
        raise UsageError(
            f"{index} has no weight_map of key -> shard file; re-save the checkpoint with save_pretrained()"
        )
    state: dict = {}
    for shard in sorted(set(weight_map.values())):
        if Path(shard).name != shard or shard in (".", ".."):
            raise UsageError(f"{index} names shard {shard!r}, not a file beside it; re-save the checkpoint")
        path = require_regular_file(index.parent / shard, what="checkpoint shard")
        tensors = _load_safetensors(path) if shard.endswith(".safetensors") else _torch_load(path, False)
        if not isinstance(tensors, dict):
            raise UsageError(f"{path} does not hold a state_dict; re-save the checkpoint with save_pretrained()")
        mapped = {k for k, v in weight_map.items() if v == shard}
        if set(tensors) != mapped:
            odd = sorted(set(tensors) ^ mapped)[:3]
            raise UsageError(
                f"{path} does not hold the keys {index.name} maps to it (e.g. {odd}); re-save the checkpoint"
            )
        state.update(tensors)
    return state


def read_tensors(path: Path) -> dict:
    """The tensors of a .safetensors file, or of a torch.save file read with weights_only=True (no code runs);
    UsageError for anything else."""
    require_regular_file(path, what="weights")
    if path.suffix == ".safetensors":
        state = _load_safetensors(path)
    else:
        try:
            state = _torch_load(path, False)
        except UsageError:  # no --trust-pickle here: weights that only unpickling reads are refused
            raise UsageError(
                f"{path} is not a weights file torch.load(weights_only=True) reads; re-save it as model.safetensors"
            ) from None
    if not isinstance(state, dict):
        raise UsageError(f"{path} does not hold a state_dict of tensors")
    return state


def _load_safetensors(path: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise UsageError(f"{path} is not a readable safetensors file ({short(e)}); re-save or re-download it") from None


def _torch_load(path: Path, trust_pickle: bool):
    with open(path, "rb") as f:
        head = f.read(2)
    is_zip = zipfile.is_zipfile(path)
    # torch.save writes a zip archive; legacy files are a raw pickle (protocol 2+ starts with 0x80)
    if not is_zip and head[:1] != b"\x80":
        raise UsageError(
            f"{path} is not a readable PyTorch checkpoint (not a complete torch.save archive nor a "
            "pickle: truncated or another format); re-save or re-download it"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as e:
        if not trust_pickle or "weights_only" not in str(e):
            hint = (
                "if you trust its source, pass --trust-pickle, or re-save it as {config, state_dict}"
                if "weights_only" in str(e)
                else "it may be truncated or corrupt, re-save or re-download it"
            )
            raise UsageError(f"{path} is not a checkpoint the safe loader accepts ({short(e)}); {hint}") from None
    except Exception as e:  # any failure of the safe loader on a foreign file is the file's problem
        raise UsageError(
            f"{path} is not a readable PyTorch checkpoint ({short(e)}); it may be truncated or "
            "corrupt, re-save or re-download it"
        ) from None
    # Only reached with trust_pickle=True after the safe load refused: unpickling runs the file's code.
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # any failure inside foreign pickled code is the file's problem, reported as such
        raise UsageError(f"{path} could not be unpickled even with --trust-pickle ({short(e)})") from None


def _unpack_torch_object(path: Path, obj, explicit: dict | None):
    if isinstance(obj, torch.nn.Module):
        config = getattr(obj, "config", None)
        if config is None or not callable(getattr(config, "to_dict", None)):
            raise UsageError(
                f"{path} holds a {type(obj).__name__}, not a HF model with a config; "
                "save a transformers model or {config, state_dict}"
            )
        return config.to_dict(), obj.state_dict(), "pickled nn.Module", "checkpoint (the module's config)"
    if not isinstance(obj, dict):
        raise UsageError(
            f"{path} holds a {type(obj).__name__}, not a state_dict or {{config, state_dict}}; "
            "re-save it as torch.save({'config': cfg.to_dict(), 'state_dict': model.state_dict()})"
        )
    if "state_dict" in obj and "config" in obj:
        if not isinstance(obj["config"], dict) or not isinstance(obj["state_dict"], dict):
            raise UsageError(f"{path}: 'config' must be a dict and 'state_dict' a dict of tensors")
        return obj["config"], obj["state_dict"], "canonical {config, state_dict}", "checkpoint"
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        config, source = _config_beside(path, explicit)
        return config, obj, "bare state_dict", source
    raise UsageError(
        f"{path} is a dict with keys {sorted(map(str, obj))[:5]}, neither a state_dict nor "
        "{config, state_dict}; re-save it in one of those forms"
    )


def _config_beside(path: Path, explicit: dict | None) -> tuple[dict, str]:
    if explicit is not None:
        return explicit, "--config"
    cfg = path.with_name("config.json")
    if not cfg.exists():
        raise UsageError(f"{path} is a bare state_dict and {cfg} does not exist; pass --config config.json")
    return _read_json(cfg), f"{cfg.name} beside it"


def _read_json(path: Path) -> dict:
    data = load_json(path, what="checkpoint config", max_bytes=MiB)  # a config.json is 1-2 KB
    if not isinstance(data, dict):
        raise UsageError(f"{path} does not hold a JSON object; pass the model's config.json")
    return data


def short(e: BaseException) -> str:
    return str(e).splitlines()[0][:160] if str(e) else type(e).__name__

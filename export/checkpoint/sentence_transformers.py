"""A sentence-transformers checkpoint folder's own pipeline, read as data (no code of the folder runs).

In:  a checkpoint folder with `modules.json` (sentence-transformers' module list) and the folders it names.
Out: `StPipeline`: the Pooling it computes (export.passes.pooling.spec), the Matryoshka widths the checkpoint
     declares, and every file read with its sha256 (report.json `pooling.source`).

What is read, as sentence-transformers 6.3.0 reads it (sentence_transformer/modules/pooling.py, base/modules/
dense.py, base/modules/normalize.py, sentence_transformer/model.py; module paths in modules.json may use the older
`sentence_transformers.models.X` names, which 6.3.0 maps to the same classes):
- modules.json: a Transformer at the folder itself (path ""), one Pooling, then any Dense layers, then an
  optional Normalize; any other module or order is refused with its name.
- Pooling config.json: `pooling_mode` (a mode or a list, concatenated in order), else the legacy
  `pooling_mode_*` flags (cls, max, mean, mean_sqrt_len_tokens, weightedmean, lasttoken in that order; none
  set means mean); `include_prompt: false` is refused (it needs the prompt length, which the graph has no
  input for); `embedding_dimension` / `word_embedding_dimension` must be the encoder's hidden size.
- Dense config.json and model.safetensors / pytorch_model.bin (weights_only): `linear.weight` [out, in],
  `linear.bias`; `activation_function` a torch.nn class among Identity, Tanh, ReLU, GELU, Sigmoid, SiLU
  (absent: Tanh, its default); `use_residual` and other input/output names are refused.
- config_sentence_transformers.json `truncate_dim`: the truncation sentence-transformers applies by default.
- config.json `matryoshka_dimensions` (the widths a truncation may keep) or `is_matryoshka` (any width):
  the keys vLLM reads; jina-embeddings-v3 declares [32, 64, 128, 256, 512, 768, 1024].
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from export.checkpoint.formats import read_tensors
from export.errors import UsageError
from export.folder.digest import sha256_file
from export.inputs.files import load_json
from export.passes.pooling.spec import EMBEDDING, MODES, Dense, Pooling

MODULES = "modules.json"
ST_CONFIG = "config_sentence_transformers.json"
LEGACY_FLAGS = {  # Pooling's legacy config keys, in the order 6.3.0 concatenates them
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
ACTIVATIONS = {"Identity": "identity", "Tanh": "tanh", "ReLU": "relu", "GELU": "gelu", "Sigmoid": "sigmoid"}
ACTIVATIONS |= {"SiLU": "silu"}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # the order Module.load_torch_weights tries them


@dataclass
class StPipeline:
    """The folder's pipeline: `pooling` (normalize, Dense, the default truncate_dim), `matryoshka` (declared
    widths; () when any width is declared allowed, None when nothing is declared), `files` {name: sha256}."""

    folder: Path
    pooling: Pooling
    matryoshka: tuple[int, ...] | None = None
    files: dict[str, str] = field(default_factory=dict)


def has_pipeline(folder: Path) -> bool:
    return folder.is_dir() and (folder / MODULES).is_file()


def read_pipeline(folder: Path, hidden: int) -> StPipeline:
    """The pipeline of `folder` (has_pipeline), for an encoder of `hidden` channels; UsageError for what is
    not implemented, naming it."""
    files: dict[str, str] = {}

    def read(rel: str):
        path = folder / rel
        obj = load_json(path, what="sentence-transformers config", max_bytes=1 << 20)
        files[rel] = sha256_file(path)
        return obj

    modules = read(MODULES)
    kinds = _module_kinds(modules, folder)
    mode = _pooling_mode(read(_config(kinds[1][1])), hidden, folder / kinds[1][1])
    dense, normalize = [], False
    for kind, path in kinds[2:]:
        if kind == "Dense":
            dense.append(_dense(read(_config(path)), folder / path, files, folder))
        else:
            normalize = _normalize(folder, path, read)
    truncate = None
    if (folder / ST_CONFIG).is_file():
        value = _dict(read(ST_CONFIG), folder / ST_CONFIG).get("truncate_dim")
        truncate = _positive(value, f"{folder / ST_CONFIG} truncate_dim") if value is not None else None
    pooling = Pooling(mode, normalize, dense=tuple(dense), truncate_dim=truncate)
    pooling.check_widths(hidden)
    return StPipeline(folder, pooling, matryoshka_widths(folder, read), files)


def _config(path: str) -> str:
    return f"{path}/config.json" if path else "config.json"


def _dict(obj, where: Path) -> dict:
    if not isinstance(obj, dict):
        raise UsageError(f"{where} is not a JSON object; re-save the sentence-transformers model")
    return obj


def _positive(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"{what} is {value!r}, expected a positive integer")
    return value


def _module_kinds(modules, folder: Path) -> list[tuple[str, str]]:
    """[(kind, path)] of modules.json, checked: Transformer at "", Pooling, Dense..., Normalize last."""
    where = folder / MODULES
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise UsageError(f"{where} is not a list of modules; re-save the sentence-transformers model")
    kinds = []
    for m in modules:  # in list order, as SentenceTransformer._load_sbert_model runs them
        kind, path = str(m.get("type", "")).rsplit(".", 1)[-1], m.get("path", "")
        if not str(m.get("type", "")).startswith("sentence_transformers.") or not isinstance(path, str):
            raise UsageError(f"{where}: module {m.get('type')!r} is not a sentence-transformers module we read")
        if ".." in Path(path).parts or Path(path).is_absolute():
            raise UsageError(f"{where}: module path {path!r} leaves the checkpoint folder")
        kinds.append((kind, path))
    if kinds and kinds[0] == ("Transformer", kinds[0][1]) and kinds[0][1] != "":
        raise UsageError(f"{where} puts the Transformer in {kinds[0][1]!r}, not the folder itself; not implemented")
    names = [k for k, _ in kinds]
    body = names[2:-1] if names[-1:] == ["Normalize"] and len(names) > 2 else names[2:]
    if names[:2] != ["Transformer", "Pooling"] or kinds[0][1] != "" or any(k != "Dense" for k in body):
        raise UsageError(
            f"{where} lists {' -> '.join(names)}; implemented: Transformer (at the folder itself) -> Pooling "
            "-> Dense... -> Normalize. Pass --pooling none, or a mode, to skip the folder's pipeline"
        )
    return kinds


def _pooling_mode(cfg, hidden: int, where: Path) -> str:
    """The mode string of a Pooling config (6.3.0's _convert_legacy_pooling_kwargs for the legacy keys)."""
    cfg = _dict(cfg, where)
    if cfg.get("include_prompt", True) is not True:
        raise UsageError(
            f"{where}: include_prompt false excludes the prompt's tokens from the pooling, and the graph has no "
            "input for the prompt's length; not implemented"
        )
    width = cfg.get("embedding_dimension", cfg.get("word_embedding_dimension"))
    if width is not None and width != hidden:
        raise UsageError(f"{where}: pools {width} channels, the checkpoint's encoder has {hidden}")
    mode = cfg.get("pooling_mode")
    if mode is None:
        mode = [m for key, m in LEGACY_FLAGS.items() if cfg.get(key)] or ["mean"]
    modes = [mode] if isinstance(mode, str) else mode
    if not isinstance(modes, list) or not modes or any(m not in MODES for m in modes):
        raise UsageError(f"{where}: pooling_mode {mode!r} is not one of {', '.join(MODES)} (or a list of them)")
    return "+".join(modes)


def _dense(cfg, where: Path, files: dict, folder: Path) -> Dense:
    cfg = _dict(cfg, where / "config.json")
    for key in ("module_input_name", "module_output_name"):
        if cfg.get(key, EMBEDDING) not in (EMBEDDING, None):
            raise UsageError(f"{where}: {key} {cfg[key]!r} reads or writes another feature; not implemented")
    if cfg.get("use_residual"):
        raise UsageError(f"{where}: use_residual is not implemented")
    path = str(cfg.get("activation_function", "torch.nn.modules.activation.Tanh"))
    activation = ACTIVATIONS.get(path.rsplit(".", 1)[-1]) if path.startswith("torch.") else None
    if activation is None:
        raise UsageError(
            f"{where}: activation_function {path!r} is not one of torch.nn's {', '.join(ACTIVATIONS)}; not "
            "implemented (sentence-transformers would run Tanh instead, or the folder's code)"
        )
    weights = next((where / n for n in WEIGHT_FILES if (where / n).is_file()), None)
    if weights is None:
        raise UsageError(f"{where} has no {' or '.join(WEIGHT_FILES)}; re-save the sentence-transformers model")
    state = read_tensors(weights)
    files[str(weights.relative_to(folder))] = sha256_file(weights)
    w = _tensor(state, "linear.weight", weights)
    b = _tensor(state, "linear.bias", weights) if cfg.get("bias", True) else None
    shape = [_positive(cfg.get("out_features"), f"{where} out_features"), _positive(cfg.get("in_features"), "in")]
    if list(w.shape) != shape:
        raise UsageError(f"{weights}: linear.weight is {list(w.shape)}, its config says [out, in] = {shape}")
    return Dense(w, b, activation)


def _tensor(state: dict, key: str, where: Path) -> np.ndarray:
    if key not in state:
        raise UsageError(f"{where} has no {key!r} (keys: {', '.join(sorted(state)[:8])})")
    t = state[key].float().numpy()
    if not np.isfinite(t).all():
        raise UsageError(f"{where}: {key} holds NaN or infinite values")
    return t


def _normalize(folder: Path, path: str, read) -> bool:
    where = folder / path
    cfg = _dict(read(_config(path)), where) if (where / "config.json").is_file() else {}
    for key in ("module_input_name", "module_output_name"):
        if cfg.get(key, EMBEDDING) not in (EMBEDDING, None):
            raise UsageError(f"{where}: Normalize {key} {cfg[key]!r} is not {EMBEDDING}; not implemented")
    return True


def matryoshka_widths(folder: Path, read=None) -> tuple[int, ...] | None:
    """config.json's declared widths: a sorted tuple, () for `is_matryoshka` alone, None when it says nothing
    (or the folder has no config.json). read(rel) -> the parsed JSON (default: load_json)."""
    if not (folder / "config.json").is_file():
        return None
    if read is None:
        cfg = load_json(folder / "config.json", what="checkpoint config", max_bytes=1 << 20)
    else:
        cfg = read("config.json")
    cfg = _dict(cfg, folder / "config.json")
    dims = cfg.get("matryoshka_dimensions")
    if dims is not None:
        if not isinstance(dims, list) or not dims:
            raise UsageError(f"{folder}/config.json matryoshka_dimensions {dims!r} is not a list of widths")
        return tuple(sorted({_positive(d, f"{folder}/config.json matryoshka_dimensions") for d in dims}))
    return () if cfg.get("is_matryoshka") is True else None

"""The `Family` a family file declares: what the pipeline needs to know about one kind of checkpoint.

A family file (export/families/roformer.py, modernbert.py) builds one `Family` from data and small functions
of the config; export/families/registry.py finds it from a checkpoint's config. Everything else reads these
fields and never tests a `model_type` (tests/export/families/test_registry.py checks the code for that).

Fields, in the order a build needs them:
- recognising a checkpoint: `model_types`, `recognise(config dict, weight keys)` for configs without a
  model_type;
- building it: `make_config(config dict, path)` checks every field the file relies on and refuses, with the
  reason, what the file does not implement (UsageError, exit 2); `heads` (task -> transformers class);
  `base_prefix` (the base model's attribute and key prefix in the head classes); `layer_key` (the regex whose
  group 1 is the layer index of an encoder weight key); `detect_task(state, config)`; `attn_implementations`
  (the attention kernels the export may use, the first is the default);
- position tables that are a formula, not weights (RoFormer's sinusoidal table; None when the family has
  none): `positions`;
- what the graph looks like: `inputs`, `rotary(config, layer)`, `attention(config, layer)`, `layer_map`;
- describing it: `facts(config)` (export.families.facts.ModelFacts), `default_pooling`;
- making one: `tiny(**overrides)`, `demo(**overrides)` (config objects; random weights are made from them),
  `tokenizer(config)` (a `tokenizers.Tokenizer` shaped like the real checkpoints' own, None: a WordPiece one);
- checkpoints written for code that is never run, read as data: `adopts(config, keys)` (such a config is this
  family's, its remote-code fields notwithstanding); `adapters(state, config dict, path)` -> (state, TaskAdapters
  or None): per-task weight updates the checkpoint holds (export/families/adapters.py), merged by `--task`;
  `foreign`: (model_type, what to do) for another implementation's model_type of this family's checkpoints, which
  transformers does not implement (the remote-code refusal adds it);
- checkpoints stored under other names (legacy names, another implementation's layout) that transformers' own
  conversion mapping does not cover: `convert_state(state, config, path)` returns the state in the class's names
  (None: nothing beyond transformers' conversion);
- its text: `vocab_tokenizer` for a family whose checkpoints ship a vocab.txt (export/inputs/text.py); `prompts`, the
  prefixes its checkpoints expect before a text, by sentence-transformers prompt name (NomicBERT's
  "search_query: "...): report.json `model.prompts`, published to Triton and added by engines.client --prompt.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from export.families.adapters import TaskAdapters
from export.families.facts import ModelFacts
from export.families.spec import LayerAttention, LayerRotary

if TYPE_CHECKING:  # the families' files import transformers where they build: loading this module needs none of it
    from transformers import PreTrainedConfig, PreTrainedTokenizerBase

POST_NORM, PRE_NORM = "post", "pre"  # where the normalisations sit: after each residual Add, or before each block


@dataclass(frozen=True)
class Tap:
    """A point of the PyTorch model export.diagnose reads: a submodule's output, or its first input
    (`port="input"`: e.g. the residual stream entering a pre-norm block's normalisation)."""

    module: str  # dotted path below the layer (or below the base model, for `embeddings`)
    port: str = "output"


# rotary_tap(layer module, record) -> a context manager in which every call of the layer's rotary records the
# rotated query and key ([B, heads, S, Dh] each) through record(list_of_tensors)
RotaryTap = Callable[[torch.nn.Module, Callable[[list], None]], AbstractContextManager]


@dataclass(frozen=True)
class LayerMap:
    """How export.diagnose finds the landmarks of export/diagnose/structure.py in this family's models.

    norm: POST_NORM (BERT, RoFormer: the layer output is a LayerNorm output) or PRE_NORM (ModernBERT: the
    layer output is the residual Add; a final norm follows the last layer). attention_input: the Q and K
    projections, or the one fused QKV projection."""

    norm: str
    layers: str  # the ModuleList of layers, below the base model
    embeddings: Tap
    attention_input: tuple[Tap, ...]
    attention_output: Tap
    ffn_output: Tap
    layer_output: Tap
    rotary_tap: RotaryTap


@dataclass(frozen=True)
class Positions:
    """Position tables a family stores as weights although they are a formula (RoFormer's sinusoidal table).

    keys(task): their state-dict keys in the task's class; check(tensor, path, config): refuse a stored table that is
    not the formula (it is then dropped: the model gets the formula's); restore(model, rows): the formula's
    table, at least `rows` long, put in the built model; at_least(model, rows): a context manager in which the
    model's table has at least `rows` rows, restored after it (yields the rows in use)."""

    keys: Callable[[str], tuple[str, ...]]
    check: Callable[[torch.Tensor, Path, object], None]
    restore: Callable[[torch.nn.Module, int | None], None]
    at_least: Callable[[torch.nn.Module, int], AbstractContextManager[int]]


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]
    recognise: Callable[[dict, set[str]], bool]
    make_config: Callable[[dict, Path], PreTrainedConfig]
    heads: Mapping[str, str]  # task (export.spec.TASKS) -> transformers class name
    base_prefix: str  # "roformer", "model": the base model's attribute in the head classes
    layer_key: str  # regex; group 1 is the layer index of an encoder weight key
    detect_task: Callable[[dict, object], str | None]  # (state, config) -> task, None: not this family's
    inputs: tuple[str, ...]
    rotary: Callable[[object, int], LayerRotary]
    attention: Callable[[object, int], LayerAttention]
    layer_map: LayerMap
    facts: Callable[[object], ModelFacts]
    default_pooling: str
    tiny: Callable[..., object]
    demo: Callable[..., object]
    attn_implementations: tuple[str, ...] = ("eager",)
    positions: Positions | None = None
    # checkpoints that ship a vocab.txt instead of tokenizer.json: (table) -> (tokenizer, description); may raise
    # ImportError when its word segmenter is not installed (export.inputs.text then falls back to WordPiece alone)
    vocab_tokenizer: Callable[[dict], tuple[PreTrainedTokenizerBase, str]] | None = None
    prompts: tuple[tuple[str, str], ...] = ()  # (sentence-transformers prompt name, prefix added to the text)
    convert_state: Callable[[dict, object, Path], dict] | None = None  # (state, config, path) -> the class's names
    tokenizer: Callable[[object], object] | None = None  # (config) -> tokenizers.Tokenizer for demo checkpoints
    adopts: Callable[[dict, set[str]], bool] | None = None  # a remote-code config this family reads as data
    adapters: Callable[[dict, dict, Path], tuple[dict, TaskAdapters | None]] | None = None
    foreign: tuple[tuple[str, str], ...] = ()  # (another implementation's model_type, what to do), for refusals

    def rotaries(self, config) -> list[LayerRotary]:
        return [self.rotary(config, k) for k in range(self.facts(config).layers)]

    def attentions(self, config) -> list[LayerAttention]:
        return [self.attention(config, k) for k in range(self.facts(config).layers)]

    def model_class(self, task: str):
        import transformers

        return getattr(transformers, self.heads[task])

    def task_of_class(self, name: str) -> str | None:
        return next((t for t, c in self.heads.items() if c == name), None)

    def base(self, model: torch.nn.Module) -> torch.nn.Module:
        """The base model inside any head class (the model itself when it is the base model)."""
        return getattr(model, self.base_prefix, model)

    def at_least(self, model: torch.nn.Module, rows: int) -> AbstractContextManager[int]:
        """Positions up to `rows` while the block runs (a formula table swapped in only when the family has one)."""
        return self.positions.at_least(model, rows) if self.positions else nullcontext(rows)

"""RoFormer (transformers `roformer`): everything particular to it, nothing else.

Post-norm BERT encoder with rotary position embeddings over adjacent channel pairs (INTERLEAVED), theta
10000, R = head size, query and key rotated (value too with `rotary_value`), full attention in every layer;
inputs input_ids, attention_mask, token_type_ids. The sinusoidal table HF keeps as a weight
(`encoder.embed_positions.weight`, [max_position_embeddings, Dh] = [sin | cos]) is a formula: a stored one is
checked against it and replaced by it, and it is rebuilt longer for a --max-len past max_position_embeddings.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from export.errors import UsageError
from export.families.config_check import build_config, check_heads, check_values
from export.families.facts import ModelFacts
from export.families.family import POST_NORM, Family, LayerMap, Positions, Tap
from export.families.spec import FULL, INTERLEAVED, LayerAttention, LayerRotary, RotaryTable
from export.reference import DEFAULT_BASE, sincos_table

if TYPE_CHECKING:  # imported where the tokenizer is made
    from transformers import PreTrainedTokenizerBase

NAME = "roformer"
TABLE_KEY = "encoder.embed_positions.weight"  # below the base model; "roformer." before it in the head classes

INTS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
    "type_vocab_size",
    "embedding_size",
)
REALS = {
    "layer_norm_eps": (0.0, 1.0, False),
    "initializer_range": (0.0, float("inf"), True),
    "hidden_dropout_prob": (0.0, 1.0, True),
    "attention_probs_dropout_prob": (0.0, 1.0, True),
}
HEADS = {
    "model": "RoFormerModel",
    "masked-lm": "RoFormerForMaskedLM",
    "sequence-classification": "RoFormerForSequenceClassification",
    "token-classification": "RoFormerForTokenClassification",
    "question-answering": "RoFormerForQuestionAnswering",
    "multiple-choice": "RoFormerForMultipleChoice",
}


def recognise(config: dict, keys: set[str]) -> bool:
    """A config without model_type is RoFormer's when it says rotary_value or the weights hold its table."""
    return "rotary_value" in config or any(k.endswith(TABLE_KEY) for k in keys)


def make_config(config: dict, path: Path):
    check_values(config, path, INTS, REALS, nullable=("embedding_size",))
    cfg = build_config("RoFormerConfig", config, path)
    check_values(cfg.to_dict(), path, INTS, REALS, nullable=("embedding_size",))  # HF's defaults, too
    check_heads(cfg.hidden_size, cfg.num_attention_heads, path)
    if cfg.is_decoder:
        raise UsageError(f"{path}: is_decoder=True (RoFormerForCausalLM) is not supported; export an encoder")
    return cfg


def detect_task(state: dict, config) -> str | None:
    keys = set(state)
    if any(k.startswith("cls.predictions.") for k in keys):
        return "masked-lm"
    if "classifier.out_proj.weight" in keys:
        return "sequence-classification"
    if "qa_outputs.weight" in keys:
        return "question-answering"
    if "classifier.weight" in keys:
        # ForMultipleChoice and ForTokenClassification hold the same keys; the architecture says which,
        # else the shape does: a multiple-choice classifier scores each choice with one logit.
        declared = {FAMILY.task_of_class(a) for a in (config.architectures or [])}
        both = declared & {"multiple-choice", "token-classification"}
        if both:
            return both.pop()
        one_logit = state["classifier.weight"].shape[0] == 1 and config.num_labels != 1
        return "multiple-choice" if one_logit else "token-classification"
    if any(k.startswith(("roformer.", "embeddings.")) for k in keys):
        return "model"
    return None


# ---- the sinusoidal table ----------------------------------------------------------------------------------


def table_keys(task: str) -> tuple[str, ...]:
    return (TABLE_KEY if task == "model" else f"roformer.{TABLE_KEY}",)


def check_table(weight: torch.Tensor, path, config=None) -> None:
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


def _encoder(model):
    return FAMILY.base(model).encoder


def restore_table(model, rows: int | None) -> None:
    """The formula's table (float64-built, rounded once) in the model, at least `rows` rows long."""
    old = _encoder(model).embed_positions
    _set_table(model, max(rows or 0, old.weight.shape[0]))


def _set_table(model, rows: int) -> None:
    from transformers.models.roformer.modeling_roformer import RoFormerSinusoidalPositionalEmbedding

    enc = _encoder(model)
    old = enc.embed_positions
    new = RoFormerSinusoidalPositionalEmbedding(rows, old.weight.shape[1])
    with torch.no_grad():
        new.weight.copy_(torch.from_numpy(sincos_table(rows, old.weight.shape[1], dtype=np.float64)))
    enc.embed_positions = new.to(old.weight.dtype).eval()


@contextmanager
def table_of_at_least(model, rows: int) -> Iterator[int]:
    """The model's table with at least `rows` rows while the block runs, restored after it: callers given a
    shorter model (export_onnx used alone) change nothing of it. Yields the rows in use."""
    enc = _encoder(model)
    old = enc.embed_positions
    if old.weight.shape[0] >= rows:
        yield old.weight.shape[0]
        return
    _set_table(model, rows)
    try:
        yield rows
    finally:
        enc.embed_positions = old


# ---- what the graph looks like -------------------------------------------------------------------------


def rotary(config, layer: int) -> LayerRotary:
    dh = config.hidden_size // config.num_attention_heads
    sites = ("query", "key", "value") if config.rotary_value else ("query", "key")
    h = config.num_attention_heads
    return LayerRotary(INTERLEAVED, dh, RotaryTable("default", dh, DEFAULT_BASE), tuple((s, h) for s in sites))


def attention(config, layer: int) -> LayerAttention:
    return LayerAttention(FULL)


ROTARY_METHOD = "apply_rotary_position_embeddings"  # RoFormerSelfAttention's, patched on the instance by name


@contextmanager
def rotary_tap(layer: torch.nn.Module, record) -> Iterator[None]:
    """Wrap the instance's apply_rotary_position_embeddings (a staticmethod HF calls through self) for the run."""
    attention = layer.get_submodule("attention.self")
    original = getattr(attention, ROTARY_METHOD)

    def tapped(*args, **kwargs):
        result = original(*args, **kwargs)
        record(list(result[:2]))  # query, key
        return result

    setattr(attention, ROTARY_METHOD, tapped)
    try:
        yield
    finally:
        delattr(attention, ROTARY_METHOD)  # the class's staticmethod shows through again


def vocab_tokenizer(table: dict) -> tuple[PreTrainedTokenizerBase, str]:
    """RoFormer checkpoints ship a vocab.txt; RoFormerTokenizer segments Chinese text into words with rjieba
    (ImportError without it). transformers 5 ignores `vocab_file=` here, so the table is passed as `vocab=`."""
    import rjieba  # noqa: F401  (RoFormerTokenizer's Chinese word segmentation)
    from transformers import RoFormerTokenizer

    return RoFormerTokenizer(vocab=table), "RoFormerTokenizer (rjieba word segmentation)"


def facts(config) -> ModelFacts:
    return ModelFacts(
        NAME,
        config.num_hidden_layers,
        config.hidden_size,
        config.num_attention_heads,
        config.hidden_size // config.num_attention_heads,
        config.intermediate_size,
        config.vocab_size,
        config.type_vocab_size,
        config.max_position_embeddings,
        (("embedding_size", config.embedding_size), ("rotary_value", bool(config.rotary_value))),
    )


# ---- configs to make models from (random weights: no hub here) ---------------------------------------------


def demo(**overrides):
    """Chinese-base-like in shape (12 layers, hidden 768, 12 heads, vocab 50000), max_position_embeddings 512 so
    `--max-len 2048` exercises the table extension."""
    from transformers import RoFormerConfig

    base = dict(
        vocab_size=50000,
        embedding_size=768,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        max_position_embeddings=512,
        type_vocab_size=2,
        rotary_value=False,
    )
    return RoFormerConfig(**{**base, **overrides})


def tiny(**overrides):
    base = dict(
        vocab_size=99,
        embedding_size=32,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
    )
    return demo(**{**base, **overrides})


FAMILY = Family(
    name=NAME,
    model_types=("roformer",),
    recognise=recognise,
    make_config=make_config,
    heads=HEADS,
    base_prefix="roformer",
    layer_key=r"(?:^|\.)encoder\.layer\.(\d+)\.",
    detect_task=detect_task,
    inputs=("input_ids", "attention_mask", "token_type_ids"),
    rotary=rotary,
    attention=attention,
    layer_map=LayerMap(
        norm=POST_NORM,
        layers="encoder.layer",
        embeddings=Tap("embeddings.LayerNorm"),
        attention_input=(Tap("attention.self.query"), Tap("attention.self.key")),
        attention_output=Tap("attention.output"),
        ffn_output=Tap("output.dense"),
        layer_output=Tap("output"),
        rotary_tap=rotary_tap,
    ),
    facts=facts,
    default_pooling="mean",
    tiny=tiny,
    demo=demo,
    positions=Positions(keys=table_keys, check=check_table, restore=restore_table, at_least=table_of_at_least),
    vocab_tokenizer=vocab_tokenizer,
)

"""ModernBERT (transformers `modernbert`): everything particular to it, nothing else.

Pre-norm encoder (embeddings -> LayerNorm; per layer x + attn(norm(x)), then x + mlp(norm(x)), layer 0 without
the attention norm; a final norm), fused QKV projection, gated GELU MLP, no token_type_ids. Rotary over split
halves (rotate_half: pairs (x[j], x[j + Dh/2])), R = head size, two tables: layers of type "full_attention"
use theta `rope_parameters.full_attention.rope_theta` (160000 in ModernBERT-base), "sliding_attention" layers
`rope_parameters.sliding_attention.rope_theta` (10000). Sliding layers attend within a half-window of
`local_attention // 2` (|i - j| <= 64 for ModernBERT-base's 128): the exporter writes that window into the
graph's mask, where validation checks it.

What this file does not implement is refused at load, with the reason: rope types other than "default", layer
types other than full/sliding, heads other than the base model, masked-LM and sequence classification.
transformers 5.25 runs ModernBERT with eager or sdpa attention and never unpads (the flash-attention path,
which does not export, transformers #35545, is only taken when asked for); the old `reference_compile` flag is
dropped from the config.
"""

from __future__ import annotations

from pathlib import Path

from export.errors import UsageError
from export.families.config_check import build_config, check_heads, check_values
from export.families.facts import ModelFacts
from export.families.family import PRE_NORM, Family, LayerMap, Tap
from export.families.spec import FULL, SLIDING, SPLIT_HALVES, LayerAttention, LayerRotary, RotaryTable
from export.families.taps import function_tap

NAME = "modernbert"
FULL_TYPE, SLIDING_TYPE = "full_attention", "sliding_attention"
TABLE_NAMES = {FULL_TYPE: "global", SLIDING_TYPE: "local"}

INTS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
    "local_attention",
    "global_attn_every_n_layers",
)
REALS = {
    "norm_eps": (0.0, 1.0, False),
    "initializer_range": (0.0, float("inf"), True),
    "attention_dropout": (0.0, 1.0, True),
    "mlp_dropout": (0.0, 1.0, True),
    "embedding_dropout": (0.0, 1.0, True),
    "classifier_dropout": (0.0, 1.0, True),
    "global_rope_theta": (0.0, float("inf"), False),
    "local_rope_theta": (0.0, float("inf"), False),
}
HEADS = {
    "model": "ModernBertModel",
    "masked-lm": "ModernBertForMaskedLM",
    "sequence-classification": "ModernBertForSequenceClassification",
}
UNSUPPORTED_HEADS = (
    "ModernBertForTokenClassification",
    "ModernBertForQuestionAnswering",
    "ModernBertForMultipleChoice",
)


def recognise(config: dict, keys: set[str]) -> bool:
    """A config without model_type is ModernBERT's when it has its window or theta fields, or its fused QKV."""
    return bool({"local_attention", "global_rope_theta"} & set(config)) or any(".attn.Wqkv." in k for k in keys)


def make_config(config: dict, path: Path):
    check_values(config, path, INTS, REALS)
    arch = next((a for a in config.get("architectures") or [] if a in UNSUPPORTED_HEADS), None)
    if arch:
        raise UsageError(
            f"{path}: config.architectures says {arch}, a head this toolchain does not export for ModernBERT "
            f"(supported: {', '.join(HEADS.values())})"
        )
    cfg = build_config("ModernBertConfig", {k: v for k, v in config.items() if k != "reference_compile"}, path)
    check_values(cfg.to_dict(), path, INTS, REALS)
    check_heads(cfg.hidden_size, cfg.num_attention_heads, path)
    unknown = sorted(set(cfg.layer_types) - set(TABLE_NAMES))
    if unknown or len(cfg.layer_types) != cfg.num_hidden_layers:
        raise UsageError(
            f"{path}: config layer_types {cfg.layer_types} must give each of the {cfg.num_hidden_layers} layers "
            f"one of {sorted(TABLE_NAMES)}; fix the checkpoint's config"
        )
    for layer_type in set(cfg.layer_types):
        params = cfg.rope_parameters[layer_type]
        if params.get("rope_type", "default") != "default":
            raise UsageError(
                f"{path}: config rope_parameters.{layer_type}.rope_type is {params['rope_type']!r}; this family "
                "file implements the default rotary table only (scaled rope types change the table's formula)"
            )
    return cfg


def detect_task(state: dict, config) -> str | None:
    keys = set(state)
    if any(k.startswith("decoder.") for k in keys) or ("head.dense.weight" in keys and "classifier.weight" not in keys):
        return "masked-lm"
    if "classifier.weight" in keys:
        return "sequence-classification"
    if any(k.startswith(("model.", "layers.", "embeddings.")) for k in keys):
        return "model"
    return None


# ---- what the graph looks like -------------------------------------------------------------------------


def rotary(config, layer: int) -> LayerRotary:
    dh = config.hidden_size // config.num_attention_heads
    layer_type = config.layer_types[layer]
    theta = float(config.rope_parameters[layer_type]["rope_theta"])
    h = config.num_attention_heads
    return LayerRotary(SPLIT_HALVES, dh, RotaryTable(TABLE_NAMES[layer_type], dh, theta), (("query", h), ("key", h)))


def attention(config, layer: int) -> LayerAttention:
    if config.layer_types[layer] == SLIDING_TYPE:
        return LayerAttention(SLIDING, config.local_attention // 2)
    return LayerAttention(FULL)


def facts(config) -> ModelFacts:
    return ModelFacts(
        NAME,
        config.num_hidden_layers,
        config.hidden_size,
        config.num_attention_heads,
        config.hidden_size // config.num_attention_heads,
        config.intermediate_size,
        config.vocab_size,
        None,
        config.max_position_embeddings,
        (
            ("local_attention", config.local_attention),
            ("layer_types", list(config.layer_types)),
            ("rope_theta", {t: float(p["rope_theta"]) for t, p in sorted(config.rope_parameters.items())}),
        ),
    )


# ---- configs to make models from (random weights: no hub here) ---------------------------------------------

# ModernBERT-base's special token ids (answerdotai/ModernBERT-base tokenizer): [UNK] 50280 .. [MASK] 50284
SPECIAL_IDS = {"[UNK]": 50280, "[CLS]": 50281, "[SEP]": 50282, "[PAD]": 50283, "[MASK]": 50284}
TINY_SPECIAL_IDS = {"[UNK]": 0, "[CLS]": 1, "[SEP]": 2, "[PAD]": 3, "[MASK]": 4}  # the same order, at 0..4


def _ids(special: dict) -> dict:
    cls, sep = special["[CLS]"], special["[SEP]"]
    return dict(pad_token_id=special["[PAD]"], bos_token_id=cls, cls_token_id=cls, eos_token_id=sep, sep_token_id=sep)


def demo(**overrides):
    """Shaped like ModernBERT-base: 22 layers, hidden 768, 12 heads, MLP 1152, local_attention 128 (every third
    layer global), theta 160000 global / 10000 local, vocab 50368, 8192 positions."""
    from transformers import ModernBertConfig

    base = dict(
        vocab_size=50368,
        hidden_size=768,
        intermediate_size=1152,
        num_hidden_layers=22,
        num_attention_heads=12,
        max_position_embeddings=8192,
        local_attention=128,
        global_rope_theta=160000.0,
        local_rope_theta=10000.0,
        classifier_pooling="mean",
        **_ids(SPECIAL_IDS),
    )
    return ModernBertConfig(**{**base, **overrides})


def tiny(**overrides):
    """3 layers (global, local, local), hidden 32, 2 heads (Dh 16), local_attention 16 (half-window 8), vocab 99."""
    base = dict(
        vocab_size=99,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=3,
        num_attention_heads=2,
        max_position_embeddings=128,
        local_attention=16,
        **_ids(TINY_SPECIAL_IDS),
    )
    return demo(**{**base, **overrides})


FAMILY = Family(
    name=NAME,
    model_types=("modernbert",),
    recognise=recognise,
    make_config=make_config,
    heads=HEADS,
    base_prefix="model",
    layer_key=r"(?:^|\.)layers\.(\d+)\.",
    detect_task=detect_task,
    inputs=("input_ids", "attention_mask"),
    rotary=rotary,
    attention=attention,
    layer_map=LayerMap(
        norm=PRE_NORM,
        layers="layers",
        embeddings=Tap("embeddings.norm"),
        attention_input=(Tap("attn.Wqkv"),),
        attention_output=Tap("mlp_norm", port="input"),
        ffn_output=Tap("mlp"),
        layer_output=Tap(""),
        rotary_tap=function_tap("transformers.models.modernbert.modeling_modernbert", "attn"),
    ),
    facts=facts,
    default_pooling="mean",
    tiny=tiny,
    demo=demo,
    attn_implementations=("eager", "sdpa"),
)

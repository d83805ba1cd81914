"""EuroBERT (transformers `eurobert`: EuroBERT-210m/610m/2.1B): everything particular to it, nothing else.

Llama-style pre-norm encoder: embeddings (no normalisation, no token types), per layer x + attn(rms(x)), then
x + mlp(rms(x)), a final RMSNorm; SwiGLU FFN; full bidirectional attention. Grouped-query attention: the key and
value projections have `num_key_value_heads` heads, each shared by num_attention_heads / num_key_value_heads
query heads (transformers' repeat_kv: query head h reads key/value head h // groups). So the K rotary rotates
fewer heads than Q (EuroBERT-2.1B: 18 query, 6 key heads; the tiny config: 4 and 2); the rotary pass and the
plugin take per-input head counts. Rotary over split halves, R = head_dim, theta 250000 (all EuroBERT
checkpoints), through `rope_parameters` (export/families/rope_parameters.py: default, linear, dynamic up to
max_position_embeddings). Inputs input_ids and attention_mask.

Pooling: mean. EuroBERT publishes no sentence-transformers pipeline; its sequence-classification head
averages over the unpadded tokens (`classifier_pooling` "late", transformers' default, or "mean").

What this file does not implement is refused at load, with the reason: rope types other than the three above,
a partial rotary, heads that do not group evenly, an attention or MLP bias flag that is not a bool.

Hub configs (EuroBERT-210m's config.json) say model_type eurobert with an auto_map into the folder's own
modeling_eurobert.py, rope_theta/rope_scaling (converted to rope_parameters by transformers itself) and, in
fine-tuned ones, the code's `clf_pooling`, which transformers 5.25 calls classifier_pooling and does not read: a
clf_pooling other than the classifier_pooling the config gives transformers is refused with the field.
"""

from __future__ import annotations

from pathlib import Path

from export.errors import UsageError
from export.families.config_check import build_config, check_original_names, check_values
from export.families.facts import ModelFacts
from export.families.family import PRE_NORM, Family, LayerMap, Tap
from export.families.rope_parameters import rotary_table
from export.families.spec import FULL, SPLIT_HALVES, LayerAttention, LayerRotary
from export.families.taps import function_tap

NAME = "eurobert"
INTS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "max_position_embeddings",
    "head_dim",
)
REALS = {
    "rms_norm_eps": (0.0, 1.0, False),
    "initializer_range": (0.0, float("inf"), True),
    "attention_dropout": (0.0, 1.0, True),
}
HEADS = {
    "model": "EuroBertModel",
    "masked-lm": "EuroBertForMaskedLM",
    "sequence-classification": "EuroBertForSequenceClassification",
    "token-classification": "EuroBertForTokenClassification",
}
POOLINGS = ("bos", "mean", "late")  # EuroBertForSequenceClassification.classifier_pooling


def recognise(config: dict, keys: set[str]) -> bool:
    """A config without model_type is EuroBERT's when it names its classifier pooling or mask token with RMSNorm
    layers (`input_layernorm`) and no token-type table."""
    rms = any(".input_layernorm." in k for k in keys) and not any("token_type" in k for k in keys)
    return rms and bool({"classifier_pooling", "mask_token_id"} & set(config))


def make_config(config: dict, path: Path):
    check_values(config, path, INTS, REALS, nullable=("head_dim", "num_key_value_heads"))
    cfg = build_config("EuroBertConfig", config, path)
    check_values(cfg.to_dict(), path, INTS, REALS)
    # EuroBERT's own code (its hub folder's configuration_eurobert.py) calls the classifier's pooling clf_pooling;
    # transformers 5.25 renamed it classifier_pooling and does not read the old name
    check_original_names(config, cfg, path, {"clf_pooling": "classifier_pooling"}, {})
    h, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    if h % kv:
        raise UsageError(
            f"{path}: config num_attention_heads {h} is not a multiple of num_key_value_heads {kv}; "
            "grouped-query attention shares each key/value head among a whole group of query heads"
        )
    if cfg.head_dim % 2:
        raise UsageError(f"{path}: config head_dim {cfg.head_dim} is odd; rotary embeddings rotate channel pairs")
    if cfg.classifier_pooling not in POOLINGS:
        raise UsageError(f"{path}: config classifier_pooling {cfg.classifier_pooling!r} is not one of {POOLINGS}")
    for flag in ("attention_bias", "mlp_bias"):
        if not isinstance(getattr(cfg, flag), bool):
            raise UsageError(f"{path}: config {flag} is {getattr(cfg, flag)!r}; it must be true or false")
    table(cfg, path)  # refuses what the table cannot be
    return cfg


def table(config, path="config"):
    return rotary_table("default", config.rope_parameters, config.head_dim, config.max_position_embeddings, path)


def detect_task(state: dict, config) -> str | None:
    keys = set(state)
    if "lm_head.weight" in keys:
        return "masked-lm"
    if "classifier.weight" in keys:
        return "sequence-classification" if "dense.weight" in keys else "token-classification"
    if any(k.startswith(("model.", "layers.", "embed_tokens.")) for k in keys):
        return "model"
    return None


# ---- what the graph looks like -------------------------------------------------------------------------


def rotary(config, layer: int) -> LayerRotary:
    heads = (("query", config.num_attention_heads), ("key", config.num_key_value_heads))
    return LayerRotary(SPLIT_HALVES, config.head_dim, table(config), heads)


def attention(config, layer: int) -> LayerAttention:
    return LayerAttention(FULL)


def facts(config) -> ModelFacts:
    t = table(config)
    return ModelFacts(
        NAME,
        config.num_hidden_layers,
        config.hidden_size,
        config.num_attention_heads,
        config.head_dim,
        config.intermediate_size,
        config.vocab_size,
        None,
        config.max_position_embeddings,
        (
            ("num_key_value_heads", config.num_key_value_heads),
            ("rope_theta", t.theta),
            ("rope_type", t.rope_type),
            ("rope_parameters", dict(t.parameters)),
        ),
    )


# ---- configs to make models from (random weights: no hub here) ---------------------------------------------

# EuroBERT's Llama-3 tokenizer: <|begin_of_text|> 128000, <|end_of_text|> 128001 (also its pad token), <|mask|>
# 128002. The demo pads with 128004 (Llama 3's <|finetune_right_pad_id|>) so that its WordPiece stand-in tokenizer
# (tests/fixtures/hf_checkpoints.py) gets one token per id; padding is masked out, so the id changes no output.
SPECIAL_IDS = {"[CLS]": 128000, "[SEP]": 128001, "[MASK]": 128002, "[UNK]": 128003, "[PAD]": 128004}
TINY_SPECIAL_IDS = {"[UNK]": 0, "[CLS]": 1, "[SEP]": 2, "[PAD]": 3, "[MASK]": 4}


def _ids(special: dict) -> dict:
    cls, sep = special["[CLS]"], special["[SEP]"]
    return dict(
        pad_token_id=special["[PAD]"],
        bos_token_id=cls,
        cls_token_id=cls,
        eos_token_id=sep,
        sep_token_id=sep,
        unk_token_id=special["[UNK]"],
        mask_token_id=special["[MASK]"],
    )


def demo(**overrides):
    """Shaped like EuroBERT-210m: 12 layers, hidden 768, 12 heads (and 12 key/value heads: the 210m model has no
    grouping; EuroBERT-2.1B has 18 and 6), SwiGLU FFN 3072, vocab 128256, 8192 positions, theta 250000."""
    from transformers import EuroBertConfig

    base = dict(
        vocab_size=128256,
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_key_value_heads=12,
        max_position_embeddings=8192,
        rope_parameters={"rope_type": "default", "rope_theta": 250000.0},
        **_ids(SPECIAL_IDS),
    )
    return EuroBertConfig(**{**base, **overrides})


def tiny(**overrides):
    """2 layers, hidden 32, 4 query heads and 2 key/value heads (Dh 8: groups of 2), SwiGLU FFN 37, vocab 99,
    128 positions, theta 250000."""
    base = dict(
        vocab_size=99,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=128,
        **_ids(TINY_SPECIAL_IDS),
    )
    return demo(**{**base, **overrides})


FAMILY = Family(
    name=NAME,
    model_types=("eurobert",),
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
        embeddings=Tap("embed_tokens"),
        attention_input=(Tap("self_attn.q_proj"), Tap("self_attn.k_proj")),
        attention_output=Tap("post_attention_layernorm", port="input"),
        ffn_output=Tap("mlp"),
        layer_output=Tap(""),
        rotary_tap=function_tap("transformers.models.eurobert.modeling_eurobert", "self_attn"),
    ),
    facts=facts,
    default_pooling="mean",
    tiny=tiny,
    demo=demo,
    attn_implementations=("eager", "sdpa"),
)

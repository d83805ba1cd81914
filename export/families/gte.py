"""GTE (transformers `gte`: gte-multilingual-base, Snowflake arctic-embed-m-v2.0): everything particular to it.

Post-norm encoder (embeddings -> LayerNorm; per layer LN(x + attn(x)), then LN(a + mlp(a))), separate Q/K/V
projections with bias, gated FFN (act(gate) * up -> down), full attention. Rotary over split halves
(rotate_half), R = head size, one table built from the config's `rope_parameters` the way transformers'
`GteRotaryEmbedding` builds it (`ROPE_INIT_FUNCTIONS[rope_type]`): "default", "linear" and "dynamic"
(export/families/rope_parameters.py; "dynamic" only up to max_position_embeddings, where it is the default
table). gte-multilingual-base's original code (Alibaba-NLP/new-impl, config rope_theta 20000 with rope_scaling
{"type": "ntk", "factor": 8}) computes a fixed NTK table: base theta * f, inv_freq / f**(2 / R). That is exactly
rope_type "linear" with rope_theta 160000 and factor 8**(2 / 64) at its head size 64; the demo config is written
that way. arctic-embed-m-v2.0 has rope_theta 160000 and no scaling: the default table.

Inputs input_ids and attention_mask: the token-type table has one row (type_vocab_size 1: both checkpoints;
0: no table), which the model adds to every token when no token_type_ids are given; a config with more token
types is refused (pairs of segments would need the input, which this file does not export).
Pooling: CLS (gte-multilingual-base's usage takes the first token; Snowflake's arctic-embed models pool cls in
their 1_Pooling configs; a checkpoint folder's own sentence-transformers modules decide with --pooling auto).

What this file does not implement is refused at load, with the reason: rope types other than the three above,
a partial rotary, more than one token type, heads other than the four below.

Hub configs: arctic-embed-m-v2.0's config.json says model_type gte with an auto_map into its own folder's copy of
Alibaba's code, and that code's fields (rope_theta and rope_scaling, which transformers converts to rope_parameters
itself; position_embedding_type, layer_norm_type, logn_attention_scale, which GteConfig does not read): those must
hold the values transformers' class computes (ORIGINAL_FIXED). gte-multilingual-base's own config says model_type
"new" (Alibaba-NLP/new-impl), which transformers does not implement: refused, the line saying how transformers
reads the same weights (FOREIGN).
"""

from __future__ import annotations

from pathlib import Path

from export.errors import UsageError
from export.families.config_check import build_config, check_heads, check_original_names, check_values
from export.families.facts import ModelFacts
from export.families.family import POST_NORM, Family, LayerMap, Tap
from export.families.rope_parameters import rotary_table
from export.families.spec import FULL, SPLIT_HALVES, LayerAttention, LayerRotary
from export.families.taps import function_tap

NAME = "gte"
INTS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
)
REALS = {
    "layer_norm_eps": (0.0, 1.0, False),
    "initializer_range": (0.0, float("inf"), True),
    "hidden_dropout_prob": (0.0, 1.0, True),
    "attention_probs_dropout_prob": (0.0, 1.0, True),
    "classifier_dropout": (0.0, 1.0, True),
}
HEADS = {
    "model": "GteModel",
    "masked-lm": "GteForMaskedLM",
    "sequence-classification": "GteForSequenceClassification",
    "token-classification": "GteForTokenClassification",
}
ORIGINAL_FIXED = {  # Alibaba-NLP/new-impl's configuration.py fields GteConfig does not read -> what GteModel computes
    "position_embedding_type": (("rope",), "positions other than rotary"),
    "layer_norm_type": (("layer_norm",), "another normalisation"),
    "logn_attention_scale": ((False,), "log-n scaling of the attention scores"),
}
FOREIGN = (
    (
        "new",
        "Alibaba-NLP/new-impl's own model type (gte-multilingual-base as published); transformers reads the same "
        "weights as model_type gte with rope_parameters (its fixed NTK table as rope_type linear: "
        "export/families/README.md, GTE; alibaba-nlp-community/gte-multilingual-base is that conversion)",
    ),
)
SIGNATURE = ".post_mlp_layernorm."  # GTE and NomicBERT name their closing norm so; GTE's projections have bias


def recognise(config: dict, keys: set[str]) -> bool:
    """A config without model_type is GTE's when its weights have the post-MLP norm and Q projections with bias, and
    a gated MLP (jina-embeddings-v3's class has the same norms and biases with a plain fc1/fc2 MLP)."""
    gated = not any(".mlp.fc1." in k for k in keys)
    return any(SIGNATURE in k for k in keys) and any(k.endswith("self_attn.q_proj.bias") for k in keys) and gated


def make_config(config: dict, path: Path):
    check_values(config, path, INTS, REALS)
    types = config.get("type_vocab_size", 1)
    if isinstance(types, bool) or not isinstance(types, int) or not 0 <= types <= 1:
        raise UsageError(
            f"{path}: config type_vocab_size is {types!r}; this family exports input_ids and attention_mask only "
            "(token type 0 for every token), so it takes 0 or 1 token types"
        )
    cfg = build_config("GteConfig", config, path)
    check_values(cfg.to_dict(), path, INTS, REALS)
    check_original_names(config, cfg, path, {}, ORIGINAL_FIXED)
    dh = check_heads(cfg.hidden_size, cfg.num_attention_heads, path)
    if getattr(cfg, "head_dim", None) not in (None, dh):
        raise UsageError(f"{path}: config head_dim {cfg.head_dim} is not hidden_size / num_attention_heads {dh}")
    table(cfg, path)  # refuses what the table cannot be
    return cfg


def table(config, path="config"):
    dh = config.hidden_size // config.num_attention_heads
    return rotary_table("default", config.rope_parameters, dh, config.max_position_embeddings, path)


def detect_task(state: dict, config) -> str | None:
    keys = set(state)
    if any(k.startswith("lm_head.") for k in keys):
        return "masked-lm"
    if "classifier.weight" in keys:
        return "sequence-classification" if any(".pooler." in k for k in keys) else "token-classification"
    if any(k.startswith(("gte.", "layers.", "embeddings.")) for k in keys):
        return "model"
    return None


# ---- what the graph looks like -------------------------------------------------------------------------


def rotary(config, layer: int) -> LayerRotary:
    h = config.num_attention_heads
    return LayerRotary(SPLIT_HALVES, config.hidden_size // h, table(config), (("query", h), ("key", h)))


def attention(config, layer: int) -> LayerAttention:
    return LayerAttention(FULL)


def facts(config) -> ModelFacts:
    t = table(config)
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
        (("rope_theta", t.theta), ("rope_type", t.rope_type), ("rope_parameters", dict(t.parameters))),
    )


# ---- configs to make models from (random weights: no hub here) ---------------------------------------------

# gte-multilingual-base's XLM-R tokenizer: <s> 0, <pad> 1, </s> 2, <unk> 3, <mask> 250001
SPECIAL_IDS = {"[CLS]": 0, "[PAD]": 1, "[SEP]": 2, "[UNK]": 3, "[MASK]": 250001}
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


def ntk_as_linear(theta: float, factor: float, head_dim: int) -> dict:
    """rope_parameters of GTE's original fixed-NTK scaling (theta, factor) as transformers writes it: rope_type
    "linear" with rope_theta theta * factor and factor factor**(2 / head_dim) (module docstring)."""
    return {"rope_type": "linear", "rope_theta": theta * factor, "factor": factor ** (2 / head_dim)}


def demo(**overrides):
    """Shaped like gte-multilingual-base: 12 layers, hidden 768, 12 heads, FFN 3072, vocab 250048, 8192 positions,
    one token type, its fixed-NTK rotary (theta 20000, factor 8) written as rope_type "linear"."""
    from transformers import GteConfig

    base = dict(
        vocab_size=250048,
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        max_position_embeddings=8192,
        type_vocab_size=1,
        rope_parameters=ntk_as_linear(20000.0, 8.0, 64),
        **_ids(SPECIAL_IDS),
    )
    return GteConfig(**{**base, **overrides})


def tiny(**overrides):
    """2 layers, hidden 32, 2 heads (Dh 16), vocab 99, 128 positions; the same fixed-NTK rotary at Dh 16 (a linear
    factor of 8**(1/8) = 1.30: positions rotate 30 % slower than the default table)."""
    base = dict(
        vocab_size=99,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=128,
        rope_parameters=ntk_as_linear(20000.0, 8.0, 16),
        **_ids(TINY_SPECIAL_IDS),
    )
    return demo(**{**base, **overrides})


FAMILY = Family(
    name=NAME,
    model_types=("gte",),
    recognise=recognise,
    make_config=make_config,
    heads=HEADS,
    base_prefix="gte",
    layer_key=r"(?:^|\.)layers\.(\d+)\.",
    detect_task=detect_task,
    inputs=("input_ids", "attention_mask"),
    rotary=rotary,
    attention=attention,
    layer_map=LayerMap(
        norm=POST_NORM,
        layers="layers",
        embeddings=Tap("embeddings.LayerNorm"),
        attention_input=(Tap("self_attn.q_proj"), Tap("self_attn.k_proj")),
        attention_output=Tap("post_attention_layernorm"),
        ffn_output=Tap("mlp"),
        layer_output=Tap("post_mlp_layernorm"),
        rotary_tap=function_tap("transformers.models.gte.modeling_gte", "self_attn"),
    ),
    facts=facts,
    default_pooling="cls",
    tiny=tiny,
    demo=demo,
    attn_implementations=("eager", "sdpa"),
    foreign=FOREIGN,
)

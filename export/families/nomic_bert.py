"""NomicBERT (transformers `nomic_bert`: nomic-embed-text-v1.5): everything particular to it, nothing else.

Post-norm encoder (embeddings + token types -> LayerNorm; per layer LN(x + attn(x)), then LN(a + mlp(a))),
separate Q/K/V projections without bias, SwiGLU FFN (silu(gate) * up -> down, no bias), full attention.
Rotary over split halves (rotate_half), over the whole head (R = head_dim), positions arange(S), theta 1000
(NomicBertConfig.default_theta) through the config's `rope_parameters` (export/families/rope_parameters.py:
default, linear, dynamic up to max_position_embeddings). Inputs input_ids, attention_mask, token_type_ids
(bert-base-uncased's tokenizer sends them; two token types).

The checkpoints are trained with a task prefix in the text (its model card: "search_query: ",
"search_document: ", "classification: ", "clustering: "): `prompts` names them for the client
(`engines.client --prompt search_query`), as sentence-transformers' prompt names. Pooling: mean
(nomic-embed-text-v1.5's 1_Pooling: pooling_mode_mean_tokens).

What this file does not implement is refused at load, with the reason: rope types other than the three above,
a partial rotary, heads other than the four below.

Hub configs (nomic-embed-text-v1.5's config.json) are still written in their first implementation's names
(nomic-ai/nomic-bert-2048's configuration_hf_nomic_bert.py, a GPT2Config: n_embd, n_layer, n_head, n_inner,
layer_norm_epsilon, rotary_emb_base, ...) beside model_type nomic_bert and an auto_map into that repository.
transformers 5.25's NomicBertConfig reads none of them: it keeps its defaults, which are v1.5's values. So each
original field must agree with what the class computes (ORIGINAL_NAMES, ORIGINAL_FIXED): v1.5 loads as transformers
loads it, and a config whose original fields say otherwise (another width, theta 10000, arctic-embed-m-long's
`rotary_scaling_factor` 2: a dynamic NTK table) is refused with the field, never built with the defaults.
"""

from __future__ import annotations

from pathlib import Path

from export.errors import UsageError
from export.families.config_check import build_config, check_original_names, check_values
from export.families.facts import ModelFacts
from export.families.family import POST_NORM, Family, LayerMap, Tap
from export.families.rope_parameters import rotary_table
from export.families.spec import FULL, SPLIT_HALVES, LayerAttention, LayerRotary
from export.families.taps import function_tap

NAME = "nomic_bert"
INTS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
    "type_vocab_size",
    "head_dim",
)
REALS = {
    "layer_norm_eps": (0.0, 1.0, False),
    "initializer_range": (0.0, float("inf"), True),
    "hidden_dropout_prob": (0.0, 1.0, True),
    "attention_probs_dropout_prob": (0.0, 1.0, True),
    "classifier_dropout": (0.0, 1.0, True),
}
HEADS = {
    "model": "NomicBertModel",
    "masked-lm": "NomicBertForMaskedLM",
    "sequence-classification": "NomicBertForSequenceClassification",
    "token-classification": "NomicBertForTokenClassification",
}
PROMPTS = (  # nomic-embed-text-v1.5's task instruction prefixes (model card, "Task instruction prefixes")
    ("search_query", "search_query: "),
    ("search_document", "search_document: "),
    ("classification", "classification: "),
    ("clustering", "clustering: "),
)
# nomic-bert-2048's configuration_hf_nomic_bert.py names (as nomic-embed-text-v1.5's config.json writes them) ->
# the field transformers' NomicBertConfig reads instead; and the original fields whose value the class fixes
ORIGINAL_NAMES = {
    "n_embd": "hidden_size",
    "n_layer": "num_hidden_layers",
    "n_head": "num_attention_heads",
    "n_inner": "intermediate_size",
    "layer_norm_epsilon": "layer_norm_eps",
    "rotary_emb_base": "rope_theta",
}
ORIGINAL_FIXED = {
    "rotary_emb_fraction": ((1.0,), "a partial rotary"),
    "rotary_emb_interleaved": ((False,), "the interleaved rotary layout"),
    "rotary_scaling_factor": ((None,), "the original code's dynamic NTK scaling of the rotary table"),
    "rotary_emb_scale_base": ((None,), "xPos scaling of the rotary"),
    "prenorm": ((False,), "normalisation before each block"),
    "parallel_block": ((False,), "attention and MLP in parallel"),
    "causal": ((False,), "causal attention"),
    "qkv_proj_bias": ((False,), "biases on the Q/K/V projections"),
    "mlp_fc1_bias": ((False,), "a bias on the MLP's first projections"),
    "mlp_fc2_bias": ((False,), "a bias on the MLP's last projection"),
    "activation_function": (("swiglu",), "an MLP other than SwiGLU"),
}
SIGNATURE = ".post_mlp_layernorm."  # GTE and NomicBERT name their closing norm so; NomicBERT's projections have no bias


def recognise(config: dict, keys: set[str]) -> bool:
    """A config without model_type is NomicBERT's when its weights have the post-MLP norm and Q projections
    without bias."""
    return any(SIGNATURE in k for k in keys) and not any(k.endswith("self_attn.q_proj.bias") for k in keys)


def make_config(config: dict, path: Path):
    check_values(config, path, INTS, REALS, nullable=("head_dim",))
    cfg = build_config("NomicBertConfig", config, path)
    check_values(cfg.to_dict(), path, INTS, REALS)
    check_original_names(config, cfg, path, ORIGINAL_NAMES, ORIGINAL_FIXED)
    if cfg.head_dim % 2:
        raise UsageError(f"{path}: config head_dim {cfg.head_dim} is odd; rotary embeddings rotate channel pairs")
    table(cfg, path)  # refuses what the table cannot be
    return cfg


def table(config, path="config"):
    return rotary_table("default", config.rope_parameters, config.head_dim, config.max_position_embeddings, path)


def detect_task(state: dict, config) -> str | None:
    keys = set(state)
    if any(k.startswith("cls.predictions.") for k in keys):
        return "masked-lm"
    if "classifier.weight" in keys:
        return "sequence-classification" if any(".pooler." in k for k in keys) else "token-classification"
    if any(k.startswith(("nomic_bert.", "layers.", "embeddings.")) for k in keys):
        return "model"
    return None


# ---- what the graph looks like -------------------------------------------------------------------------


def rotary(config, layer: int) -> LayerRotary:
    h = config.num_attention_heads
    return LayerRotary(SPLIT_HALVES, config.head_dim, table(config), (("query", h), ("key", h)))


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
        config.type_vocab_size,
        config.max_position_embeddings,
        (("rope_theta", t.theta), ("rope_type", t.rope_type), ("rope_parameters", dict(t.parameters))),
    )


# ---- configs to make models from (random weights: no hub here) ---------------------------------------------

# bert-base-uncased's special token ids (nomic-embed-text-v1.5 uses its tokenizer)
SPECIAL_IDS = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103}
TINY_SPECIAL_IDS = {"[UNK]": 0, "[CLS]": 1, "[SEP]": 2, "[PAD]": 3, "[MASK]": 4}


def _ids(special: dict) -> dict:
    cls, sep = special["[CLS]"], special["[SEP]"]
    return dict(
        pad_token_id=special["[PAD]"],
        cls_token_id=cls,
        sep_token_id=sep,
        unk_token_id=special["[UNK]"],
        mask_token_id=special["[MASK]"],
    )


def demo(**overrides):
    """Shaped like nomic-embed-text-v1.5 (transformers' NomicBertConfig defaults): 12 layers, hidden 768,
    12 heads, SwiGLU FFN 3072, vocab 30528, 2048 positions, 2 token types, theta 1000."""
    from transformers import NomicBertConfig

    base = dict(
        vocab_size=30528,
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        max_position_embeddings=2048,
        type_vocab_size=2,
        hidden_act="silu",
        rope_parameters={"rope_type": "default", "rope_theta": 1000.0},
        **_ids(SPECIAL_IDS),
    )
    return NomicBertConfig(**{**base, **overrides})


def tiny(**overrides):
    """2 layers, hidden 32, 2 heads (Dh 16), SwiGLU FFN 37, vocab 99, 128 positions, theta 1000."""
    base = dict(
        vocab_size=99,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=128,
        head_dim=16,
        **_ids(TINY_SPECIAL_IDS),
    )
    return demo(**{**base, **overrides})


FAMILY = Family(
    name=NAME,
    model_types=("nomic_bert",),
    recognise=recognise,
    make_config=make_config,
    heads=HEADS,
    base_prefix="nomic_bert",
    layer_key=r"(?:^|\.)layers\.(\d+)\.",
    detect_task=detect_task,
    inputs=("input_ids", "attention_mask", "token_type_ids"),
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
        rotary_tap=function_tap("transformers.models.nomic_bert.modeling_nomic_bert", "self_attn"),
    ),
    facts=facts,
    default_pooling="mean",
    tiny=tiny,
    demo=demo,
    attn_implementations=("eager", "sdpa"),
    prompts=PROMPTS,
)

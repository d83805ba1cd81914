"""jina-embeddings-v3 (transformers `jina_embeddings_v3`): everything particular to it, nothing else.

An XLM-RoBERTa body with rotary positions (transformers 5.25 `models/jina_embeddings_v3`): embeddings (word +
token type 0, LayerNorm), then per layer, post-norm: x = LN(x + o_proj(attn(q, k, v))), x = LN(x + fc2(gelu(fc1(x)))).
Rotary over split halves (rotate_half), R = head size, theta `rope_parameters.rope_theta` (20000), positions
arange(S); attention scale 1/sqrt(Dh). No token_type_ids input: type_vocab_size is 1 and the class feeds zeros.

Checkpoints read: transformers' own folders (model_type jina_embeddings_v3; 5.25 saves them in the original
layout), and the original `jinaai/jina-embeddings-v3` (model_type xlm-roberta, written for remote code that is
never run: its config, weights and task LoRA adapters are read as data, export/families/jina_lora.py). transformers'
class has no LoRA: `--task NAME` merges that task's adapter into the weights before export (export/families/
adapters.py); the task's text prefix ("Represent the query for retrieving evidence documents: " for
retrieval.query) is the client's to add, recorded in the report.

Refused at load, with the reason: rope types other than "default", absolute positions, a padded vocabulary.
"""

from __future__ import annotations

from itertools import islice
from pathlib import Path

from export.errors import UsageError
from export.families import jina_lora
from export.families.config_check import build_config, check_heads, check_values
from export.families.facts import ModelFacts
from export.families.family import POST_NORM, Family, LayerMap, Tap
from export.families.spec import FULL, SPLIT_HALVES, LayerAttention, LayerRotary, RotaryTable
from export.families.taps import function_tap

NAME = "jina_embeddings_v3"
INTS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
        "max_position_embeddings", "type_vocab_size")  # fmt: skip
REALS = {
    "layer_norm_eps": (0.0, 1.0, False),
    "initializer_range": (0.0, float("inf"), True),
    "hidden_dropout_prob": (0.0, 1.0, True),
    "attention_probs_dropout_prob": (0.0, 1.0, True),
}
HEADS = {
    "model": "JinaEmbeddingsV3Model",
    "masked-lm": "JinaEmbeddingsV3ForMaskedLM",
    "sequence-classification": "JinaEmbeddingsV3ForSequenceClassification",
    "token-classification": "JinaEmbeddingsV3ForTokenClassification",
}
ADAPTER_FIELDS = ("lora_adaptations", "task_instructions", "lora_rank", "lora_alpha", "matryoshka_dimensions")


def recognise(config: dict, keys: set[str]) -> bool:
    """A config without model_type is jina-v3's when it names task adapters, or its keys have the original layout's
    fused `mixer.Wqkv`, or the class's post-MLP norm with a plain two-matrix MLP (`mlp.fc1`; GTE's gated MLP has
    up/gate projections instead)."""
    post_norm = any(".post_mlp_layernorm." in k for k in keys) and any(".mlp.fc1." in k for k in keys)
    return "lora_adaptations" in config or post_norm or any(".mixer.Wqkv." in k for k in keys)


def make_config(config: dict, path: Path):
    if jina_lora.adopts(config, set()):
        config = jina_lora.hf_config(config, path)
    check_values(config, path, INTS, REALS)
    fields = {k: v for k, v in config.items() if k not in ADAPTER_FIELDS}  # read by read_adapters, from the dict
    cfg = build_config("JinaEmbeddingsV3Config", fields, path)
    check_values(cfg.to_dict(), path, INTS, REALS)
    check_heads(cfg.hidden_size, cfg.num_attention_heads, path)
    params = cfg.rope_parameters or {}
    if params.get("rope_type", "default") != "default":
        raise UsageError(
            f"{path}: config rope_parameters.rope_type is {params['rope_type']!r}; this family file implements the "
            "default rotary table only (jina-embeddings-v3 uses it)"
        )
    return cfg


def detect_task(state: dict, config) -> str | None:
    keys = set(state)
    if any(k.startswith("lm_head.") for k in keys):
        return "masked-lm"
    if "classifier.out_proj.weight" in keys:
        return "sequence-classification"
    if "classifier.weight" in keys:
        return "token-classification"
    if any(k.startswith(("roberta.", "layers.", "embeddings.", "encoder.", "emb_ln.")) for k in keys):
        return "model"
    return None


def adapters(state: dict, config: dict, path: Path):
    """The task LoRA adapters of the original checkpoint (read as data), and the state without them."""
    if jina_lora.adopts(config, set()):
        config = jina_lora.hf_config(config, path)
    return jina_lora.read_adapters(state, config, path)


# ---- what the graph looks like -------------------------------------------------------------------------


def _table(config) -> RotaryTable:
    dh = config.hidden_size // config.num_attention_heads
    return RotaryTable("default", dh, float(config.rope_parameters["rope_theta"]))


def rotary(config, layer: int) -> LayerRotary:
    table = _table(config)
    h = config.num_attention_heads
    return LayerRotary(SPLIT_HALVES, table.dim, table, (("query", h), ("key", h)))


def attention(config, layer: int) -> LayerAttention:
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
        None,  # token type 0 only (type_vocab_size 1): the graph has no token_type_ids input
        config.max_position_embeddings,
        (("rope_theta", float(config.rope_parameters["rope_theta"])),),
    )


# ---- configs and a tokenizer to make models from (random weights: no hub here) ---------------------------------

SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")  # XLM-R's ids 0..3; <mask> is the last id


def demo(**overrides):
    """Shaped like jina-embeddings-v3: 24 layers, hidden 1024, 16 heads (Dh 64), FFN 4096, vocab 250002, 8194
    positions, theta 20000, one token type."""
    from transformers import JinaEmbeddingsV3Config

    base = dict(
        vocab_size=250002,
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
        max_position_embeddings=8194,
        type_vocab_size=1,
        layer_norm_eps=1e-5,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        architectures=["JinaEmbeddingsV3Model"],
    )
    return JinaEmbeddingsV3Config(**{**base, **overrides})


def tiny(**overrides):
    """3 layers, hidden 32, 2 heads (Dh 16), FFN 37, vocab 99, 128 positions."""
    base = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=37, vocab_size=99,
                max_position_embeddings=128)  # fmt: skip
    return demo(**{**base, **overrides})


def tokenizer(config):
    """An XLM-R-shaped tokenizer built with `tokenizers`: SentencePiece-style Unigram over "▁"-marked pieces
    (Metaspace), <s> <pad> </s> <unk> at 0..3, <mask> last, "<s> ... </s>", padding with <pad>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    words = ["▁the", "▁of", "▁and", "▁to", "▁hello", "▁world", "▁query", "▁document", "▁represent", "▁for", ":"]
    letters = [c for c in "abcdefghijklmnopqrstuvwxyz"]
    pieces = words + [f"▁{c}" for c in letters] + letters + ["▁", ".", ",", "?", "!", "-"]
    cjk_and_on = (chr(c) for c in range(0x4E00, 0x110000) if not 0xD800 <= c <= 0xDFFF)  # surrogates: not text
    pieces += list(islice(cjk_and_on, max(0, config.vocab_size)))  # the demo's 250002 pass 0xD800
    n = config.vocab_size - len(SPECIALS) - 1
    vocab = [(t, 0.0) for t in SPECIALS] + [(p, -float(i + 1)) for i, p in enumerate(pieces[:n])] + [("<mask>", 0.0)]
    tok = Tokenizer(models.Unigram(vocab, unk_id=3, byte_fallback=False))
    tok.add_special_tokens([*SPECIALS, "<mask>"])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    tok.enable_padding(pad_id=1, pad_token="<pad>")
    return tok


FAMILY = Family(
    name=NAME,
    model_types=("jina_embeddings_v3",),
    recognise=recognise,
    make_config=make_config,
    heads=HEADS,
    base_prefix="roberta",
    layer_key=r"(?:^|\.)(?:encoder\.)?layers\.(\d+)\.",
    detect_task=detect_task,
    inputs=("input_ids", "attention_mask"),
    rotary=rotary,
    attention=attention,
    layer_map=LayerMap(
        norm=POST_NORM,
        layers="layers",
        embeddings=Tap("embeddings"),
        attention_input=(Tap("self_attn.q_proj"), Tap("self_attn.k_proj")),
        attention_output=Tap("post_attention_layernorm"),
        ffn_output=Tap("mlp"),
        layer_output=Tap("post_mlp_layernorm"),
        rotary_tap=function_tap("transformers.models.jina_embeddings_v3.modeling_jina_embeddings_v3", "self_attn"),
    ),
    facts=facts,
    default_pooling="mean",
    tiny=tiny,
    demo=demo,
    attn_implementations=("eager", "sdpa"),
    tokenizer=tokenizer,
    adopts=jina_lora.adopts,
    adapters=adapters,
)

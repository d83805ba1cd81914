"""ESM-2 (transformers `esm`): everything particular to it, nothing else.

Pre-norm encoder over amino-acid tokens (embeddings, no token types; per layer x + attn(LN(x)), then x + ffn(LN(x));
a final LayerNorm `emb_layer_norm_after`). Read in transformers 5.25 `models/esm/modeling_esm.py`:
- the query is scaled by head_dim^-0.5 BEFORE the rotary and the attention then uses scale 1.0
  (`EsmSelfAttention`: "we scale the query here to match the original ESM code"). Rotation is linear, so the
  place of that constant does not change the output; the rotary pass follows the Mul into the layer's query site;
- rotary over split halves (rotate_half), R = head size, theta `rope_theta` (10000), positions arange(S);
- `token_dropout` (on in every ESM-2 checkpoint): the embeddings of `<mask>` tokens are zeroed, then every
  embedding is scaled by 0.88 / (1 - observed mask ratio), the ratio over the non-padding tokens of each sequence
  (0.88 = 1 - 0.15 * 0.8, the training mask rate; 0.88 even with no mask token). The exporter writes it into the
  graph from input_ids and attention_mask; validation checks it with and without mask tokens in the inputs;
- the embeddings are multiplied by attention_mask (padding rows are zero before the first layer).

Checkpoint layouts read here (`convert_state`), besides the class's own names: the names ESM-2 checkpoints were
published with and that transformers 5.25's save_pretrained writes back (its conversion_mapping "esm" entry plus
the "legacy" one): `LayerNorm.gamma`/`.beta`, and the rotary inverse frequencies per layer
(`encoder.layer.<i>.attention.self.rotary_embeddings.inv_freq`; 5.25 writes `layer.*`); older checkpoints also
hold `embeddings.position_ids` (arange) and, in rotary models, an unused `embeddings.position_embeddings.weight`,
which transformers ignores (`_keys_to_ignore_on_load_unexpected`). Stored inverse frequencies are a formula:
they must equal it (in their stored dtype) and are rebuilt from it in float64, as RoFormer's table is.

Refused at load, with the reason: absolute position embeddings (ESM-1b, ESM-1v: no rotary, which is what this
toolchain exports), ESMFold (`is_folding_model`), decoder / cross-attention configs, token dropout without a
mask token, rope types other than "default".
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch

from export.errors import UsageError
from export.families.config_check import build_config, check_heads, check_values
from export.families.facts import ModelFacts
from export.families.family import PRE_NORM, Family, LayerMap, Positions, Tap
from export.families.spec import FULL, SPLIT_HALVES, LayerAttention, LayerRotary, RotaryTable
from export.families.taps import function_tap

NAME = "esm"
INV_FREQ = "rotary_embeddings.inv_freq"  # below the base model ("esm." before it in the head classes)
MASK_RATIO_TRAIN = 0.15 * 0.8  # EsmEmbeddings: "Hardcoded as the ratio used in all ESM model training runs"

INTS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
        "max_position_embeddings")  # fmt: skip
REALS = {
    "layer_norm_eps": (0.0, 1.0, False),
    "initializer_range": (0.0, float("inf"), True),
    "hidden_dropout_prob": (0.0, 1.0, True),
    "attention_probs_dropout_prob": (0.0, 1.0, True),
    "rope_theta": (0.0, float("inf"), False),
}
HEADS = {
    "model": "EsmModel",
    "masked-lm": "EsmForMaskedLM",
    "sequence-classification": "EsmForSequenceClassification",
    "token-classification": "EsmForTokenClassification",
}


def recognise(config: dict, keys: set[str]) -> bool:
    """A config without model_type is ESM's when it has its token-dropout or embedding-norm fields, or its keys have
    the contact head or the per-layer rotary frequencies."""
    fields = {"token_dropout", "emb_layer_norm_before", "esmfold_config"} & set(config)
    return bool(fields) or any("contact_head." in k or ".rotary_embeddings.inv_freq" in k for k in keys)


def make_config(config: dict, path: Path):
    check_values(config, path, INTS, REALS)
    why = _unsupported(config)
    if why:
        raise UsageError(f"{path}: {why}")
    cfg = build_config("EsmConfig", config, path)
    check_values(cfg.to_dict(), path, INTS, REALS)
    check_heads(cfg.hidden_size, cfg.num_attention_heads, path)
    params = getattr(cfg, "rope_parameters", None) or {}
    if params.get("rope_type", "default") != "default":
        raise UsageError(
            f"{path}: config rope_parameters.rope_type is {params['rope_type']!r}; this family file implements the "
            "default rotary table only (ESM-2 uses it)"
        )
    return cfg


def _unsupported(config: dict) -> str | None:
    kind = config.get("position_embedding_type", "absolute")  # EsmConfig's default
    if kind != "rotary":
        return (
            f"config position_embedding_type is {kind!r}: learned absolute positions (ESM-1b, ESM-1v) have no "
            "rotary embedding, which is what roformer-trt exports; ESM-2 checkpoints say 'rotary'"
        )
    if config.get("is_folding_model") or config.get("esmfold_config"):
        return "config is an ESMFold model (is_folding_model): only the ESM-2 language model encoder is exported"
    for field in ("is_decoder", "add_cross_attention"):
        if config.get(field):
            return f"config {field} is set: only the bidirectional ESM encoder is exported"
    if config.get("token_dropout") and config.get("mask_token_id") is None:
        return "config token_dropout is on but mask_token_id is missing; token dropout scales by the mask tokens"
    return None


def detect_task(state: dict, config) -> str | None:
    keys = set(state)
    if any(k.startswith("lm_head.") for k in keys):
        return "masked-lm"
    if "classifier.out_proj.weight" in keys:
        return "sequence-classification"
    if "classifier.weight" in keys:
        return "token-classification"
    if any(k.startswith(("esm.", "encoder.", "embeddings.")) for k in keys):
        return "model"
    return None


# ---- the layouts ESM-2 checkpoints are stored in -------------------------------------------------------------


def convert_state(state: dict, config, path: Path) -> dict:
    """The class's names for a checkpoint in the published / save_pretrained layout (see the module docstring):
    gamma/beta renamed, position ids checked and dropped, an unused absolute position table dropped, per-layer
    inverse frequencies checked equal and kept once under the model-level key (checked against the formula by
    `check_inv_freq`)."""
    out, freqs = {}, {}
    for k, v in state.items():
        if k.endswith(".attention.self.rotary_embeddings.inv_freq"):
            freqs[k] = v
        elif k.endswith("embeddings.position_ids"):
            _check_position_ids(k, v, path)
        elif not k.endswith("embeddings.position_embeddings.weight"):  # unused by a rotary model: dropped
            out[_layer_norm_name(k)] = v
    if freqs:
        first, *rest = sorted(freqs)
        for k in rest:
            if not torch.equal(freqs[k], freqs[first]):
                raise UsageError(f"{path}: {k} differs from {first}; the layers' rotary frequencies must be one table")
        prefix = first.split("encoder.layer.")[0]  # "esm." in the head classes, "" in the base model
        out.setdefault(prefix + INV_FREQ, freqs[first])
    return out


def _layer_norm_name(key: str) -> str:
    """LayerNorm.gamma / .beta (the published names) -> .weight / .bias."""
    for old, new in ((".LayerNorm.gamma", ".LayerNorm.weight"), (".LayerNorm.beta", ".LayerNorm.bias")):
        if key.endswith(old):
            return key.removesuffix(old) + new
    return key


def _check_position_ids(key: str, value: torch.Tensor, path: Path) -> None:
    want = torch.arange(value.shape[-1])
    if value.dtype.is_floating_point or not torch.equal(value.reshape(-1).long(), want):
        raise UsageError(f"{path}: {key} is not 0, 1, 2, ...; this is not an ESM checkpoint's position buffer")


def table_keys(task: str) -> tuple[str, ...]:
    return (INV_FREQ if task == "model" else f"esm.{INV_FREQ}",)


def check_inv_freq(value: torch.Tensor, path: Path, config) -> None:
    """The stored inverse frequencies are the formula 1 / theta^(2j / R), rounded to their dtype (a few ulps)."""
    want = torch.from_numpy(_table(config).inv_freq())
    if value.shape != want.shape:
        raise UsageError(f"{path}: rotary inv_freq has shape {tuple(value.shape)}, expected {tuple(want.shape)}")
    err = ((value.double() - want).abs() / want).max().item()
    tol = 4 * torch.finfo(value.dtype).eps
    if not err <= tol:
        raise UsageError(
            f"{path}: the stored rotary inv_freq differs from 1/theta^(2j/R) (theta {config.rope_theta}) by "
            f"{err:.3g} relative (> {tol:.1g}); fix rope_theta in the config or the checkpoint"
        )


def restore_inv_freq(model, rows: int | None) -> None:
    """The formula's inverse frequencies (float64, rounded once to fp32) in the built model."""
    base = FAMILY.base(model)
    with torch.no_grad():
        base.get_buffer(INV_FREQ).copy_(torch.from_numpy(_table(model.config).inv_freq()))


# ---- what the graph looks like -------------------------------------------------------------------------


def _table(config) -> RotaryTable:
    dh = config.hidden_size // config.num_attention_heads
    return RotaryTable("default", dh, float(config.rope_theta))


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
        None,
        config.max_position_embeddings,
        (
            ("rope_theta", float(config.rope_theta)),
            ("token_dropout", bool(config.token_dropout)),
            ("mask_token_id", config.mask_token_id),
        ),
    )


# ---- configs and a tokenizer to make models from (random weights: no hub here) ---------------------------------

VOCAB = ("<cls>", "<pad>", "<eos>", "<unk>", *"LAGVSERTIDPKQNFYMHWCXBUZO.-", "<null_1>", "<mask>")  # ESM-2's 33


def demo(**overrides):
    """Shaped like esm2_t33_650M_UR50D: 33 layers, hidden 1280, 20 heads (Dh 64), FFN 5120, vocab 33, 1026
    positions, theta 10000, token dropout on, no embedding LayerNorm. The smaller ESM-2 checkpoints differ only in
    sizes: t6_8M (6, 320, 20 heads, 1280), t12_35M (12, 480, 20, 1920), t30_150M (30, 640, 20, 2560)."""
    from transformers import EsmConfig

    base = dict(
        vocab_size=len(VOCAB),
        hidden_size=1280,
        num_hidden_layers=33,
        num_attention_heads=20,
        intermediate_size=5120,
        max_position_embeddings=1026,
        position_embedding_type="rotary",
        token_dropout=True,
        emb_layer_norm_before=False,
        layer_norm_eps=1e-5,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=VOCAB.index("<pad>"),
        mask_token_id=VOCAB.index("<mask>"),
        eos_token_id=VOCAB.index("<eos>"),
        architectures=["EsmForMaskedLM"],
    )
    return EsmConfig(**{**base, **overrides})


def tiny(**overrides):
    """3 layers, hidden 32, 2 heads (Dh 16), FFN 37, the real 33-token vocabulary, token dropout on."""
    base = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=37,
                max_position_embeddings=128)  # fmt: skip
    return demo(**{**base, **overrides})


def tokenizer(config):
    """ESM-2's tokenizer as a `tokenizers` Tokenizer: one token per residue letter (EsmTokenizer splits on
    whitespace, then on its vocabulary, every token of which is a single letter or a <special>), unknown letters
    <unk>, "<cls> ... <eos>", padding with <pad>."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors

    vocab = {t: i for i, t in enumerate(VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.add_special_tokens([t for t in VOCAB if t.startswith("<")])
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex("."), behavior="isolated")]
    )
    cls, eos = vocab["<cls>"], vocab["<eos>"]
    tok.post_processor = processors.TemplateProcessing(
        single="<cls> $A <eos>", pair="<cls> $A <eos> $B:1 <eos>:1", special_tokens=[("<cls>", cls), ("<eos>", eos)]
    )
    tok.enable_padding(pad_id=vocab["<pad>"], pad_token="<pad>")
    return tok


FAMILY = Family(
    name=NAME,
    model_types=("esm",),
    recognise=recognise,
    make_config=make_config,
    heads=HEADS,
    base_prefix="esm",
    layer_key=r"(?:^|\.)encoder\.layer\.(\d+)\.",
    detect_task=detect_task,
    inputs=("input_ids", "attention_mask"),
    rotary=rotary,
    attention=attention,
    layer_map=LayerMap(
        norm=PRE_NORM,
        layers="encoder.layer",
        embeddings=Tap("embeddings"),
        attention_input=(Tap("attention.self.query"), Tap("attention.self.key")),
        attention_output=Tap("attention"),
        ffn_output=Tap("output.dense"),
        layer_output=Tap(""),
        rotary_tap=function_tap("transformers.models.esm.modeling_esm", "attention"),  # query: scaled already
    ),
    facts=facts,
    default_pooling="mean",
    tiny=tiny,
    demo=demo,
    attn_implementations=("eager", "sdpa"),
    positions=Positions(
        keys=table_keys, check=check_inv_freq, restore=restore_inv_freq, at_least=lambda model, rows: nullcontext(rows)
    ),  # fmt: skip
    convert_state=convert_state,
    tokenizer=tokenizer,
)

"""A tiny random ModernBERT straight from transformers, exported the three ways the rotary pass meets it.

Until the family files (export/families/) load checkpoints, the tests build the model with its HF config
class and derive its `LayerRotary` list here the way the family file will (one per layer, the global or
local theta of `config.rope_parameters`). The exports:
- "dynamo23": torch.onnx.export(dynamo=True, opset 23): two ai.onnx RotaryEmbedding nodes per layer with
  batch-1 caches (onnx-rotary-embedding rule);
- "dynamo18": the same exporter at opset 18: the decomposed split-halves pattern with constant slices;
- "torchscript": opset 17, the decomposed pattern with `x.shape[-1] // 2` computed in the graph.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from export.families.spec import SPLIT_HALVES, LayerRotary, RotaryTable

FORMS = {"dynamo23": ("dynamo", 23), "dynamo18": ("dynamo", 18), "torchscript": ("torchscript", 17)}
MAX_LEN = 96  # rows of the tables the tests rewrite with; above the tests' longest sequence (61)

# Two layers, the first global (theta 160000), the second local (theta 10000, window 16 = half-width 8).
TINY = dict(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=2,
    global_attn_every_n_layers=2,
    local_attention=16,
    max_position_embeddings=128,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    cls_token_id=1,
    sep_token_id=2,
)


def tiny_modernbert(**overrides) -> torch.nn.Module:
    from transformers import ModernBertConfig, ModernBertModel

    config = ModernBertConfig(**(TINY | overrides))
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    return ModernBertModel(config).eval()


def modernbert_specs(config) -> list[LayerRotary]:
    """Layer i's rotary: split halves over the head size, theta of its layer type (full / sliding)."""
    head_dim, heads = config.hidden_size // config.num_attention_heads, config.num_attention_heads
    names = {"full_attention": "global", "sliding_attention": "local"}
    return [
        LayerRotary(
            SPLIT_HALVES,
            head_dim,
            RotaryTable(names[kind], head_dim, float(config.rope_parameters[kind]["rope_theta"])),
            (("query", heads), ("key", heads)),
        )
        for kind in config.layer_types
    ]


def halves(dim: int = 8, theta: float = 10000.0, heads=(4, 2), head_dim: int = 8) -> LayerRotary:
    """The split-halves rotary of the tests' hand-made layers: a query and a key of `heads` heads."""
    return LayerRotary(
        SPLIT_HALVES, head_dim, RotaryTable("default", dim, theta), (("query", heads[0]), ("key", heads[1]))
    )


class LastHidden(torch.nn.Module):
    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def export(model: torch.nn.Module, path: Path, form: str) -> Path:
    """Export with dynamic batch and sequence; inputs input_ids, attention_mask; output last_hidden_state."""
    exporter, opset = FORMS[form]
    ids = torch.randint(0, model.config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(0))
    args, names = (ids, torch.ones_like(ids)), ["input_ids", "attention_mask"]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            b, s = torch.export.Dim("batch"), torch.export.Dim("sequence", max=model.config.max_position_embeddings)
            torch.onnx.export(
                LastHidden(model), args, str(path), dynamo=True, opset_version=opset, input_names=names,
                output_names=["last_hidden_state"], dynamic_shapes=({0: b, 1: s}, {0: b, 1: s}),
                external_data=False, verbose=False,
            )  # fmt: skip
        else:
            axes = {0: "batch", 1: "sequence"}
            torch.onnx.export(
                LastHidden(model), args, str(path), dynamo=False, opset_version=opset, input_names=names,
                output_names=["last_hidden_state"], dynamic_axes={n: axes for n in names},
            )  # fmt: skip
    return path

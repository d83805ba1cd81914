"""A tiny random RoFormer written as a build dir, shaped like `export.build`'s output.

Used by the serving tests and demos until (and besides) a real `python -m export.build` run:
`write_tiny_build(out)` -> `out/` with `model.onnx`, `report.json` (no engines: status "skipped"),
and `hf/` (the HF checkpoint the ONNX came from, for PyTorch references).
Inputs `input_ids, attention_mask, token_type_ids` int64 [batch, sequence]; output
`last_hidden_state` [batch, sequence, hidden].
"""

from __future__ import annotations

import json
from pathlib import Path

TINY_CONFIG = dict(
    vocab_size=99,
    embedding_size=32,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=37,
    max_position_embeddings=64,
)
AXES = {0: "batch", 1: "sequence"}
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def write_tiny_build(out: Path, seed: int = 0):
    """Export a random tiny RoFormerModel to `out/`; returns the eval-mode torch model."""
    import torch
    from transformers import RoFormerConfig, RoFormerModel

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = RoFormerConfig(**TINY_CONFIG)
    model = RoFormerModel(config).eval()
    model.save_pretrained(out / "hf")
    ids = torch.randint(0, config.vocab_size, (2, 7))
    args = (ids, torch.ones_like(ids), torch.zeros_like(ids))
    with torch.no_grad():
        torch.onnx.export(
            model,
            args,
            str(out / "model.onnx"),
            input_names=list(INPUTS),
            output_names=["last_hidden_state"],
            dynamic_axes={**{n: AXES for n in INPUTS}, "last_hidden_state": AXES},
            opset_version=17,
            dynamo=False,
        )
    report = {
        "model": {
            "layers": config.num_hidden_layers,
            "hidden": config.hidden_size,
            "heads": config.num_attention_heads,
            "head_dim": config.hidden_size // config.num_attention_heads,
            "task": "base",
            "max_position_embeddings": config.max_position_embeddings,
            "vocab_size": config.vocab_size,
            "type_vocab_size": config.type_vocab_size,
        },
        "artifacts": {"onnx": "model.onnx"},
        "engine": {"status": "skipped", "reason": "tiny test build: no TensorRT"},
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return model

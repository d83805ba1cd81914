"""Deterministic RoFormer checkpoints (no network here): the demo model and tiny test models.

`demo_config()` is Chinese-base-like in shape (12 layers, hidden 768, 12 heads, vocab 50000) with
max_position_embeddings 512, so `--max-len 2048` exercises the table extension. Weights are HF's own
initialisation under a fixed seed; the canonical file is `{"config": dict, "state_dict": ...}`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from export.atomic import write_atomic
from export.spec import TASKS

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def demo_config(**overrides):
    from transformers import RoFormerConfig
    base = dict(vocab_size=50000, embedding_size=768, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2, rotary_value=False)
    return RoFormerConfig(**{**base, **overrides})


def tiny_config(**overrides):
    base = dict(vocab_size=99, embedding_size=32, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=37, max_position_embeddings=64)
    return demo_config(**{**base, **overrides})


def make_model(config, task: str = "model", seed: int = 0, dtype: torch.dtype = torch.float32):
    import transformers
    if task == "multiple-choice" or task.endswith("classification"):
        config.num_labels = getattr(config, "num_labels", 2)
    torch.manual_seed(seed)
    model = getattr(transformers, TASKS[task][0])(config).eval()
    return model.to(dtype)


def save_canonical(model, path: Path) -> None:
    """torch.save({'config', 'state_dict'}) via a temp file, so a killed run leaves no half file."""
    import io
    buf = io.BytesIO()
    model.config.architectures = [type(model).__name__]
    torch.save({"config": model.config.to_dict(), "state_dict": model.state_dict()}, buf)
    write_atomic(Path(path), buf.getvalue())


def demo_vocab(vocab_size: int) -> list[str]:
    """SPECIAL + ASCII + CJK ideographs + '##' continuations, cut to vocab_size: deterministic, unique."""
    tokens = list(SPECIAL)
    tokens += [chr(c) for c in range(33, 127)]
    tokens += [chr(c) for c in range(0x4E00, 0x9FA6)]  # CJK Unified Ideographs
    tokens += ["##" + chr(c) for c in range(33, 127)] + ["##" + chr(c) for c in range(0x4E00, 0x9FA6)]
    i = 0
    while len(tokens) < vocab_size:
        tokens.append(f"[unused{i}]")
        i += 1
    return tokens[:vocab_size]


def write_demo(out_dir: Path, tiny: bool = False, task: str = "model", **overrides) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = tiny_config(**overrides) if tiny else demo_config(**overrides)
    model = make_model(config, task)
    ckpt = out_dir / "ckpt.pt"
    save_canonical(model, ckpt)
    write_atomic(out_dir / "vocab.txt", ("\n".join(demo_vocab(config.vocab_size)) + "\n").encode())
    return ckpt

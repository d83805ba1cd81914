"""`ModelFacts`: the sizes of a checkpoint the rest of the toolchain needs, read from its config by its family.

Memory and disk estimates, validation inputs, the report's `model` section and the engine profiles read these
instead of config attributes, whose names differ between families (RoFormer's `type_vocab_size` exists only
where there is a `token_type_ids` input; ModernBERT has none).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelFacts:
    family: str
    layers: int
    hidden: int
    heads: int
    head_dim: int
    intermediate: int  # the FFN's inner width (one branch of a gated FFN)
    vocab_size: int
    type_vocab_size: int | None  # rows of the token-type table; None: the family has no token_type_ids input
    max_positions: int  # the config's max_position_embeddings: --max-len's default
    extras: tuple[tuple[str, object], ...] = ()  # family-particular report fields, e.g. RoFormer's rotary_value

    def to_report(self) -> dict:
        """The family-blind part of report.json `model`, then the family's own fields."""
        return {
            "family": self.family,
            "layers": self.layers,
            "hidden": self.hidden,
            "heads": self.heads,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab_size,
            "type_vocab_size": self.type_vocab_size,
            "max_position_embeddings": self.max_positions,
            **dict(self.extras),
        }

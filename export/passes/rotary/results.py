"""What the rotary pass hands back: a `Site` or a `Miss` per candidate, a `PassReport` per run.

`PassReport.to_dict()` is the report's `rewrite` section (export/report/schema.py RewriteSection).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx_graphsurgeon as gs

from export.passes.rotary.rules import Layout


@dataclass(frozen=True)
class Miss:
    anchor: str  # node or tensor where matching started or failed
    reason: str


@dataclass
class Site:
    add: gs.Node  # the site's last node (the final Add, or a fused RotaryEmbedding): its output is rotated x
    x: gs.Variable  # x_BHSDh
    layout: Layout
    rotary_dim: int | None = None  # R, the rotated leading dims of each head (None: not static)
    x_aliases: tuple[str, ...] = ()  # names of tensors in the site that hold x itself (pattern.same_value)
    layer_key: str = ""  # name of the hidden state feeding this layer's projections

    @property
    def name(self) -> str:
        return self.add.name or self.add.outputs[0].name


@dataclass
class PassReport:
    mode: str
    expected: int | None = None
    expected_nodes: int | None = None  # plugin mode: one node per layer
    found: int = 0
    rewritten: int = 0
    nodes: int = 0
    already: int = 0  # sites rewritten by an earlier run (the pass is idempotent)
    skipped: list[dict] = field(default_factory=list)
    layers: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "mode": self.mode,
            "expected": self.expected,
            "expected_nodes": self.expected_nodes,
            "found": self.found,
            "rewritten": self.rewritten,
            "nodes": self.nodes,
            "already_rewritten": self.already,
            "skipped": self.skipped,
            "layers": self.layers,
        }

    def coverage_error(self) -> str | None:
        """None when every expected site is rewritten; otherwise one line naming layers and reasons."""
        if self.expected is None or self.rewritten >= self.expected:
            if self.mode == "plugin" and self.expected_nodes is not None and self.nodes != self.expected_nodes:
                return (
                    f"rotary rewrite: {self.nodes} RoformerRotary nodes for {self.expected_nodes} layers; "
                    "sites of one layer were not grouped into one node"
                )
            return None
        if not self.skipped:
            return (
                f"rotary rewrite: {self.rewritten}/{self.expected} sites rewritten and no candidate found; "
                "the graph has no RoFormer (interleaved) rotary embedding, e.g. a BERT or a rotate_half model"
            )
        why = "; ".join(f"{s.get('layer', '?')} {s['site']}: {s['reason']}" for s in self.skipped[:6])
        return f"rotary rewrite: {self.rewritten}/{self.expected} sites rewritten; skipped {why}"

"""The pooling pass and what it computes: `sentence_embedding` inside an encoder's graph, by sentence-transformers'
rules (export/passes/pooling/README.md). spec: Pooling and the graph's metadata; graph: the pass; request:
what `export.build --pooling` asks for, from flags or a sentence-transformers checkpoint folder."""

from export.passes.pooling.graph import add_sentence_embedding
from export.passes.pooling.spec import (
    DENSE_KEY,
    EMBEDDING,
    HIDDEN,
    MASK,
    MODES,
    NODE_PREFIX,
    NORMALIZE_KEY,
    POOLING_KEY,
    POOLINGS,
    TRUNCATE_KEY,
    Dense,
    Pooling,
    check_task,
    declared_pooling,
    parse_pooling,
)

__all__ = [
    "DENSE_KEY",
    "EMBEDDING",
    "HIDDEN",
    "MASK",
    "MODES",
    "NODE_PREFIX",
    "NORMALIZE_KEY",
    "POOLINGS",
    "POOLING_KEY",
    "TRUNCATE_KEY",
    "Dense",
    "Pooling",
    "add_sentence_embedding",
    "check_task",
    "declared_pooling",
    "parse_pooling",
]

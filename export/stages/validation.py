"""The validation stage of export.build: every graph in ONNX Runtime against the PyTorch model.

In: the graphs the other stages returned (name -> (graph, precision)), the fp32 model (the reference works
on it without changing it), the plan's shapes (export.build_plan: the build's max_len and choices), the
thresholds. Out: the validation cases
(report.json `validation`); the verdict on them is export.report.verdict's, taken by the orchestrator.
"""

from __future__ import annotations

from export.passes.pooling import Pooling
from export.report.thresholds import Thresholds
from export.stages.result import StageResult
from export.validate import Shape, TorchReference, validate_graphs


def run_validation_stage(
    graphs: dict, model, task: str, facts, shapes: list[Shape], thresholds: Thresholds, pooling: Pooling | None = None
) -> StageResult[None]:
    """facts: the family's ModelFacts (vocab sizes, and whether there is a token_type_ids input); pooling: the
    reference computes sentence_embedding too, for the graphs that have it (their OnnxFile says); shapes: the plan's
    (validation_shapes), or fewer (export.build --task all, after its first task)."""
    cases = validate_graphs(
        graphs,
        TorchReference(model, task, pooling=pooling),
        shapes,
        thresholds,
        facts.vocab_size,
        facts.type_vocab_size,
    )
    return StageResult(None, cases=cases)

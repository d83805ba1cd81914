"""The pooling a build's engine computes, and what every model serving that build must serve with it.

In:  a build folder that passed (its report read by export.report.verdict.read_build), the `--pooling` asked for.
Out: the build's own Pooling (export.passes.pooling.declared_pooling of the graph TensorRT builds from), None
     when that graph has no `sentence_embedding`; `twin_pooling`: what an ONNX twin adds to serve the same
     output as the engine (engines.triton's twin, engines.serving's model).
A build made with `export.build --pooling` fixes the embedding: `--pooling` must be that mode or none
(UsageError naming both otherwise), and the twins get the same pipeline (Dense layers, truncation and
normalisation included: the Dense weights are read from the graph's pool/ initializers).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import onnx

from export.errors import UsageError
from export.folder.artifacts import artifact
from export.passes.pooling import EMBEDDING, Pooling, declared_pooling
from export.report.schema import ONNX_KEY, TENSORRT_ONNX_KEY, Report, rope_key


def tensorrt_graph(build: Path, report: Report) -> Path | None:
    """The graph TensorRT builds from (its I/O and pooling are the engine's), None when the report has none."""
    return artifact(build, report, TENSORRT_ONNX_KEY, rope_key("plugin"), ONNX_KEY)


def build_pooling(build: Path, report: Report, asked: str) -> Pooling | None:
    """The pooling the build's TensorRT-bound graph computes (None: it has no sentence_embedding); `asked`
    (--pooling) must be that mode or none: UsageError naming both otherwise."""
    graph = tensorrt_graph(build, report)
    if graph is None:
        return None
    have = declared_pooling(onnx.load(str(graph), load_external_data=False), graph.parent)
    if have is not None and asked not in ("none", have.mode):
        raise UsageError(
            f"--pooling {asked} disagrees with the build: {graph.name} computes {EMBEDDING} with "
            f"{have.describe()} pooling; pass --pooling {have.mode} or none, or rebuild with "
            f"python -m export.build --pooling {asked}"
        )
    return have


def twin_pooling(build: Path, report: Report, asked: str) -> str | Pooling:
    """What an ONNX twin of the build passes to add_sentence_embedding: the build's own pooling when it has one,
    its whole pipeline (Dense layers and truncation included; the twin keeps last_hidden_state), else `asked`."""
    have = build_pooling(build, report, asked)
    return dataclasses.replace(have, keep_hidden=True) if have is not None else asked

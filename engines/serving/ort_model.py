"""ONNX Runtime encoder for serving: the graph of a build, request checks, one-line errors.

In:  a build dir (`report.json` + the `rope-onnx` graph, else the plain `onnx` one, each checked by
     export.folder.artifacts.verify_artifact), a pooling mode.
Out: `OrtEncoder(feeds) -> {output name: array}` for the graph's int64 inputs (`input_ids`, `attention_mask`,
     and `token_type_ids` where the family has it) [batch, sequence] (or [batch, choices, sequence]); outputs as
     in the graph, plus `sentence_embedding` [batch, width]: the build's own pipeline when it has one, else
     `pooling`'s mode.
Request checks raise RequestError (a ValueError) naming the problem and the fix, before ORT runs:
`shape_problem` looks only at names, shapes and dtypes (so the server can refuse an oversize request
before a byte of it is copied), `check_request` adds the values: ids in [0, vocab),
token types in [0, type_vocab), attention mask in {0, 1}.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from engines.triton.config import read_onnx_io
from engines.triton.pooling import twin_pooling
from export.errors import UsageError
from export.families.registry import by_name, names
from export.folder.artifacts import artifact
from export.passes.pooling import add_sentence_embedding
from export.report.schema import ONNX_KEY, rope_key
from export.report.verdict import read_build

log = logging.getLogger(__name__)


class RequestError(ValueError):
    """A request the model cannot serve; str(e) is sent back to the client."""


@dataclass(frozen=True)
class Limits:
    max_sequence: int | None  # positions the model was trained for (max_position_embeddings)
    vocab_size: int | None
    type_vocab_size: int | None = None  # token_type_ids must be < this


def type_vocab_from_graph(model) -> int | None:
    """Rows of the token-type embedding table (`...token_type_embeddings.weight` [type_vocab, E])."""
    for init in model.graph.initializer:
        if init.name.endswith("token_type_embeddings.weight") and len(init.dims) == 2:
            return int(init.dims[0])
    return None


def limits_from_report(report: dict) -> Limits:
    m = report.get("model") or {}
    # export.build's --max-len (sinusoidal table rows, may exceed max_position_embeddings) bounds the graph
    max_seq = (report.get("export") or {}).get("max_len") or m.get("max_position_embeddings")
    if max_seq is None:  # fall back to the widest engine profile, the other bound export.build records
        seqs = [
            p["sequence"][2] for e in (report.get("engine") or {}).get("engines", []) for p in e.get("profiles", [])
        ]
        max_seq = max(seqs) if seqs else None
    return Limits(
        int(max_seq) if max_seq else None,
        int(m["vocab_size"]) if m.get("vocab_size") else None,
        int(m["type_vocab_size"]) if m.get("type_vocab_size") else None,
    )


def load_build(build: Path, pooling: str | None = "mean") -> tuple[onnx.ModelProto, Limits, str]:
    """(the graph to serve with its pooling output, the request limits, the build's name) of a build that
    passed; its files checked by export.folder.artifacts. pooling None: the build's own when it was made with
    --pooling, else the default of its family (report.json model.family; `Family.default_pooling`; mean for a
    report that names none)."""
    build = Path(build)
    report = read_build(build)
    if pooling is None:
        family = (report.model or {}).get("family")
        pooling = "none" if report.pooling else by_name(family).default_pooling if family in names() else "mean"
    src = artifact(build, report, rope_key("onnx"), ONNX_KEY)
    if src is None:
        raise UsageError(
            f"{build}/report.json lists neither a 'rope-onnx' nor an 'onnx' artifact; "
            "rebuild it with python -m export.build"
        )
    limits = limits_from_report(report.to_dict())
    graph = onnx.load(str(src))
    if limits.type_vocab_size is None:
        limits = Limits(limits.max_sequence, limits.vocab_size, type_vocab_from_graph(graph))
    types = any(i.name == "token_type_ids" for i in graph.graph.input)  # a family may have no such input
    for what, v in (
        ("max_position_embeddings: sequence length", limits.max_sequence),
        ("vocab_size: input_ids", limits.vocab_size),
        ("type_vocab_size (nor does the graph): token_type_ids", limits.type_vocab_size if types else 0),
    ):
        if v is None:
            log.warning("report.json gives no %s is not checked", what)
    served = twin_pooling(build, report, pooling)  # a build made with --pooling serves its own embedding
    return add_sentence_embedding(graph, served), limits, build.resolve().name


class OrtEncoder:
    def __init__(self, model, limits: Limits, name: str = "model", threads: int | None = None):
        self.name = name
        self.limits = limits
        self.inputs, self.outputs = read_onnx_io(model)
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
        data = model.SerializeToString() if not isinstance(model, (str, Path)) else str(model)
        self.session = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])

    @classmethod
    def from_build(cls, build: Path, pooling: str = "mean", threads: int | None = None) -> OrtEncoder:
        model, limits, name = load_build(build, pooling)
        return cls(model, limits, name=name, threads=threads)

    def shape_problem(self, meta: dict[str, tuple[tuple[int, ...], np.dtype]]) -> str | None:
        """The one-line reason a request of these {name: (shape, dtype)} cannot be served, else None.
        Looks at no values, so it costs nothing however large the request is."""
        want = [s.name for s in self.inputs]
        missing = [n for n in want if n not in meta]
        if missing:
            return f"missing input(s) {missing}; send {want}"
        shapes = {n: tuple(meta[n][0]) for n in want}
        for n in want:
            if np.dtype(meta[n][1]) != np.int64:
                return f"{n} is {np.dtype(meta[n][1])}; send int64 (Triton INT64)"
        shape = shapes[want[0]]
        lim = self.limits
        if shape and lim.max_sequence is not None and shape[-1] > lim.max_sequence:
            return (
                f"sequence length {shape[-1]} exceeds the model's {lim.max_sequence} positions; "
                f"truncate to {lim.max_sequence} tokens"
            )
        if len(set(shapes.values())) != 1:
            return f"inputs must share one shape, got {shapes}"
        if len(shape) == 0 or shape[0] == 0:
            return "empty batch: send at least one sequence"
        if shape[-1] == 0:
            return "empty sequence: send at least one token ([CLS] and [SEP] included)"
        return None

    def check_request(self, feeds: dict[str, np.ndarray]) -> None:
        problem = self.shape_problem({n: (a.shape, a.dtype) for n, a in feeds.items()})
        if problem:
            raise RequestError(problem)
        lim = self.limits
        ids = feeds["input_ids"]
        if lim.vocab_size is not None and (ids.min() < 0 or ids.max() >= lim.vocab_size):
            raise RequestError(
                f"input_ids outside [0, {lim.vocab_size}): min {ids.min()}, max {ids.max()}; "
                "use the model's own vocab.txt"
            )
        types = feeds.get("token_type_ids")
        if (
            types is not None
            and lim.type_vocab_size is not None
            and (types.min() < 0 or types.max() >= lim.type_vocab_size)
        ):
            raise RequestError(
                f"token_type_ids outside [0, {lim.type_vocab_size}): min {types.min()}, "
                f"max {types.max()}; send 0 for the first segment, 1 for the second"
            )
        mask = feeds.get("attention_mask")
        if mask is not None and ((mask != 0) & (mask != 1)).any():
            raise RequestError(
                f"attention_mask holds values other than 0 and 1 (min {mask.min()}, max {mask.max()}); "
                "send 1 for tokens and 0 for padding"
            )

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.check_request(feeds)
        names = [o.name for o in self.outputs]
        res = self.session.run(names, {s.name: feeds[s.name] for s in self.inputs})
        return dict(zip(names, res, strict=True))

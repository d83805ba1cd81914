"""ONNX Runtime encoder for serving: the graph of a build, request checks, one-line errors.

In:  a build dir (`report.json` + the `rope-onnx` graph, else the plain `onnx` one), a pooling mode.
Out: `OrtEncoder(feeds) -> {output name: array}` for int64 inputs `input_ids`, `attention_mask`,
     `token_type_ids` [batch, sequence] (or [batch, choices, sequence]); outputs as in the graph,
     plus `sentence_embedding` [batch, hidden] with pooling "mean" or "cls".
`check_request` raises RequestError (a ValueError) naming the problem and the fix, before ORT runs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export.errors import UsageError

log = logging.getLogger(__name__)


class RequestError(ValueError):
    """A request the model cannot serve; str(e) is sent back to the client."""


@dataclass(frozen=True)
class Limits:
    max_sequence: int | None  # positions the model was trained for (max_position_embeddings)
    vocab_size: int | None


def limits_from_report(report: dict) -> Limits:
    m = report.get("model") or {}
    # export.build's --max-len (sinusoidal table rows, may exceed max_position_embeddings) bounds the graph
    max_seq = (report.get("export") or {}).get("max_len") or m.get("max_position_embeddings")
    if max_seq is None:  # fall back to the widest engine profile, the other bound export.build records
        seqs = [p["sequence"][2] for e in (report.get("engine") or {}).get("engines", []) for p in e.get("profiles", [])]
        max_seq = max(seqs) if seqs else None
    return Limits(int(max_seq) if max_seq else None, int(m["vocab_size"]) if m.get("vocab_size") else None)


class OrtEncoder:
    def __init__(self, model, limits: Limits, name: str = "roformer", threads: int | None = None):
        import onnxruntime as ort

        from engines.triton_config import read_onnx_io

        self.name = name
        self.limits = limits
        self.inputs, self.outputs = read_onnx_io(model)
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
        data = model.SerializeToString() if not isinstance(model, (str, Path)) else str(model)
        self.session = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])

    @classmethod
    def from_build(cls, build: Path, pooling: str = "mean", threads: int | None = None) -> "OrtEncoder":
        import onnx

        from engines.serving.pooling import add_sentence_embedding
        from engines.triton import artifact, read_build

        build = Path(build)
        report = read_build(build)
        src = artifact(build, report, "rope-onnx", "onnx")
        if src is None:
            raise UsageError(f"{build}/report.json lists neither a 'rope-onnx' nor an 'onnx' artifact")
        limits = limits_from_report(report.to_dict())
        if limits.max_sequence is None:
            log.warning("report.json gives no max_position_embeddings: sequence length is not checked")
        model = add_sentence_embedding(onnx.load(str(src)), pooling)
        return cls(model, limits, name=build.resolve().name, threads=threads)

    def check_request(self, feeds: dict[str, np.ndarray]) -> None:
        want = [s.name for s in self.inputs]
        missing = [n for n in want if n not in feeds]
        if missing:
            raise RequestError(f"missing input(s) {missing}; send {want}")
        shapes = {n: feeds[n].shape for n in want}
        if len(set(shapes.values())) != 1:
            raise RequestError(f"inputs must share one shape, got {shapes}")
        for n in want:
            if feeds[n].dtype != np.int64:
                raise RequestError(f"{n} is {feeds[n].dtype}; send int64 (Triton INT64)")
        shape = shapes[want[0]]
        if len(shape) == 0 or shape[0] == 0:
            raise RequestError("empty batch: send at least one sequence")
        seq = shape[-1]
        if seq == 0:
            raise RequestError("empty sequence: send at least one token ([CLS] and [SEP] included)")
        lim = self.limits
        if lim.max_sequence is not None and seq > lim.max_sequence:
            raise RequestError(f"sequence length {seq} exceeds the model's {lim.max_sequence} positions; "
                               f"truncate to {lim.max_sequence} tokens")
        ids = feeds["input_ids"]
        if lim.vocab_size is not None and (ids.min() < 0 or ids.max() >= lim.vocab_size):
            raise RequestError(f"input_ids outside [0, {lim.vocab_size}): min {ids.min()}, max {ids.max()}; "
                               "use the model's own vocab.txt")

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.check_request(feeds)
        names = [o.name for o in self.outputs]
        res = self.session.run(names, {s.name: feeds[s.name] for s in self.inputs})
        return dict(zip(names, res))

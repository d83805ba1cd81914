"""What a pooled graph computes: `Pooling` (modes, Dense layers, Matryoshka truncation, normalisation), how
`export.build --pooling` flags ask for one, and how a graph of ours records it in its metadata.

In:  flags (`parse_pooling`), or a graph's metadata_props and pool/ initializers (`declared_pooling`).
Out: a Pooling; its `reference(hidden, mask)` is export.reference.sentence_embedding_ref on its fields, the rule
     validation grades `sentence_embedding` with. Where a pipeline comes from (flags or a sentence-transformers
     folder): export.passes.pooling.request. How the graph computes it: export.passes.pooling.graph.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.external_data_helper import load_external_data_for_tensor

from export.errors import UsageError
from export.onnx_io import check_locations
from export.reference import ACTIVATIONS, POOLING_MODES, sentence_embedding_ref
from export.spec import TASKS

MODES = POOLING_MODES  # sentence-transformers' names; "cls+mean" concatenates
POOLINGS = (*MODES, "none")  # what --pooling names beside "auto" (export.passes.pooling.request)
EMBEDDING = "sentence_embedding"
HIDDEN = "last_hidden_state"
MASK = "attention_mask"
NODE_PREFIX = "pool/"  # every node and initializer the pass adds: clear of the exporter's names
POOLING_KEY = "roformer_trt.pooling"  # metadata_props: the mode ("mean", "cls+mean", ...)
NORMALIZE_KEY = "roformer_trt.normalize"  # "1" when L2-normalised
TRUNCATE_KEY = "roformer_trt.truncate_dim"  # the Matryoshka width, only when truncated
DENSE_KEY = "roformer_trt.dense"  # JSON [{"activation", "bias"}], only with Dense layers (weights: dense_names)


def dense_names(i: int) -> tuple[str, str]:
    """The initializers of Dense layer i: its weight [in, out] (the transpose of nn.Linear's) and its bias."""
    return f"{NODE_PREFIX}dense{i}/weight_IO", f"{NODE_PREFIX}dense{i}/bias"


@dataclass(frozen=True, eq=False)
class Dense:
    """sentence-transformers' Dense: act(x @ weight.T + bias), weights as nn.Linear holds them."""

    weight: np.ndarray  # [out, in] float32
    bias: np.ndarray | None  # [out] float32, None without bias
    activation: str  # one of export.reference.ACTIVATIONS

    def __post_init__(self):
        if self.activation not in ACTIVATIONS:
            raise UsageError(f"Dense activation {self.activation!r} is not one of {', '.join(ACTIVATIONS)}")
        if self.weight.ndim != 2 or (self.bias is not None and self.bias.shape != (self.weight.shape[0],)):
            b = None if self.bias is None else list(self.bias.shape)
            raise UsageError(f"Dense weight {list(self.weight.shape)} / bias {b}: expected [out, in] and [out]")

    @property
    def in_features(self) -> int:
        return int(self.weight.shape[1])

    @property
    def out_features(self) -> int:
        return int(self.weight.shape[0])

    def describe(self) -> dict:
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "bias": self.bias is not None,
            "activation": self.activation,
        }

    def __eq__(self, other) -> bool:
        if not isinstance(other, Dense):
            return NotImplemented
        if self.bias is None or other.bias is None:
            same_bias = self.bias is None and other.bias is None
        else:
            same_bias = np.array_equal(self.bias, other.bias)
        return self.activation == other.activation and same_bias and np.array_equal(self.weight, other.weight)

    def __hash__(self) -> int:
        return hash((self.weight.shape, self.activation, self.bias is None))


@dataclass(frozen=True)
class Pooling:
    """The pipeline `sentence_embedding` is computed by: Pooling `mode`, each Dense in order, the first
    `truncate_dim` channels, then L2 normalisation (`normalize`). keep_hidden False: the graph drops
    last_hidden_state (`--outputs sentence_embedding`)."""

    mode: str
    normalize: bool = False
    keep_hidden: bool = True
    dense: tuple[Dense, ...] = field(default=())
    truncate_dim: int | None = None

    def __post_init__(self):
        bad = [m for m in self.modes if m not in MODES]
        if bad or not self.mode:
            raise UsageError(f"pooling {self.mode!r}: {bad[0] if bad else '(empty)'} is not one of {', '.join(MODES)}")
        if self.truncate_dim is not None and self.truncate_dim < 1:
            raise UsageError(f"--truncate-dim {self.truncate_dim} must be at least 1")

    @property
    def modes(self) -> tuple[str, ...]:
        return tuple(self.mode.split("+"))

    @property
    def outputs(self) -> tuple[str, ...]:
        """The outputs of the pooled graph, in order."""
        return (HIDDEN, EMBEDDING) if self.keep_hidden else (EMBEDDING,)

    def pooled_width(self, hidden: int) -> int:
        """Width after the Dense layers, before truncation."""
        return self.dense[-1].out_features if self.dense else len(self.modes) * hidden

    def width(self, hidden: int) -> int:
        """Width of sentence_embedding for an encoder of `hidden` channels."""
        return self.truncate_dim if self.truncate_dim is not None else self.pooled_width(hidden)

    def check_widths(self, hidden: int) -> None:
        """UsageError unless each Dense reads the width before it and the truncation keeps at most what is there."""
        width = len(self.modes) * hidden
        for i, d in enumerate(self.dense):
            if d.in_features != width:
                raise UsageError(f"Dense layer {i} reads {d.in_features} channels, the pipeline gives it {width}")
            width = d.out_features
        if self.truncate_dim is not None and self.truncate_dim > width:
            raise UsageError(f"--truncate-dim {self.truncate_dim} exceeds the embedding's {width} channels")

    def same_pipeline(self, other: Pooling) -> bool:
        """Both compute the same sentence_embedding (whatever else the graph outputs)."""
        return (self.mode, self.normalize, self.dense, self.truncate_dim) == (
            other.mode,
            other.normalize,
            other.dense,
            other.truncate_dim,
        )

    def describe(self) -> str:
        steps = [self.mode]
        steps += [f"dense {d.in_features}->{d.out_features} {d.activation}" for d in self.dense]
        steps += [f"first {self.truncate_dim} channels"] if self.truncate_dim is not None else []
        return ", ".join(steps) + (", L2-normalised" if self.normalize else "")

    def reference(self, hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """sentence-transformers' rule on `hidden` [B, S, D] (export.reference.sentence_embedding_ref), float64."""
        dense = tuple((d.weight, d.bias, d.activation) for d in self.dense)
        return sentence_embedding_ref(hidden, mask, self.mode, self.normalize, dense, self.truncate_dim)

    def metadata(self) -> dict[str, str]:
        """The metadata_props a graph pooled this way carries (declared_pooling reads them back)."""
        props = {POOLING_KEY: self.mode, NORMALIZE_KEY: "1" if self.normalize else "0"}
        if self.truncate_dim is not None:
            props[TRUNCATE_KEY] = str(self.truncate_dim)
        if self.dense:
            props[DENSE_KEY] = json.dumps(
                [{"activation": d.activation, "bias": d.bias is not None} for d in self.dense]
            )
        return props


def parse_pooling(mode: str, normalize: bool, outputs: str | None, truncate_dim: int | None = None) -> Pooling | None:
    """`--pooling MODE`, `--normalize`, `--outputs`, `--truncate-dim` -> a Pooling, or None for `--pooling none`
    (UsageError on a contradiction). MODE: one of MODES, or several joined by "+"."""
    names = [n.strip() for n in outputs.split(",")] if outputs is not None else None
    if mode == "none":
        for flag, given in (
            ("--normalize", normalize),
            ("--outputs", names is not None),
            ("--truncate-dim", truncate_dim),
        ):
            if given:
                raise UsageError(
                    f"{flag} applies to a pooled output ({EMBEDDING}); add --pooling mean (or another mode), or "
                    f"drop {flag}"
                )
        return None
    if any(m not in MODES for m in mode.split("+")):
        raise UsageError(f"--pooling {mode!r} is not one of auto, {', '.join(POOLINGS)} (or modes joined by +)")
    if names is None:
        return Pooling(mode, normalize, truncate_dim=truncate_dim)
    if not names or not set(names) <= {HIDDEN, EMBEDDING} or len(set(names)) != len(names) or EMBEDDING not in names:
        raise UsageError(f"--outputs {outputs!r}: give {EMBEDDING} or {HIDDEN},{EMBEDDING}")
    return Pooling(mode, normalize, keep_hidden=HIDDEN in names, truncate_dim=truncate_dim)


def check_task(pooling: Pooling | None, task: str) -> None:
    """Pooling means something only for a head that returns the hidden states; UsageError for the others."""
    if pooling is None or HIDDEN in TASKS[task]:
        return
    raise UsageError(
        f"--pooling {pooling.mode} pools last_hidden_state, and a {task} checkpoint "
        f"returns {', '.join(TASKS[task])}; drop --pooling for this head (or pass --pooling none)"
    )


def declared_pooling(model: onnx.ModelProto, folder: str | Path | None = None) -> Pooling | None:
    """The pooling a graph of ours computes (its metadata and pool/ initializers), None when it has no
    sentence_embedding output. `folder`: where the graph's external data lies, for Dense weights stored there.
    UsageError for a sentence_embedding that no pass of ours wrote (nothing says how it was pooled)."""
    outputs = [o.name for o in model.graph.output]
    if EMBEDDING not in outputs:
        return None
    props = {p.key: p.value for p in model.metadata_props}
    mode = props.get(POOLING_KEY) or ""
    if not mode or any(m not in MODES for m in mode.split("+")):
        raise UsageError(
            f"the graph has a {EMBEDDING!r} output but does not say how it was pooled (metadata "
            f"{POOLING_KEY}); rebuild it with python -m export.build --pooling"
        )
    truncate = props.get(TRUNCATE_KEY)
    dense = _declared_dense(model, json.loads(props.get(DENSE_KEY) or "[]"), folder)
    return Pooling(
        mode,
        props.get(NORMALIZE_KEY) == "1",
        keep_hidden=HIDDEN in outputs,
        dense=dense,
        truncate_dim=int(truncate) if truncate else None,
    )


def _declared_dense(model: onnx.ModelProto, layers: list, folder: str | Path | None) -> tuple[Dense, ...]:
    inits = {i.name: i for i in model.graph.initializer}
    try:
        if layers:
            check_locations(model)  # external data is read only from plain file names beside the graph
    except ValueError as e:
        raise UsageError(str(e)) from None
    out = []
    for i, layer in enumerate(layers):
        w_name, b_name = dense_names(i)
        if w_name not in inits or (layer.get("bias") and b_name not in inits):
            raise UsageError(f"the graph's metadata names Dense layer {i} but it has no {w_name}; rebuild it")
        w = _array(inits[w_name], folder)
        b = _array(inits[b_name], folder) if layer.get("bias") else None
        out.append(Dense(np.ascontiguousarray(w.T), b, str(layer.get("activation"))))
    return tuple(out)


def _array(t: onnx.TensorProto, folder: str | Path | None) -> np.ndarray:
    if t.data_location == onnx.TensorProto.EXTERNAL:
        if folder is None:
            raise UsageError(f"{t.name} is stored in external data; read the graph with its folder")
        copy = onnx.TensorProto()
        copy.CopyFrom(t)
        load_external_data_for_tensor(copy, str(folder))
        t = copy
    return numpy_helper.to_array(t).astype(np.float32)

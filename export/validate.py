"""Run exported graphs in ONNX Runtime (CPU) against the PyTorch model and grade every output.

In: one or more graphs (ONNX path, `OnnxFile`, or a self-contained ModelProto, with the precision they
compute in), the PyTorch fp32 model, the shapes to try. The PyTorch outputs for every shape are computed
first, then one ONNX Runtime session at a time is made, run on every shape and dropped, so at most
one copy of the graph's weights is held besides the PyTorch model. Out: validation cases in report.json's schema
(per output: the statistics of export/report/compare.py, with the per-row cosine over non-padded rows, the thresholds
used,
passed). `failures` lists every failing case so the CLI can fail once with all of them.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

import numpy as np
import onnx
import torch
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from export.errors import VerificationError
from export.memory import release_freed
from export.passes.lowering import with_rotary_function
from export.passes.pooling import EMBEDDING, HIDDEN, MASK, Pooling
from export.progress import progress
from export.report.compare import error_stats, row_mask
from export.report.schema import OutputStats, ValidationCase
from export.report.thresholds import Thresholds
from export.spec import DEFAULT_CHOICES, ExportSpec

log = logging.getLogger(__name__)

# What InferenceSession.run raises for a graph it cannot run with given feeds (a node's shape contract, a kernel
# missing for a type): the graph's failure, graded as a failed case (exit 1), never a crash of the build (exit 4).
ORT_RUN_ERRORS = (ort_state.Fail, ort_state.InvalidArgument, ort_state.NotImplemented, ort_state.RuntimeException)


@dataclass(frozen=True)
class Shape:
    batch: int
    seq: int
    padded_rows: int = 0
    choices: int | None = None

    def label(self) -> str:
        c = f"x{self.choices}" if self.choices else ""
        return f"B={self.batch}{c} S={self.seq}" + (f" pad={self.padded_rows}" if self.padded_rows else "")


def validation_shapes(max_len: int, task: str, choices: int | None = None, prime: int = 61) -> list[Shape]:
    """Batch 1 and 3 at sequence 1 and a prime length (the largest prime <= min(61, max_len)), batch 1 at
    max_len; batch 3 rows padded. A prime length catches kernels and graphs that assume even or tiled lengths.
    A multiple-choice head gets `choices` per example (the engine's, export.build's --choices; default
    DEFAULT_CHOICES); other heads have no choices axis."""
    choices = (choices or DEFAULT_CHOICES) if task == "multiple-choice" else None
    p = largest_prime_in(2, min(prime, max_len)) or 1
    shapes = [Shape(1, 1, 0, choices), Shape(3, 1, 0, choices), Shape(1, p, 0, choices), Shape(3, p, 2, choices)]
    if max_len not in (1, p):
        shapes.append(Shape(1, max_len, 0, choices))
    return shapes


def largest_prime_in(lo: int, hi: int) -> int | None:
    """The largest prime in [lo, hi], None when there is none."""
    for n in range(hi, max(lo, 2) - 1, -1):
        if all(n % d for d in range(2, int(n**0.5) + 1)):
            return n
    return None


def input_seed(shape: Shape, seed: int = 0) -> int:
    """The generator seed make_inputs draws `shape`'s inputs from. Two (shape, seed) pairs with the same value draw
    the same stream: a shorter shape's ids are then a prefix of the longer one's."""
    return seed + shape.batch * 1009 + shape.seq


def make_inputs(shape: Shape, vocab_size: int, type_vocab_size: int | None, seed: int = 0) -> dict[str, np.ndarray]:
    """Random ids from the vocab; the last `padded_rows` rows end in padding (mask 0, id 0) of growing length.
    token_type_ids too, from [0, type_vocab_size), unless type_vocab_size is None (a family without that input:
    ModelFacts.type_vocab_size)."""
    rng = np.random.default_rng(input_seed(shape, seed))
    dims = (shape.batch, shape.choices, shape.seq) if shape.choices else (shape.batch, shape.seq)
    ids = rng.integers(0, vocab_size, size=dims, dtype=np.int64)
    types = None if type_vocab_size is None else rng.integers(0, type_vocab_size, size=dims, dtype=np.int64)
    mask = padding_mask(shape)
    ids[mask == 0] = 0
    feeds = {"input_ids": ids, "attention_mask": mask}
    return feeds if types is None else {**feeds, "token_type_ids": types}


def padding_mask(shape: Shape) -> np.ndarray:
    """The attention_mask make_inputs gives `shape`: 1 everywhere but the padded tail of the last rows."""
    dims = (shape.batch, shape.choices, shape.seq) if shape.choices else (shape.batch, shape.seq)
    mask = np.ones(dims, dtype=np.int64)
    for i in range(shape.padded_rows):
        keep = max(1, shape.seq - (i + 1) * max(1, shape.seq // 4))  # at least one real token
        mask[shape.batch - 1 - i, ..., keep:] = 0
    return mask


@dataclass(frozen=True)
class OnnxFile:
    """A graph validated from its file, read only when its session is made. rotary_function: attach, in
    memory, the ONNX function that lets ORT run RoformerRotary nodes (export.passes.lowering); the
    weights stay in the file's external data, which ORT reads from the file's folder. outputs: the
    outputs it must have and is graded on (None: the task's, ExportSpec.output_names)."""

    path: Path
    rotary_function: bool = False
    outputs: tuple[str, ...] | None = None


Graph: TypeAlias = "str | Path | onnx.ModelProto | OnnxFile"  # what ort_session runs


class TorchReference:
    """PyTorch fp32 outputs, computed once per shape and shared by every graph validated.

    Works on the caller's model only when it is already fp32, in eval mode and on `device`; otherwise on a
    converted copy, so the caller's model is never changed. device "cuda" serves the engine stage's large
    shapes (batch 32 x 2048 tokens takes minutes on a CPU); TF32 is off while the reference runs there
    (`true_fp32`), so it stays true fp32, and the flags are restored after.
    With `pooling`, `sentence_embedding` too: sentence-transformers' rule on the fp32 hidden states
    (Pooling.reference: export.reference.sentence_embedding_ref, in float64), padded rows masked as the graph
    masks them.
    """

    def __init__(self, model: torch.nn.Module, task: str, device: str = "cpu", pooling: Pooling | None = None):
        self.device = torch.device(device)
        self.model = fp32_eval_on(model, self.device)
        self.spec = ExportSpec(task)
        self.pooling = pooling
        self._cache: dict[Shape, dict[str, np.ndarray]] = {}

    def __call__(self, shape: Shape, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if shape not in self._cache:
            with torch.no_grad(), true_fp32():
                out = self.model(
                    **{k: torch.from_numpy(v).to(self.device) for k, v in inputs.items()}, return_dict=True
                )
            ref = {n: out[n].float().cpu().numpy() for n in self.spec.output_names}
            if self.pooling is not None:
                ref[EMBEDDING] = self.pooling.reference(ref[HIDDEN], inputs[MASK])
            self._cache[shape] = ref
        return self._cache[shape]


def fp32_eval_on(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """`model` itself when it is fp32, in eval mode and on `device`; else an fp32 eval copy there."""
    params = list(model.parameters())
    ready = not model.training and all(p.dtype == torch.float32 and p.device == device for p in params)
    return model if ready else copy.deepcopy(model).float().eval().to(device)


@contextmanager
def true_fp32():
    """TF32 off for the block (a GPU reference must be true fp32), the process's flags restored after:
    the one place roformer-trt touches these global flags."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def ort_session(graph: Graph):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if isinstance(graph, OnnxFile) and graph.rotary_function:
        model = with_rotary_function(onnx.load(str(graph.path), load_external_data=False))
        opts.add_session_config_entry(
            "session.model_external_initializers_file_folder_path", str(Path(graph.path).resolve().parent)
        )
        source = model.SerializeToString()
        del model
    elif isinstance(graph, OnnxFile):
        source = str(graph.path)
    else:
        source = graph.SerializeToString() if isinstance(graph, onnx.ModelProto) else str(graph)
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


def validate_graphs(
    graphs: Mapping[str, tuple[Graph, str]],
    reference: TorchReference,
    shapes: list[Shape],
    thresholds: Thresholds,
    vocab_size: int,
    type_vocab_size: int | None,
) -> list[ValidationCase]:
    """graphs: name -> (ONNX path, OnnxFile or ModelProto, precision). Returns one case per graph x shape,
    shape-major (every graph at the first shape, then the next shape)."""
    inputs = {shape: make_inputs(shape, vocab_size, type_vocab_size) for shape in shapes}
    refs = {shape: reference(shape, inputs[shape]) for shape in shapes}  # PyTorch peak before any session
    by_graph: dict[str, list[ValidationCase]] = {}
    with progress() as bar:
        task = bar.add_task("validate", total=len(graphs) * len(shapes))
        for name, (graph, precision) in graphs.items():
            bar.update(task, description=f"validate {name}: loading")
            try:
                sess = ort_session(graph)
            except VerificationError as e:  # a graph the plugin would refuse: every case fails, naming why
                by_graph[name] = [
                    unrunnable(name, precision, shape, expected_outputs(graph, reference), str(e)) for shape in shapes
                ]
                bar.advance(task, len(shapes))
                continue
            by_graph[name] = []
            names = expected_outputs(graph, reference)
            for shape in shapes:
                bar.update(task, description=f"validate {name} {shape.label()}")
                feed = {i.name: inputs[shape][i.name] for i in sess.get_inputs()}
                try:
                    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed), strict=True))
                except ORT_RUN_ERRORS as e:  # a graph that does not run at a shape it declares fails that case
                    why = f"ONNX Runtime cannot run the graph at {shape.label()}: {str(e).splitlines()[0]}"
                    by_graph[name].append(unrunnable(name, precision, shape, names, why))
                    bar.advance(task)
                    continue
                ref = {n: refs[shape][n] for n in names}
                by_graph[name].append(grade(name, precision, shape, got, ref, thresholds, inputs[shape]))
                bar.advance(task)
                del got
            del sess  # one session's weights in memory at a time
            release_freed()
    return [by_graph[name][k] for k in range(len(shapes)) for name in graphs]


def expected_outputs(graph, reference: TorchReference) -> tuple[str, ...]:
    """The outputs `graph` is graded on: an OnnxFile's own list, else the task's."""
    if isinstance(graph, OnnxFile) and graph.outputs is not None:
        return graph.outputs
    return reference.spec.output_names


def _case(graph: str, precision: str, shape: Shape, outputs: dict[str, OutputStats]) -> ValidationCase:
    """A validation case in report.json's schema; it passes when it has outputs and every one passes."""
    return {
        "graph": graph,
        "precision": precision,
        "batch": shape.batch,
        "seq": shape.seq,
        "choices": shape.choices,
        "padded_rows": shape.padded_rows,
        "outputs": outputs,
        "passed": bool(outputs) and all(o["passed"] for o in outputs.values()),
    }


def unrunnable(graph: str, precision: str, shape: Shape, names: tuple[str, ...], why: str) -> ValidationCase:
    """The case of a graph ONNX Runtime was not allowed to run, or could not run at this shape: every output
    fails with the reason."""
    return _case(graph, precision, shape, {n: {"error": why, "passed": False} for n in names})


def grade(
    graph: str,
    precision: str,
    shape: Shape,
    got: dict[str, np.ndarray],
    ref: dict[str, np.ndarray],
    thresholds: Thresholds,
    inputs: dict[str, np.ndarray] | None = None,
) -> ValidationCase:
    """One validation case. inputs: the feeds (their attention_mask says which rows are padding); None: the
    padding make_inputs gives `shape`."""
    mask = inputs["attention_mask"] if inputs is not None else padding_mask(shape)
    outputs: dict[str, OutputStats] = {
        name: {"error": f"unexpected output {name!r}: the graph should have only {sorted(ref)}", "passed": False}
        for name in got
        if name not in ref
    }  # e.g. last_hidden_state kept despite --outputs sentence_embedding
    for name, r in ref.items():
        if name not in got:
            outputs[name] = {"error": f"graph has no output {name!r} (outputs: {sorted(got)})", "passed": False}
            continue
        if got[name].shape != r.shape:
            outputs[name] = {"error": f"shape {got[name].shape} != reference {r.shape}", "passed": False}
            continue
        stats = error_stats(got[name], r, row_mask(name, r.shape, mask))
        th = thresholds.lookup(precision, graph, name)
        outputs[name] = {
            **stats.to_dict(),
            **th.to_dict(),
            "passed": th.passes(stats.max_abs, stats.scaled_error, stats.cosine, stats.n_nan, stats.row_cosine),
        }
    return _case(graph, precision, shape, outputs)


def failures(cases: list[ValidationCase]) -> list[str]:
    """One line per failing case x output, for the one error the CLI raises at the end."""
    lines = []
    for c in cases:
        for out, o in c["outputs"].items():
            if o["passed"]:
                continue
            row = f", row cosine {o['row_cosine']:.9f} (min {o['min_row_cosine']})" if "row_cosine" in o else ""
            what = o.get("error") or (
                f"max_abs {o['max_abs']:.3g} (atol {o['atol']:.1g}), scaled_error "
                f"{o['scaled_error']:.3g} (rtol {o['rtol']:.1g}), cosine {o['cosine']:.6f} "
                f"(min {o['min_cosine']}){row}, nan {o['n_nan']}"
            )
            lines.append(f"{c['graph']} [{c['precision']}] B={c['batch']} S={c['seq']} {out}: {what}")
    return lines

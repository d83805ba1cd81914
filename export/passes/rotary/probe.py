"""The numerical check of rotary sites: each site's own subgraph, run in ONNX Runtime, against its layout's
numpy reference.

In: the (shape-inferred) model, the sites, the table each site must equal (the contract's sincos [P, R],
one for all sites or an `Expected` per site), feeds for the graph inputs (they fix B and S, and feed any
input the sin/cos path reads). The probe model holds only the sites' subgraphs, from a random x_BHSDh to
the site's last node, with the sin/cos path they read; it reads only the initializers that path needs
(the position table, inv_freq, shape constants), from `base_dir` when they are external. Out: {site name:
reason} for every site that fails.

A site whose sin/cos path computes Cos/Sin in the graph (the exporters' HF models) formed its angles in
fp32; its bound adds that rounding (`tables.fp32_sincos_error` over the probe's positions). A site that
reads a table (RoFormer's initializer) is held to a few ulps.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import onnx_graphsurgeon as gs

from export.families.spec import RotaryTable
from export.onnx_io import load_tensor
from export.passes.rotary.results import Site
from export.passes.rotary.tables import describe, fp32_sincos_error

ANGLE_OPS = ("Cos", "Sin")


@dataclass(frozen=True)
class Expected:
    """What one site must compute: the table [P, R] = [sin | cos] and the family's table it was built from
    (None: a table given as is)."""

    table: np.ndarray
    spec: RotaryTable | None = None


def verify_sites(
    model: onnx.ModelProto,
    sites: list[Site],
    table: np.ndarray | Mapping[str, Expected],
    feeds: dict[str, np.ndarray],
    dtype: np.dtype,
    base_dir: str | Path | None = None,
    seed: int = 0,
) -> dict[str, str]:
    """Run every site's own subgraph once in ORT (`site_probe`: x_BHSDh fed with random values, the site's
    last node as output) and compare each output with its layout's reference of x and the site's table.
    `table`: one table for every site, or an `Expected` per site name. Returns {site name: reason} for
    failing sites."""
    import onnxruntime as ort

    expected = table if isinstance(table, Mapping) else {s.name: Expected(table) for s in sites}
    shapes = concrete_shapes(model, feeds)
    bad = {}
    for s in sites:
        shape = shapes.get(s.x.name) or _x_shape_from_feeds(s.x, feeds)
        if shape is None:  # left out of `shapes`: another site's probe walks up to it instead of folding its Shape
            bad[s.name] = f"x is {s.x.shape}, not [B, H, S, Dh] with static H and Dh; cannot verify the site alone"
        else:
            shapes[s.x.name] = shape
    sites = [s for s in sites if s.name not in bad]
    if not sites:
        return bad
    try:
        probe, needs = site_probe(model, sites, shapes, base_dir)
    except ValueError as e:  # a sin/cos path the probe cannot extract: the sites are skipped, with the reason
        return bad | {s.name: f"the site's subgraph cannot be extracted: {e}" for s in sites}
    rng = np.random.default_rng(seed)
    xs = {s.x.name: rng.standard_normal(shapes[s.x.name]).astype(np.dtype(s.x.dtype or dtype)) for s in sites}
    aliases = {a: xs[s.x.name] for s in sites for a in s.x_aliases}  # the same x, read through another node
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # run the graph as written
    outs = [s.add.outputs[0].name for s in sites]
    try:
        sess = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        values = dict(zip(outs, sess.run(outs, xs | aliases | {k: feeds[k] for k in needs}), strict=True))
    except Exception as e:  # ORT raises its own error types; the reason lands in the report's skipped list
        return bad | {s.name: f"the site's subgraph does not run in ONNX Runtime: {e}" for s in sites}
    angle_sites = computes_angles(probe, sites)
    for s in sites:
        exp = expected[s.name]
        spec = exp.spec if s.name in angle_sites else None
        why = check_output(s, xs[s.x.name], values[s.add.outputs[0].name], exp.table, dtype, spec)
        if why:
            bad[s.name] = why + (f" (table: {describe(exp.spec)})" if exp.spec is not None else "")
    return bad


def check_output(
    site: Site, x: np.ndarray, y: np.ndarray, table: np.ndarray, dtype: np.dtype, spec: RotaryTable | None = None
) -> str | None:
    """One site's output y for input x against its layout's reference; why it fails, or None. `spec`: the
    site computed its sin/cos in the graph in fp32 (adds `fp32_sincos_error(spec)` over its positions)."""
    if x.ndim != 4 or x.shape != y.shape or x.shape[-1] < table.shape[1]:
        return f"x is {list(x.shape)}, expected [B, H, S, Dh] with Dh matching the table width {table.shape[1]}"
    if x.shape[2] > table.shape[0]:
        return f"sequence {x.shape[2]} exceeds the table's {table.shape[0]} rows"
    assert site.layout.reference is not None, site.layout.name  # a declined layout makes a Miss, never a Site
    ref = site.layout.reference(x, table).astype(np.float64)
    err = float(np.max(np.abs(y.astype(np.float64) - ref))) if y.size else 0.0
    # exported graphs round x*cos and rh*sin in their own dtype: a few ulps of |x|; a wrong angle,
    # sign or pairing is off by O(|x|)
    x_max = float(np.max(np.abs(x))) if x.size else 1.0
    tol = 8 * float(np.finfo(dtype).eps) * max(1.0, x_max)
    if spec is not None:  # y = x1 cos -/+ x2 sin: each of cos and sin off by at most the bound
        tol += 2 * x_max * fp32_sincos_error(spec, x.shape[2])
    return error_verdict(err, tol)


def computes_angles(probe: onnx.ModelProto, sites: list[Site]) -> set[str]:
    """Names of the sites whose probe subgraph takes Cos or Sin in the graph (their table is fp32-formed)."""
    producers = {o: n for n in probe.graph.node for o in n.output if o}
    found = set()
    for s in sites:
        stack, seen = [s.add.outputs[0].name], {s.x.name}
        while stack:
            name = stack.pop()
            node = producers.get(name)
            if name in seen or node is None:
                continue
            seen.add(name)
            if node.op_type in ANGLE_OPS:
                found.add(s.name)
                break
            stack.extend(node.input)
    return found


def error_verdict(err: float, tol: float) -> str | None:
    """None when err is within tol. A NaN or infinite error is a failure of its own, said by name: every
    comparison with NaN is False, so a check written as `err > tol` would pass it."""
    if not math.isfinite(err):
        return (
            f"numerical check failed: max |graph - reference| is {err} "
            "(NaN or inf in the site's output; the reference is finite)"
        )
    if err > tol:
        return f"numerical check failed: max |graph - reference| = {err:.3g} > {tol:.3g}"
    return None


def _x_shape_from_feeds(x: gs.Variable, feeds: dict[str, np.ndarray]) -> list[int] | None:
    """x_BHSDh's probe shape when inference cannot size it (e.g. a multiple-choice reshape): H and Dh
    from the graph, B = the ids' leading dims flattened (batch x choices), S = the ids' last dim."""
    ids = feeds.get("input_ids", next(iter(feeds.values()), None))
    shape = x.shape
    if (
        ids is None
        or shape is None
        or len(shape) != 4
        or not all(isinstance(shape[i], (int, np.integer)) for i in (1, 3))
    ):
        return None
    return [int(np.prod(ids.shape[:-1])), int(shape[1]), int(ids.shape[-1]), int(shape[3])]


def concrete_shapes(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, list[int]]:
    """Static shape of every tensor that shape inference (with data propagation) can size when the
    graph inputs have the shapes of `feeds`. Works on structure: external weights are not read."""
    m = onnx.ModelProto()
    m.CopyFrom(model)  # structure-only models copy cheaply; an in-memory model is a test-sized one
    for inp in m.graph.input:
        dims = inp.type.tensor_type.shape.dim
        if inp.name in feeds and len(dims) == feeds[inp.name].ndim:  # an input of unknown rank stays unsized
            for d, n in zip(dims, feeds[inp.name].shape, strict=True):
                d.Clear()
                d.dim_value = int(n)
    del m.graph.value_info[:]
    inferred = onnx.shape_inference.infer_shapes(m, data_prop=True)
    del m
    shapes = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if vi.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = [int(d.dim_value) for d in dims]
    return shapes


def site_probe(
    model: onnx.ModelProto, sites: list[Site], shapes: dict[str, list[int]], base_dir: str | Path | None
) -> tuple[onnx.ModelProto, list[str]]:
    """A model of the sites' subgraphs only: inputs are each site's x_BHSDh and its aliases (+ the graph
    inputs the sin/cos path reads), outputs each site's last node. Walks back from those and stops at x, at
    initializers and at Shape nodes whose input has a static shape in `shapes` (folded into a Constant, so
    the walk does not follow e.g. Shape(hidden_states) into the embeddings). Returns (probe, names of graph
    inputs it needs)."""
    producers = {o: n for n in model.graph.node for o in n.output if o}
    inits = {t.name: t for t in model.graph.initializer}
    graph_inputs = {i.name: i for i in model.graph.input}
    cut = {s.x.name for s in sites} | {a for s in sites for a in s.x_aliases}
    kept: dict[int, onnx.NodeProto] = {}
    need_inits, need_inputs, seen = [], [], set()
    stack = [s.add.outputs[0].name for s in sites]
    while stack:
        name = stack.pop()
        if not name or name in seen or name in cut:
            continue
        seen.add(name)
        node = producers.get(name)
        if name in inits:
            need_inits.append(name)
        elif node is None:
            if name in graph_inputs:
                need_inputs.append(name)
        elif id(node) not in kept:
            if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
                raise ValueError(f"the rotary site reads {node.op_type} node {node.name!r}, which has a subgraph")
            kept[id(node)] = node
            if not (node.op_type == "Shape" and node.input[0] in shapes):
                stack.extend(node.input)
    nodes = [
        _fold_shape(n, shapes) if n.op_type == "Shape" and n.input[0] in shapes else n
        for n in model.graph.node
        if id(n) in kept
    ]
    elem = lambda s: onnx.helper.np_dtype_to_tensor_dtype(np.dtype(s.x.dtype or np.float32))  # noqa: E731
    xs = [
        onnx.helper.make_tensor_value_info(name, elem(s), shapes[s.x.name])
        for s in sites
        for name in (s.x.name, *s.x_aliases)
    ]
    graph = onnx.helper.make_graph(
        nodes,
        "rotary_site_probe",
        xs + [graph_inputs[n] for n in need_inputs],
        [onnx.ValueInfoProto(name=s.add.outputs[0].name) for s in sites],
        initializer=[load_tensor(inits[n], base_dir) for n in need_inits],
    )
    probe = onnx.helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    probe.functions.extend(model.functions)
    return probe, need_inputs


def _fold_shape(node: onnx.NodeProto, shapes: dict[str, list[int]]) -> onnx.NodeProto:
    """Shape(t) -> Constant of t's static shape (with Shape's start/end, which slice like Python)."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    dims = shapes[node.input[0]][attrs.get("start", 0) : attrs.get("end", None)]
    value = onnx.numpy_helper.from_array(np.array(dims, dtype=np.int64), node.output[0])
    return onnx.helper.make_node("Constant", [], [node.output[0]], name=node.name, value=value)


def default_feeds(model: onnx.ModelProto, batch: int = 2, seq: int = 37, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs for verification when the caller gives none: ids 0/1 are valid in any vocab, mask all ones."""
    rng = np.random.default_rng(seed)
    feeds = {}
    init = {i.name for i in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name in init:
            continue
        dims = [d.dim_value if d.dim_value else None for d in inp.type.tensor_type.shape.dim]
        shape = [batch] + [seq if d is None else d for d in dims[1:]] if dims else []
        if len(dims) == 3 and dims[1] is None:  # multiple choice [batch, choices, sequence]
            shape = [batch, 2, seq]
        et = inp.type.tensor_type.elem_type
        np_dtype = onnx.helper.tensor_dtype_to_np_dtype(et)
        if "mask" in inp.name:
            feeds[inp.name] = np.ones(shape, dtype=np_dtype)
        elif np.issubdtype(np_dtype, np.integer):
            feeds[inp.name] = rng.integers(0, 2, size=shape).astype(np_dtype)
        else:
            feeds[inp.name] = rng.standard_normal(shape).astype(np_dtype)
    return feeds

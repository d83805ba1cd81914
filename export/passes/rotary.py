"""Rotary pass: find every RoFormer rotary site in an exported graph and rewrite it, verified.

A *site* is one rotated tensor (query, key, value when `rotary_value`), HF's
`x * cos_pos + rotate_half(x) * sin_pos` with RoFormer's interleaved rotate_half:

    Slice(x, 1::2) -> Neg -> Unsqueeze(-1) --+
    Slice(x, 0::2) ----------> Unsqueeze(-1) -+-> Concat(-1) -> Reshape -> Mul(., sin) --+
    x ----------------------------------------------------------------> Mul(., cos) -----+-> Add

Layout: x_BHSDh is [B, H, S, Dh]. pattern (`match_site`, read-only) -> check (`verify_sites`: each
site's own subgraph, from a random x_BHSDh to the final Add, with the sin/cos path it reads, runs in
ONNX Runtime and is compared with the contract's numpy reference) -> rewrite (`rewrite_plugin` /
`rewrite_onnx`). The pass works on structure: the model may come from
`onnx.load(path, load_external_data=False)`; it reads only the initializers the verified subgraphs
need (the position table, shape constants) from `base_dir`, and the rewritten model keeps pointing at
the same external data. Sites are grouped by layer (the hidden
state their Q/K/V projections read); a layer is rewritten only when all of its sites verify.
Modes: "plugin" = one `roformer_trt::RoformerRotary` node per layer (plugins/roformer_rotary/README.md);
"onnx" = one standard `RotaryEmbedding` (opset 23, interleaved=1) per site.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import onnx_graphsurgeon as gs

from export.onnx_io import is_external, load_tensor
from export.passes.graph_utils import const_ints, is_last_axis, producer
from export.reference import roformer_rotary_ref, sincos_table
from plugins import identity as rr
from plugins.identity import PLUGIN_DOMAIN, PLUGIN_OP, PLUGIN_VERSION, SINCOS_INITIALIZER

log = logging.getLogger(__name__)

SINCOS_NAME = SINCOS_INITIALIZER
COS_CACHE_NAME, SIN_CACHE_NAME = "roformer_rotary_cos_cache", "roformer_rotary_sin_cache"  # --rope onnx
MODES = ("plugin", "onnx")
ONNX_ROTARY_OPSET = 23  # RotaryEmbedding entered ai.onnx at 23


@dataclass(frozen=True)
class Miss:
    anchor: str  # node or tensor where matching started or failed
    reason: str


@dataclass
class Site:
    add: gs.Node  # the final Add; its output is the rotated tensor
    x: gs.Variable  # x_BHSDh
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
        return {"mode": self.mode, "expected": self.expected, "expected_nodes": self.expected_nodes, "found": self.found, "rewritten": self.rewritten,
                "nodes": self.nodes, "already_rewritten": self.already, "skipped": self.skipped,
                "layers": self.layers}

    def coverage_error(self) -> str | None:
        """None when every expected site is rewritten; otherwise one line naming layers and reasons."""
        if self.expected is None or self.rewritten >= self.expected:
            if self.mode == "plugin" and self.expected_nodes is not None and self.nodes != self.expected_nodes:
                return (f"rotary rewrite: {self.nodes} RoformerRotary nodes for {self.expected_nodes} layers; "
                        "sites of one layer were not grouped into one node")
            return None
        if not self.skipped:
            return (f"rotary rewrite: {self.rewritten}/{self.expected} sites rewritten and no candidate found; "
                    "the graph has no RoFormer (interleaved) rotary embedding, e.g. a BERT or a rotate_half model")
        why = "; ".join(f"{s.get('layer', '?')} {s['site']}: {s['reason']}" for s in self.skipped[:6])
        return f"rotary rewrite: {self.rewritten}/{self.expected} sites rewritten; skipped {why}"


# ---- pattern -------------------------------------------------------------------------------------

def match_site(add: gs.Node) -> Site | Miss | None:
    """Read-only walk back from an Add. None: not even a candidate (not Add(Mul, Mul))."""
    if add.op != "Add" or len(add.inputs) != 2:
        return None
    muls = [producer(t, "Mul") for t in add.inputs]
    if any(m is None for m in muls):
        return None
    anchor = add.name or add.outputs[0].name
    for mul_x, mul_r in (muls, muls[::-1]):
        for rh in mul_r.inputs:
            reshape = producer(rh, "Reshape")
            if reshape is None:
                continue
            got = _match_rotate_half(reshape.inputs[0])
            if isinstance(got, Miss):
                return Miss(anchor, got.reason)
            if got is None:
                continue
            if any(t is got for t in mul_x.inputs):
                return Site(add=add, x=got)
            return Miss(anchor, "rotate_half(x) is multiplied in, but x itself is not the other product's operand")
    if any(_is_half_rotation(t) for m in muls for t in m.inputs):
        return Miss(anchor, "rotation is rotate_half over split halves (GPT-NeoX/LLaMA), not RoFormer's "
                            "interleaved pairs; left untouched")
    return None


def _match_rotate_half(cat_out: gs.Tensor):
    """Concat(Unsqueeze(Neg(x[..., 1::2])), Unsqueeze(x[..., 0::2])) on a new last axis -> x, or Miss/None."""
    cat = producer(cat_out, "Concat")
    if cat is None or len(cat.inputs) != 2:
        return None
    u_neg, u_even = (producer(t, "Unsqueeze") for t in cat.inputs)
    if u_neg is None or u_even is None:
        return None
    neg = producer(u_neg.inputs[0], "Neg")
    odd = producer(neg.inputs[0], "Slice") if neg is not None else None
    even = producer(u_even.inputs[0], "Slice")
    if odd is None or even is None:
        return Miss(cat.name, "Concat of unsqueezed tensors is not [-x[1::2], x[0::2]]")
    if odd.inputs[0] is not even.inputs[0]:
        return Miss(cat.name, "even and odd slices read different tensors")
    for u in (u_neg, u_even):
        axes = const_ints(u.inputs[1]) if len(u.inputs) > 1 else u.attrs.get("axes")
        if axes is None or len(axes) != 1 or not is_last_axis(int(axes[0]), 5):
            return Miss(u.name, f"Unsqueeze axes {axes}, expected the new last axis")
    if not is_last_axis(cat.attrs.get("axis"), 5):
        return Miss(cat.name, f"Concat axis {cat.attrs.get('axis')}, expected the last axis")
    for sl, start in ((odd, 1), (even, 0)):
        miss = _check_strided_slice(sl, start)
        if miss:
            return miss
    return odd.inputs[0]


def _check_strided_slice(sl: gs.Node, start: int) -> Miss | None:
    ins = sl.inputs
    starts = const_ints(ins[1]) if len(ins) > 1 else None
    axes = const_ints(ins[3]) if len(ins) > 3 else None
    steps = const_ints(ins[4]) if len(ins) > 4 else None
    if starts != [start] or steps != [2] or axes is None or not is_last_axis(axes[0], 4):
        return Miss(sl.name, f"Slice starts={starts} axes={axes} steps={steps}, expected x[..., {start}::2]")
    ends = const_ints(ins[2])
    if ends is None or ends[0] < 2:
        return Miss(sl.name, f"Slice ends={ends}, expected the end of the head dimension")
    return None


def _is_half_rotation(t: gs.Tensor) -> bool:
    cat = producer(t, "Concat")
    if cat is None or len(cat.inputs) != 2:
        return False
    neg = producer(cat.inputs[0], "Neg")
    return neg is not None and producer(neg.inputs[0], "Slice") is not None


def layer_key(x: gs.Tensor) -> str:
    """Walk x back through Transpose/Reshape/Add/Cast to the projection MatMul; its activation input
    names the layer (query, key and value of one self-attention read the same hidden state)."""
    t = x
    for _ in range(8):
        node = producer(t, ("Transpose", "Reshape", "Add", "Cast", "Identity", "MatMul", "Gemm"))
        if node is None:
            break
        variables = [i for i in node.inputs if not _is_const(i)]
        if node.op in ("MatMul", "Gemm"):
            weights = [i for i in node.inputs if _is_const(i) or _from_weights(i)]
            acts = [i for i in node.inputs if i not in weights]
            if len(acts) == 1:
                return acts[0].name
            break
        if node.op == "Reshape":
            variables = [node.inputs[0]]
        if len(variables) != 1:
            break
        t = variables[0]
    return x.name  # a site of its own: reported if a layer then comes out incomplete


def _from_weights(t: gs.Tensor) -> bool:
    """A weight that the exporter passed through Transpose/Cast/Identity of an initializer."""
    node = producer(t, ("Transpose", "Cast", "Identity"))
    return node is not None and _is_const(node.inputs[0])


def _is_const(t: gs.Tensor) -> bool:
    """An initializer, a Constant node's output or an Identity of either: decided without reading values
    (a weight's values may live in external data this pass never loads)."""
    if isinstance(t, gs.Constant):
        return True
    if producer(t, "Constant") is not None:
        return True
    ident = producer(t, "Identity")
    return ident is not None and _is_const(ident.inputs[0])


# ---- check ---------------------------------------------------------------------------------------

def find_sites(graph: gs.Graph) -> tuple[list[Site], list[Miss]]:
    sites, misses = [], []
    for node in graph.nodes:
        got = match_site(node)
        if isinstance(got, Site):
            got.layer_key = layer_key(got.x)
            sites.append(got)
        elif isinstance(got, Miss):
            misses.append(got)
    return sites, misses


def verify_sites(model: onnx.ModelProto, sites: list[Site], table: np.ndarray, feeds: dict[str, np.ndarray],
                 dtype: np.dtype, base_dir: str | Path | None = None, seed: int = 0) -> dict[str, str]:
    """Run every site's own subgraph once in ORT (`site_probe`: x_BHSDh fed with random values, the final
    Add as output) and compare each output with the contract's reference of x. `feeds` give the shapes
    (B, S) and any graph input the sin/cos path reads. Returns {site name: reason} for failing sites."""
    import onnxruntime as ort
    shapes = concrete_shapes(model, feeds)
    bad = {}
    for s in sites:
        shape = shapes.get(s.x.name) or _x_shape_from_feeds(s.x, feeds)
        if shape is None:
            bad[s.name] = f"x is {s.x.shape}, not [B, H, S, Dh] with static H and Dh; cannot verify the site alone"
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
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # run the graph as written
    outs = [s.add.outputs[0].name for s in sites]
    try:
        sess = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        values = dict(zip(outs, sess.run(outs, xs | {k: feeds[k] for k in needs})))
    except Exception as e:  # ORT raises its own error types; the reason lands in the report's skipped list
        return bad | {s.name: f"the site's subgraph does not run in ONNX Runtime: {e}" for s in sites}
    eps = float(np.finfo(dtype).eps)
    for s in sites:
        x, y = xs[s.x.name], values[s.add.outputs[0].name]
        if x.ndim != 4 or x.shape != y.shape or x.shape[-1] != table.shape[1]:
            bad[s.name] = f"x is {list(x.shape)}, expected [B, H, S, {table.shape[1]}] matching the table width"
            continue
        if x.shape[2] > table.shape[0]:
            bad[s.name] = f"sequence {x.shape[2]} exceeds the table's {table.shape[0]} rows"
            continue
        ref = roformer_rotary_ref([x], table)[0].astype(np.float64)
        err = float(np.max(np.abs(y.astype(np.float64) - ref))) if y.size else 0.0
        # exported graphs round x*cos and rh*sin in their own dtype: a few ulps of |x|; a wrong angle,
        # sign or pairing is off by O(|x|)
        tol = 8 * eps * max(1.0, float(np.max(np.abs(x))) if x.size else 1.0)
        if not err <= tol:
            bad[s.name] = f"numerical check failed: max |graph - reference| = {err:.3g} > {tol:.3g}"
    return bad


def _x_shape_from_feeds(x: gs.Variable, feeds: dict[str, np.ndarray]) -> list[int] | None:
    """x_BHSDh's probe shape when inference cannot size it (e.g. a multiple-choice reshape): H and Dh
    from the graph, B = the ids' leading dims flattened (batch x choices), S = the ids' last dim."""
    ids = feeds.get("input_ids", next(iter(feeds.values()), None))
    shape = x.shape
    if ids is None or shape is None or len(shape) != 4 or not all(isinstance(shape[i], (int, np.integer))
                                                                     for i in (1, 3)):
        return None
    return [int(np.prod(ids.shape[:-1])), int(shape[1]), int(ids.shape[-1]), int(shape[3])]


def concrete_shapes(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, list[int]]:
    """Static shape of every tensor that shape inference (with data propagation) can size when the
    graph inputs have the shapes of `feeds`. Works on structure: external weights are not read."""
    m = onnx.ModelProto()
    m.CopyFrom(model)  # structure-only models copy cheaply; an in-memory model is a test-sized one
    for inp in m.graph.input:
        if inp.name in feeds:
            dims = inp.type.tensor_type.shape.dim
            for d, n in zip(dims, feeds[inp.name].shape):
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


def site_probe(model: onnx.ModelProto, sites: list[Site], shapes: dict[str, list[int]],
               base_dir: str | Path | None) -> tuple[onnx.ModelProto, list[str]]:
    """A model of the sites' subgraphs only: inputs are each site's x_BHSDh (+ the graph inputs the sin/cos
    path reads), outputs each site's final Add. Walks back from the Adds and stops at x, at initializers
    and at Shape nodes whose input has a static shape in `shapes` (folded into a Constant, so the walk does
    not follow e.g. Shape(hidden_states) into the embeddings). Returns (probe, names of graph inputs it needs)."""
    producers = {o: n for n in model.graph.node for o in n.output if o}
    inits = {t.name: t for t in model.graph.initializer}
    graph_inputs = {i.name: i for i in model.graph.input}
    cut = {s.x.name for s in sites}
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
    nodes = [_fold_shape(n, shapes) if n.op_type == "Shape" and n.input[0] in shapes else n
             for n in model.graph.node if id(n) in kept]
    xs = [onnx.helper.make_tensor_value_info(s.x.name, _onnx_type(s.x.dtype or np.float32), shapes[s.x.name])
          for s in sites]
    graph = onnx.helper.make_graph(
        nodes, "rotary_site_probe", xs + [graph_inputs[n] for n in need_inputs],
        [onnx.ValueInfoProto(name=s.add.outputs[0].name) for s in sites],
        initializer=[load_tensor(inits[n], base_dir) for n in need_inits])
    probe = onnx.helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    probe.functions.extend(model.functions)
    return probe, need_inputs


def _fold_shape(node: onnx.NodeProto, shapes: dict[str, list[int]]) -> onnx.NodeProto:
    """Shape(t) -> Constant of t's static shape (with Shape's start/end, which slice like Python)."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    dims = shapes[node.input[0]][attrs.get("start", 0):attrs.get("end", None)]
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


# ---- rewrite -------------------------------------------------------------------------------------

def rewrite_plugin(graph: gs.Graph, layer: list[Site], sincos: gs.Constant, index: int) -> gs.Node:
    """One RoformerRotary node for all sites of a layer; it takes over the sites' output tensors."""
    outputs = []
    for s in layer:
        y = s.add.outputs[0]
        s.add.outputs.clear()
        y.dtype, y.shape = s.x.dtype, s.x.shape  # value_info: dtype and symbolic shape of x
        outputs.append(y)
    node = gs.Node(op=PLUGIN_OP, name=f"{PLUGIN_OP}_{index}", domain=PLUGIN_DOMAIN,
                   attrs={rr.ATTR_PLUGIN_VERSION: PLUGIN_VERSION, rr.ATTR_PLUGIN_NAMESPACE: rr.PLUGIN_NAMESPACE,
                          rr.ATTR_INTERLEAVED: 1, rr.ATTR_ROTARY_DIM: int(sincos.shape[1]),
                          rr.ATTR_NUM_TENSORS: len(layer)},
                   inputs=[s.x for s in layer] + [sincos], outputs=outputs)
    graph.nodes.append(node)
    return node


def rewrite_onnx(graph: gs.Graph, site: Site, cos: gs.Constant, sin: gs.Constant, position_ids: gs.Variable,
                 index: int) -> gs.Node:
    """ai.onnx RotaryEmbedding (interleaved=1). fp16/bf16 x is cast to fp32 around it, so the rotation
    is computed in fp32 as the contract says (and ORT has no bf16 kernel for it)."""
    y = site.add.outputs[0]
    site.add.outputs.clear()
    y.dtype, y.shape = site.x.dtype, site.x.shape
    x = site.x
    name = f"RotaryEmbedding_{index}"
    if x.dtype != np.float32:
        x32 = gs.Variable(f"{name}_x_fp32", dtype=np.float32, shape=x.shape)
        graph.nodes.append(gs.Node("Cast", f"{name}_cast_in", {"to": onnx.TensorProto.FLOAT}, [x], [x32]))
        y32 = gs.Variable(f"{name}_y_fp32", dtype=np.float32, shape=x.shape)
        node = gs.Node("RotaryEmbedding", name, {"interleaved": 1}, [x32, cos, sin, position_ids], [y32])
        graph.nodes += [node, gs.Node("Cast", f"{name}_cast_out", {"to": _onnx_type(x.dtype)}, [y32], [y])]
        return node
    node = gs.Node("RotaryEmbedding", name, {"interleaved": 1}, [x, cos, sin, position_ids], [y])
    graph.nodes.append(node)
    return node


def _position_ids(graph: gs.Graph, x: gs.Variable) -> gs.Variable:
    """position_ids [B, S] = arange(S) broadcast over B, from x's shape: ORT's RotaryEmbedding wants
    exactly [B, S] (nothing broadcasts)."""
    shape = graph.layer(op="Shape", inputs=[x], outputs=["rotary_x_shape"])[0]
    shape.dtype = np.int64
    b = graph.layer(op="Gather", inputs=[shape, gs.Constant("rotary_i0", np.array([0], np.int64))],
                    outputs=["rotary_b"], attrs={"axis": 0})[0]
    s_1d = graph.layer(op="Gather", inputs=[shape, gs.Constant("rotary_i2", np.array([2], np.int64))],
                       outputs=["rotary_s"], attrs={"axis": 0})[0]
    s = graph.layer(op="Squeeze", inputs=[s_1d, gs.Constant("rotary_ax0", np.array([0], np.int64))],
                    outputs=["rotary_s_scalar"])[0]
    rng = graph.layer(op="Range", inputs=[gs.Constant("rotary_zero", np.array(0, np.int64)), s,
                                          gs.Constant("rotary_one", np.array(1, np.int64))],
                      outputs=["rotary_positions"])[0]
    row = graph.layer(op="Unsqueeze", inputs=[rng, gs.Constant("rotary_ax0b", np.array([0], np.int64))],
                      outputs=["rotary_positions_1S"])[0]
    bs = graph.layer(op="Concat", inputs=[b, s_1d], outputs=["rotary_BS"], attrs={"axis": 0})[0]
    pos = graph.layer(op="Expand", inputs=[row, bs], outputs=["rotary_position_ids"])[0]
    pos.dtype, pos.shape = np.int64, [x.shape[0] if x.shape else "batch", x.shape[2] if x.shape else "sequence"]
    return pos


def _onnx_type(dtype) -> int:
    return onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


# ---- driver --------------------------------------------------------------------------------------

def fuse_rotary(model: onnx.ModelProto, mode: str = "plugin", expected: int | None = None,
                expected_nodes: int | None = None,
                max_len: int | None = None, feeds: dict[str, np.ndarray] | None = None,
                head_dim: int | None = None, base: float = 10000.0,
                base_dir: str | Path | None = None) -> tuple[onnx.ModelProto, PassReport]:
    """pattern -> check -> rewrite over the whole graph. Returns the new model and the report; the caller
    decides what a coverage shortfall means (the CLI: exit 1). `head_dim` is a hint for graphs whose
    shapes are not inferable; `max_len` sizes the sin/cos table (default: the graph's own table).
    `model` may hold its weights or reference them (`onnx.load(..., load_external_data=False)`); then
    `base_dir` is its folder, the few initializers verification needs are read from there, and the new
    model references the same data files (write it beside the original)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    original = model
    if mode == "onnx" and _ai_onnx_version(model) < ONNX_ROTARY_OPSET:
        from onnx import version_converter
        model = version_converter.convert_version(model, ONNX_ROTARY_OPSET)
    model = onnx.shape_inference.infer_shapes(model)
    report = PassReport(mode=mode, expected=expected, expected_nodes=expected_nodes)
    graph = gs.import_onnx(model)
    report.already = _count_existing(graph, mode)
    sites, misses = find_sites(graph)
    report.found = len(sites)
    report.skipped += [{"site": m.anchor, "reason": m.reason} for m in misses]
    if not sites:
        report.rewritten = report.already
        report.nodes = _count_nodes(graph, mode)
        if report.already == 0:
            log.info("no RoFormer rotary site found (%d near misses)", len(misses))
        return original, report  # nothing to rewrite: the input, untouched

    head_dim = head_dim or _head_dim(sites)
    rows = max_len or _table_rows(graph, head_dim, base_dir)
    if rows is None:
        raise ValueError("max_len is needed: no sinusoidal table initializer of width head_dim in the graph")
    table = sincos_table(rows, head_dim, base)  # [P, Dh] fp32, float64-built
    dtype = sites[0].x.dtype or np.float32
    bad = verify_sites(model, sites, table, feeds or default_feeds(model), np.dtype(dtype), base_dir)

    layers: dict[str, list[Site]] = {}
    for s in sites:
        layers.setdefault(s.layer_key, []).append(s)
    sincos = gs.Constant(SINCOS_NAME, table)
    cos = gs.Constant(COS_CACHE_NAME, np.ascontiguousarray(table[:, head_dim // 2:]))
    sin = gs.Constant(SIN_CACHE_NAME, np.ascontiguousarray(table[:, : head_dim // 2]))
    position_ids = None
    for i, (key, layer) in enumerate(layers.items()):
        failed = {s.name: bad[s.name] for s in layer if s.name in bad}
        label = f"layer {i}"
        report.layers.append({"layer": label, "source": key, "sites": [s.name for s in layer],
                              "rewritten": not failed})
        if failed:
            for s in layer:
                reason = failed.get(s.name) or f"another site of this layer failed: {next(iter(failed.values()))}"
                report.skipped.append({"layer": label, "site": s.name, "reason": reason})
            continue
        if mode == "plugin":
            rewrite_plugin(graph, layer, sincos, i)
        else:
            for j, s in enumerate(layer):
                if position_ids is None:
                    position_ids = _position_ids(graph, sites[0].x)
                rewrite_onnx(graph, s, cos, sin, position_ids, report.rewritten + j)
        report.rewritten += len(layer)
    report.rewritten += report.already
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    report.nodes = _count_nodes(graph, mode)
    out = gs.export_onnx(graph, do_type_check=False)
    _finish_model(out, model, mode)
    return out, report


def _count_existing(graph: gs.Graph, mode: str) -> int:
    if mode == "plugin":
        return sum(len(n.inputs) - 1 for n in graph.nodes if n.op == PLUGIN_OP)
    return sum(1 for n in graph.nodes if n.op == "RotaryEmbedding")


def _count_nodes(graph: gs.Graph, mode: str) -> int:
    return sum(1 for n in graph.nodes if n.op == (PLUGIN_OP if mode == "plugin" else "RotaryEmbedding"))


def _head_dim(sites: list[Site]) -> int:
    for s in sites:
        if s.x.shape and isinstance(s.x.shape[-1], (int, np.integer)) and s.x.shape[-1] > 0:
            return int(s.x.shape[-1])
    raise ValueError("head size of the rotated tensors is not static after shape inference; pass head_dim")


def _ai_onnx_version(model: onnx.ModelProto) -> int:
    return next(i.version for i in model.opset_import if i.domain in ("", "ai.onnx"))


def _table_rows(graph: gs.Graph, head_dim: int, base_dir: str | Path | None) -> int | None:
    for t in graph.tensors().values():
        if isinstance(t, gs.Constant) and len(t.shape) == 2 and t.shape[1] == head_dim and t.shape[0] > 1:
            v = _constant_array(t, base_dir).astype(np.float64)
            if np.allclose(v[:8], sincos_table(min(8, t.shape[0]), head_dim, dtype=np.float64), atol=1e-3):
                return int(t.shape[0])
    return None


def _constant_array(t: gs.Constant, base_dir: str | Path | None) -> np.ndarray:
    """t's values; an initializer in external data is read from `base_dir` (this tensor only)."""
    proto = getattr(t._values, "tensor", None)  # gs keeps the TensorProto of an imported initializer
    if proto is not None and is_external(proto):
        return onnx.numpy_helper.to_array(load_tensor(proto, base_dir))
    return np.asarray(t.values)


def _finish_model(out: onnx.ModelProto, original: onnx.ModelProto, mode: str) -> None:
    out.ir_version = original.ir_version
    del out.opset_import[:]
    for imp in original.opset_import:
        if imp.domain in ("", "ai.onnx"):
            out.opset_import.append(onnx.helper.make_opsetid("", imp.version))
        else:
            out.opset_import.append(imp)
    if mode == "plugin" and any(n.domain == PLUGIN_DOMAIN for n in out.graph.node):
        if not any(i.domain == PLUGIN_DOMAIN for i in out.opset_import):
            out.opset_import.append(onnx.helper.make_opsetid(PLUGIN_DOMAIN, 1))
    out.functions.extend(original.functions)
    out.metadata_props.extend(original.metadata_props)  # e.g. the declared max_len engines.build reads

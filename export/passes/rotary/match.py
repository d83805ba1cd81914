"""Find rotary sites: read-only matching of every layout's pattern, the per-site shape check, and the
grouping of sites into layers. Nothing here changes the graph.

In: an onnx-graphsurgeon graph (shapes inferred) and the layouts to try (rules.LAYOUTS by default).
Out: `Site`s (x_BHSDh, the site's last node, the layout, R, the layer they belong to) and `Miss`es with a
reason.
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx_graphsurgeon as gs

from export.passes.graph_utils import producer, static_dim
from export.passes.rotary.pattern import Match, match, same_value
from export.passes.rotary.results import Miss, Site
from export.passes.rotary.rules import Layout, rotary_dim

# x_BHSDh: B and S are one batch and one sequence for every site; H is not bound across sites (grouped-query
# attention rotates a key with fewer heads than its query); Dh is one head size.
SITE_DIMS = "B _ S Dh"


def match_site(node: gs.Node, layouts: Sequence[Layout]) -> Site | Miss | None:
    """The first layout whose site pattern matches at `node` (the site's last node: the final Add, or a
    fused rotary node): a Site, or a Miss for a declined layout. Otherwise the first near miss of any
    layout, or None (not even a candidate). A complete match always wins over a near miss, whatever order
    the exporter wrote the operands in."""
    if not node.outputs or not any(node.op in layout.site.op for layout in layouts):
        return None
    anchor = node.name or node.outputs[0].name
    first_miss = None
    for layout in layouts:
        if node.op not in layout.site.op:
            continue
        got = match(layout.site, node.outputs[0])
        if isinstance(got, Match):
            if not layout.declined:
                x = got["x"]
                return Site(node, x, layout, rotary_dim(node, x), aliases_in_site(node, x))
            first_miss = first_miss or Miss(anchor, layout.declined)
        elif got.reasons and first_miss is None:
            first_miss = Miss(anchor, got.reasons[0])
    return first_miss


def aliases_in_site(last: gs.Node, x: gs.Tensor, depth: int = 6) -> tuple[str, ...]:
    """Tensors near the site's last node that hold x's value through other nodes (pattern.same_value):
    the probe feeds them x, so the site is run as one function of x."""
    found, frontier, seen = [], list(last.inputs), set()
    for _ in range(depth):
        nxt = []
        for t in frontier:
            if t is x or t.name in seen or isinstance(t, gs.Constant):
                continue
            seen.add(t.name)
            if same_value(t, x):
                found.append(t.name)
                continue
            nxt += [i for n in t.inputs for i in n.inputs]
        frontier = nxt
    return tuple(found)


def find_sites(graph: gs.Graph, layouts: Sequence[Layout]) -> tuple[list[Site], list[Miss]]:
    sites, misses = [], []
    for node in graph.nodes:
        got = match_site(node, layouts)
        if isinstance(got, Site):
            got.layer_key = layer_key(got.x)
            sites.append(got)
        elif isinstance(got, Miss):
            misses.append(got)
    return sites, misses


def check_dims(dims: dict[str, int], name: str, shape, expected: str) -> str | None:
    """Bind each symbol of `expected` ("B H S Dh") to the dim of `shape` at its place, the first time that
    dim is static; a later static dim must equal it. "_" binds nothing. Symbolic dims bind nothing
    (exporters name one axis differently in different places). An unknown shape (None) passes: the probe
    sizes it from its feeds."""
    if shape is None:
        return None
    syms = expected.split()
    if len(shape) != len(syms):
        return f"{name} has rank {len(shape)} {list(shape)}, expected [{', '.join(syms)}]"
    for i, sym in enumerate(syms):
        got = static_dim(shape, i)
        if got is not None and sym != "_" and dims.setdefault(sym, got) != got:
            return f"dim {i} ({sym}) of {name} is {got}, but {sym} was bound to {dims[sym]}"
    return None


def check_site(site: Site, dims: dict[str, int]) -> str | None:
    """What the pattern cannot say about a site: x is [B, H, S, Dh] with an even Dh, every site agrees on
    B, S and Dh (one plugin node per layer over tensors of one batch, sequence and head size), and the
    rotated width R is even and within Dh."""
    miss = check_dims(dims, "x", site.x.shape, SITE_DIMS)
    if miss:
        return miss
    dh = static_dim(site.x.shape)
    if dh is not None and dh % 2:
        return f"head size {dh} is odd; a rotation turns pairs of dims"
    r = site.rotary_dim
    if r is not None and (r % 2 or r <= 0 or (dh is not None and r > dh)):
        return f"rotary_embedding_dim {r} must be even and within the head size {dh}"
    return None


def layer_key(x: gs.Tensor) -> str:
    """Walk x back through Transpose/Reshape/Cast, an Add or a Mul/Div of a constant (a bias, ESM's query
    scaling) and the Split/Slice/Squeeze/Gather that cut a fused QKV projection, to the projection MatMul;
    its activation input names the layer (query, key and value of one self-attention read the same hidden
    state)."""
    t = x
    for _ in range(8):
        node = producer(t, _THROUGH + _DATA_FIRST)
        if node is None:
            break
        variables = [i for i in node.inputs if not _is_const(i)]
        if node.op in ("MatMul", "Gemm"):
            weights = [i for i in node.inputs if _is_const(i) or _from_weights(i)]
            acts = [i for i in node.inputs if i not in weights]
            if len(acts) == 1:
                return acts[0].name
            break
        if node.op == "Reshape" or node.op in _DATA_FIRST:
            variables = [node.inputs[0]]
        if len(variables) != 1:
            break
        t = variables[0]
    return x.name  # a site of its own: reported if a layer then comes out incomplete


_THROUGH = ("Transpose", "Reshape", "Add", "Mul", "Div", "Cast", "Identity", "MatMul", "Gemm")
# A fused projection (ModernBERT's Wqkv, NomicBERT's Wqkv) is cut into q, k, v by these: the data is input 0.
_DATA_FIRST = ("Squeeze", "Unsqueeze", "Slice", "Split", "Gather")


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

"""The rotary pass's driver: pattern -> check -> probe -> rewrite over a whole model.

In: an ONNX model (with its weights, or structure only: `onnx.load(path, load_external_data=False)` and
`base_dir` its folder), the mode ("plugin" | "onnx") and what the caller knows (expected site and node
counts, max_len, head_dim, feeds). Out: the rewritten model (the input itself when nothing matched) and a
`PassReport`. A layer (the sites whose projections read one hidden state) is rewritten only when every
one of its sites passes the check and the probe.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import onnx_graphsurgeon as gs

from export.families.spec import LayerRotary, RotaryTable
from export.onnx_io import is_external, load_tensor
from export.passes.graph_utils import static_dim
from export.passes.rotary import rewrite, rules
from export.passes.rotary.match import check_site, find_sites
from export.passes.rotary.probe import Expected, default_feeds, verify_sites
from export.passes.rotary.results import PassReport, Site
from export.passes.rotary.tables import sincos
from export.reference import DEFAULT_BASE, sincos_table
from plugins.identity import PLUGIN_DOMAIN, PLUGIN_OP

log = logging.getLogger(__name__)

MODES = ("plugin", "onnx")
ONNX_ROTARY_OPSET = 23  # RotaryEmbedding entered ai.onnx at 23


def fuse_rotary(
    model: onnx.ModelProto,
    mode: str = "plugin",
    expected: int | None = None,
    expected_nodes: int | None = None,
    max_len: int | None = None,
    feeds: dict[str, np.ndarray] | None = None,
    head_dim: int | None = None,
    base: float = DEFAULT_BASE,
    base_dir: str | Path | None = None,
    layouts: Sequence[rules.Layout] | None = None,
    rotary: Sequence[LayerRotary] | None = None,
) -> tuple[onnx.ModelProto, PassReport]:
    """pattern -> check -> probe -> rewrite over the whole graph. Returns the new model and the report; the
    caller decides what a coverage shortfall means (the CLI: exit 1). `rotary`: each layer's `LayerRotary`
    in order (one: every layer), from the model's family (export/families/spec.py); the table of a layer is
    built from it and the probe proves the graph computed that very table. Without it every site gets the
    RoFormer table of `base` over the head size (`head_dim` is a hint for graphs whose shapes are not
    inferable), in its own layout. `max_len` sizes the table (default: the graph's own RoFormer table);
    `layouts` defaults to rules.LAYOUTS. The new model references the same external data files as the
    input (write it beside the original)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    original = model
    if mode == "onnx" and _ai_onnx_version(model) < ONNX_ROTARY_OPSET:
        from onnx import version_converter

        model = version_converter.convert_version(model, ONNX_ROTARY_OPSET)
    # data_prop: shapes computed from Shape ops (HF's view(b, s, heads, head_dim)) come out static
    model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    report = PassReport(mode=mode, expected=expected, expected_nodes=expected_nodes)
    graph = gs.import_onnx(model)
    report.already = _count_existing(graph, mode)
    sites, misses = find_sites(graph, rules.LAYOUTS if layouts is None else layouts)
    report.found = len(sites)
    report.skipped += [{"site": m.anchor, "reason": m.reason} for m in misses]
    if not sites:
        report.rewritten = report.already
        report.nodes = _count_nodes(graph, mode)
        if report.already == 0:
            log.info("no rotary site found (%d near misses)", len(misses))
        return original, report  # nothing to rewrite: the input, untouched

    dims = {"Dh": head_dim} if head_dim and rotary is None else {}
    bad = {s.name: why for s in sites if (why := check_site(s, dims) or rewrite.refusal(mode, s.layout))}
    layers = group_layers(sites)
    specs = _site_specs(layers, rotary, dims.get("Dh") or head_dim, base, bad)
    rows = max_len or (_table_rows(graph, dims["Dh"], base_dir) if rotary is None and "Dh" in dims else None)
    if rows is None:
        raise ValueError("max_len is needed: no sinusoidal table initializer of width head_dim in the graph")
    tables = {spec: sincos(spec, rows) for spec in dict.fromkeys(specs.values())}  # float64-built, fp32
    expect = {name: Expected(tables[spec], spec) for name, spec in specs.items()}
    bad |= _verify(
        model,
        [s for s in sites if s.name not in bad],
        expect,
        feeds or default_feeds(model, seq=min(37, rows)),
        base_dir,
    )

    _rewrite_layers(graph, layers, bad, specs, tables, mode, report)
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    report.nodes = _count_nodes(graph, mode)
    out = gs.export_onnx(graph, do_type_check=False)
    _finish_model(out, model, mode)
    return out, report


def group_layers(sites: list[Site]) -> list[list[Site]]:
    """Sites grouped by layer (the hidden state their projections read), in graph order: layer i is the
    i-th self-attention the graph computes."""
    layers: dict[str, list[Site]] = {}
    for s in sites:
        layers.setdefault(s.layer_key, []).append(s)
    return list(layers.values())


def _site_specs(
    layers: list[list[Site]],
    rotary: Sequence[LayerRotary] | None,
    head_dim: int | None,
    base: float,
    bad: dict[str, str],
) -> dict[str, RotaryTable]:
    """The table of every site's layer. A site whose layout, rotated width or head count is not its layer's
    is added to `bad` with the reason (the interleaved layout told for a split-halves model, a partial
    rotary, a key of other heads)."""
    specs = {}
    for i, layer in enumerate(layers):
        for s in layer:
            if rotary is None:  # RoFormer's table over the head size, in the site's own layout
                r = head_dim or s.rotary_dim
                if r is None:
                    raise ValueError(
                        "head size of the rotated tensors is not static after shape inference; pass head_dim"
                    )
                specs[s.name] = RotaryTable("default", r, base)
                continue
            if len(rotary) > 1 and i >= len(rotary):
                bad.setdefault(s.name, f"layer {i} has no rotary spec; the family declares {len(rotary)} layers")
                continue
            rot = rotary[i if len(rotary) > 1 else 0]
            specs[s.name] = rot.table
            why = _spec_mismatch(s, rot)
            if why:
                bad.setdefault(s.name, f"{why} (layer {i})")
    return specs


def _spec_mismatch(site: Site, rot: LayerRotary) -> str | None:
    if site.layout.interleaved != rot.interleaved:
        return f"the graph rotates {site.layout.name}, but the rotary spec says {rot.layout}"
    if site.rotary_dim is not None and site.rotary_dim != rot.dim:
        return f"the site rotates {site.rotary_dim} dims, but the rotary spec says R={rot.dim}"
    heads = static_dim(site.x.shape, 1)
    if heads is not None and heads not in {n for _, n in rot.heads}:
        return f"the site has {heads} heads, but the rotary spec's tensors have {dict(rot.heads)}"
    return None


def _verify(
    model: onnx.ModelProto,
    sites: list[Site],
    expect: dict[str, Expected],
    feeds: dict[str, np.ndarray],
    base_dir: str | Path | None,
) -> dict[str, str]:
    """The probe over every site. A fused node with batch-1 caches (the exporter's RotaryEmbedding) is
    probed at batch 1, the only batch its caches are valid for (ORT refuses the others)."""
    if not sites:
        return {}
    dtype = np.dtype(sites[0].x.dtype or np.float32)
    fused = [s for s in sites if s.layout.fused]
    plain = [s for s in sites if not s.layout.fused]
    bad = verify_sites(model, plain, expect, feeds, dtype, base_dir) if plain else {}
    if fused:
        batch1 = {k: v[:1] for k, v in feeds.items()}
        bad |= verify_sites(model, fused, expect, batch1, dtype, base_dir)
    return bad


def _rewrite_layers(
    graph: gs.Graph,
    layers: list[list[Site]],
    bad: dict[str, str],
    specs: dict[str, RotaryTable],
    tables: dict[RotaryTable, np.ndarray],
    mode: str,
    report: PassReport,
) -> None:
    """Rewrite every layer whose sites all passed (one table, one layout); report the others site by site."""
    consts = {spec: rewrite.tables(table, k) for k, (spec, table) in enumerate(tables.items())}
    position_ids = None
    for i, layer in enumerate(layers):
        failed = {s.name: bad[s.name] for s in layer if s.name in bad}
        if not failed and len({s.layout.interleaved for s in layer}) > 1:  # one node, one `interleaved`
            failed = {layer[0].name: f"the layer mixes layouts {sorted({s.layout.name for s in layer})}"}
        if not failed and len({specs[s.name] for s in layer}) > 1:
            failed = {layer[0].name: "the layer's sites read different tables"}
        label = f"layer {i}"
        report.layers.append(
            {"layer": label, "source": layer[0].layer_key, "sites": [s.name for s in layer], "rewritten": not failed}
        )
        if failed:
            for s in layer:
                reason = failed.get(s.name) or f"another site of this layer failed: {next(iter(failed.values()))}"
                report.skipped.append({"layer": label, "site": s.name, "reason": reason})
            continue
        sincos, cos, sin = consts[specs[layer[0].name]]
        if mode == "plugin":
            rewrite.rewrite_plugin(graph, layer, sincos, i)
        else:
            for j, s in enumerate(layer):
                if position_ids is None:
                    position_ids = rewrite.position_ids(graph, s.x)
                rewrite.rewrite_onnx(graph, s, cos, sin, position_ids, report.rewritten + j)
        report.rewritten += len(layer)
    report.rewritten += report.already


def _count_existing(graph: gs.Graph, mode: str) -> int:
    if mode == "plugin":
        return sum(len(n.inputs) - 1 for n in graph.nodes if n.op == PLUGIN_OP)
    return sum(1 for n in graph.nodes if _is_position_indexed(n))


def _count_nodes(graph: gs.Graph, mode: str) -> int:
    if mode == "plugin":
        return sum(1 for n in graph.nodes if n.op == PLUGIN_OP)
    return sum(1 for n in graph.nodes if _is_position_indexed(n))


def _is_position_indexed(node: gs.Node) -> bool:
    """A RotaryEmbedding that reads its caches through position_ids: the form this pass writes. The
    exporter's 3-input node (batch-1 caches) is a site to rewrite, not a rewritten one."""
    return node.op == "RotaryEmbedding" and len(node.inputs) == 4 and bool(node.inputs[3].name)


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

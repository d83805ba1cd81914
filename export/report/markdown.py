"""report.md: the facts of report.json for people, every section a table or a sentence (no JSON dumps)."""

from __future__ import annotations

from collections.abc import Sequence

from export.families.config_check import code_origin
from export.report.reproduce import render_markdown as render_reproduce
from export.report.schema import ExportSection, Report


def render_markdown(r: Report) -> str:
    lines = [f"# roformer-trt report: {'PASSED' if r.passed else 'FAILED'}", ""]
    if r.failure:
        lines += [f"**Failure:** {r.failure}", ""]
    if r.validation_skipped:
        lines += ["**Not validated** (`--skip-validation`): the accuracy gate fails this report.", ""]
    for section in (
        _model,
        _adapter,
        _export,
        _rewrite,
        _pooling,
        _artifacts,
        _validation,
        _diagnosis,
        _precision,
        _quantization,
        _profiles,
        _plugin,
        _engine,
        _reproduce,
        _bench,
        _timings,
    ):
        lines += section(r)
    return "\n".join(lines)


def _table(header: list[str], rows: Sequence[Sequence[object]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join("" if v is None else str(v).replace("|", "\\|") for v in row) + " |" for row in rows]
    return out + [""]


def _model(r: Report) -> list[str]:
    if not r.model:
        return []
    rows = [
        [k, _per_layer(v) if k in ("rotary", "attention") and isinstance(v, list) else v] for k, v in r.model.items()
    ]
    lines = ["## Model", ""] + _table(["field", "value"], rows)
    if r.checkpoint:
        lines += [
            f"Checkpoint `{r.checkpoint.get('path')}` ({r.checkpoint.get('format')}"
            + (f", sha256 `{r.checkpoint['sha256'][:16]}…`" if r.checkpoint.get("sha256") else "")
            + ")",
            "",
        ]
    return lines


def _adapter(r: Report) -> list[str]:
    a = r.adapter
    if not a:
        return []
    held = ", ".join(a.get("tasks") or [])
    if a.get("task") is None:
        return [
            "## Task adapter",
            "",
            f"None merged (`--task none`): the base weights; the checkpoint holds {held}.",
            "",
        ]
    prefix = a.get("prefix") or ""
    return [
        "## Task adapter",
        "",
        f"`{a['task']}` (index {a.get('index')} of {held}) merged into {a.get('weights_merged')} weights before "
        f"export: {a.get('kind')}, rank {a.get('rank')}, alpha {a.get('alpha')}, scaling {a.get('scaling')}. "
        + (f"Texts for this task start with `{prefix}` (the client adds it)." if prefix else "No text prefix."),
        "",
    ]


def _per_layer(values: list) -> str:
    """Per-layer values grouped: "full (layers 0, 3); sliding, half-window 8 (layers 1, 2, 4)"."""
    groups: dict[str, list[int]] = {}
    for k, v in enumerate(values or []):
        text = v if isinstance(v, str) else _rotary(v)
        groups.setdefault(text, []).append(k)
    return "; ".join(f"{text} (layers {', '.join(map(str, ks))})" for text, ks in groups.items())


def _rotary(v: dict) -> str:
    """e.g. "split-halves R=16 default θ=160000 linear factor=1.3 heads 4/2" (type, parameters, heads when told)."""
    text = f"{v['layout']} R={v['dim']} {v['table']} θ={v['theta']:g}"
    if v.get("rope_type", "default") != "default":
        text += f" {v['rope_type']}" + "".join(f" {k}={p:g}" for k, p in (v.get("rope_parameters") or {}).items())
    heads = v.get("heads") or []
    return text + (f" heads {'/'.join(map(str, heads))}" if len(set(heads)) > 1 else "")


def _export(r: Report) -> list[str]:
    if not r.export:
        return []
    e = r.export
    head = f"{e['exporter']} exporter, opset {e['opset']}, max_len {e['max_len']}, {e['seconds']} s."
    return ["## Export", "", f"{head} {_table_sentence(r)}", ""] + _repair_note(e) + _checkpoint_notes(r)


def _repair_note(e: ExportSection) -> list[str]:
    n = e.get("rotary_caches_expanded")
    if not n:
        return []
    return [
        f"Repaired: {n} exporter `RotaryEmbedding` nodes read batch-1 cos/sin caches, which ONNX Runtime and TensorRT "
        "refuse at batch > 1; their caches are expanded to the batch (export/passes/rotary/repair.py).",
        "",
    ]


def _table_sentence(r: Report) -> str:
    """Where the graph's sinusoidal rows came from: the checkpoint's (verified) and the formula's."""
    rows, m = r.export.get("table_rows") if r.export else None, r.model or {}
    held = m.get("max_position_embeddings")
    if m.get("table") == "checkpoint":
        extended = f", extended to {rows} rows by the formula" if rows and held and rows > held else ""
        return f"Sinusoidal table: the checkpoint's {held} rows, verified against the formula{extended}."
    if m.get("table") is None and "table" in m:  # the family stores no table: rotary computed from positions
        return f"Rotary computed from positions up to {rows}; {m.get('attn_implementation', 'eager')} attention."
    return f"Sinusoidal table: {rows} rows generated by the formula (the checkpoint holds none)."


def _checkpoint_notes(r: Report) -> list[str]:
    c = r.checkpoint or {}
    notes = []
    if c.get("config_source") and c["config_source"] != "checkpoint":
        notes.append(f"Config: {c['config_source']}.")
    if c.get("weights_dtype") and c["weights_dtype"] != "float32":
        notes.append(f"Weights stored as {c['weights_dtype']}.")
    if ignored := c.get("auto_map_ignored"):
        notes.append(
            f"The config's auto_map (code in {code_origin(ignored)}) was ignored: the checkpoint is "
            "built with transformers' own class, as transformers loads it without trust_remote_code; that code never "
            "ran."
        )
    return [" ".join(notes), ""] if notes else []


def _rewrite(r: Report) -> list[str]:
    if not r.rewrite:
        return []
    w = r.rewrite
    lines = [
        "## Rotary rewrite",
        "",
        f"mode `{w.get('mode')}`: {w.get('rewritten')}/{w.get('expected')} rotary sites "
        f"rewritten into {w.get('nodes')} nodes",
        "",
    ]
    if w.get("skipped"):
        lines += _table(
            ["site", "layer", "reason"], [[s.get("site"), s.get("layer"), s.get("reason")] for s in w["skipped"]]
        )
    return lines


def _pooling(r: Report) -> list[str]:
    p = r.pooling
    if not p:
        return []
    steps = [f"{p.get('mode')} pooling"] + [
        f"Dense {d.get('in_features')}->{d.get('out_features')} {d.get('activation')}" for d in p.get("dense") or []
    ]
    steps += [f"first {p['truncate_dim']} channels"] if p.get("truncate_dim") else []
    steps += ["L2-normalised"] if p.get("normalize") else []
    lines = [
        "## Pooling",
        "",
        f"`sentence_embedding` [batch, {p.get('width', 'hidden')}] computed in fp32 inside `{p.get('graph')}` "
        f"({', '.join(steps)}); outputs: {', '.join(p.get('outputs') or [])}.",
        "",
    ]
    src = p.get("source") or {}
    if src.get("files"):
        lines += [f"From the sentence-transformers files of `{src.get('folder')}`:", ""]
        lines += _table(["file", "sha256"], [[name, f"`{sha}`"] for name, sha in src["files"].items()])
    if src.get("flags"):
        lines += [f"Flags applied: `{' '.join(src['flags'])}`.", ""]
    b = p.get("request_bytes")
    if b:
        rows = [[name, f"{n:,}"] for name, n in b["engine_outputs"].items()]
        lines += [
            f"Bytes per request of batch {b['batch']} x {b['sequence']} tokens from `{p.get('engine_graph')}` "
            f"(last_hidden_state would be {b['last_hidden_state']:,}; fetching sentence_embedding instead "
            f"saves {b['saved']:,}):",
            "",
        ] + _table(["engine output", "bytes"], rows)
    return lines


def _artifacts(r: Report) -> list[str]:
    """Every file the gate hashes: the artifacts and the external-data files their graphs read."""
    if not r.artifacts and not r.artifacts_sha256:
        return []
    keys: dict[str, list[str]] = {}
    for k, v in r.artifacts.items():
        keys.setdefault(v, []).append(k)
    files = sorted(set(r.artifacts_sha256) | set(r.artifacts.values()))
    rows = [
        [f"`{f}`", ", ".join(keys.get(f, [])) or "weights read by a graph", (r.artifacts_sha256.get(f) or "")[:16]]
        for f in files
    ]
    return [
        "## Files",
        "",
        "Paths are relative to this report's folder; `engines.gate` re-hashes every file listed here.",
        "",
    ] + _table(["file", "artifact", "sha256 (first 16)"], rows)


def _validation(r: Report) -> list[str]:
    if not r.validation:
        return []
    rows = []
    for c in r.validation:
        for name, o in c["outputs"].items():
            head = [c["graph"], c["precision"], c["batch"], c["seq"], name]
            if "error" in o:
                rows.append(head + [o["error"], "", "", "", "", "FAIL"])
                continue
            row = f"{o['row_cosine']:.9f}" if "row_cosine" in o else "n/a"
            rows.append(
                head
                + [
                    f"{o['scaled_error']:.2e}",
                    f"{o['rtol']:.0e}",
                    f"{o['max_abs']:.2e}",
                    f"{o['cosine']:.7f}",
                    row,
                    "ok" if o["passed"] else "FAIL",
                ]
            )
    return [
        "## Validation against PyTorch fp32",
        "",
        "ONNX graphs run in ONNX Runtime (CPU); `engine-*` graphs are TensorRT engines. An output passes when "
        "its scaled error (max abs / max |reference|) <= rtol (or max abs <= atol, when an atol is set), its "
        "cosine and its per-row cosine (minimum over non-padded tokens) reach their minimums, and nothing is "
        "NaN; the thresholds follow the graph's precision (export/report/thresholds.py).",
        "",
    ] + _table(
        [
            "graph",
            "precision",
            "batch",
            "seq",
            "output",
            "scaled error",
            "rtol",
            "max abs",
            "cosine",
            "row cosine",
            "pass",
        ],
        rows,
    )


def _diagnosis(r: Report) -> list[str]:
    d = r.diagnosis
    if not d:
        return []
    lines = [
        "## Where it diverges",
        "",
        f"`{d.get('graph')}` against PyTorch at batch {d.get('batch')} x sequence "
        f"{d.get('seq')} (the smallest failing case): {divergence_sentence(d.get('first_divergence'))}",
        "",
    ]
    if not d.get("complete", True):
        lines += [f"Incomplete: {d.get('reason')}.", ""]
    if d.get("files"):
        lines += [
            f"Layer by layer: [{d['files']['md']}]({d['files']['md']}), ![error against depth]"
            f"({d['files']['png']}); rerun with `python -m export.diagnose --build <this folder>`.",
            "",
        ]
    return lines


def divergence_sentence(first: dict | None) -> str:
    """One line: where the candidate first leaves the threshold, and the node(s) there."""
    if first is None:
        return "No divergence: every landmark is within the thresholds."
    where = {"embeddings": "in the embeddings", "head": f"in the head output {first['point']}"}.get(
        first["stage"], f"in layer {first['layer']} ({first['point']})"
    )
    landmark = ", ".join(f"`{n}`" for n in first.get("landmark_nodes") or []) or "not located"
    node = first.get("first_node")
    if node:
        return (
            f"First divergence {where}, landmark node(s) {landmark}: first failing tensor `{node['tensor']}` "
            f"from node `{node['node']}` ({node['op']}); scaled error {first['scaled_error']:.3g}."
        )
    return f"First divergence {where}: node(s) {landmark}; scaled error {first['scaled_error']:.3g}."


def _precision(r: Report) -> list[str]:
    p = r.precision or {}
    if not p.get("ops"):
        return []
    return [f"## Precision: {p['precision']}", "", f"from `{p['source']}`, {p['casts']} casts", ""] + _table(
        ["op", "low", "fp32"], [[op, d.get("low", 0), d.get("fp32", 0)] for op, d in p["ops"].items()]
    )


def _quantization(r: Report) -> list[str]:
    q = r.quantization
    if not q:
        return []
    c = q.get("calibration") or {}
    opset = q.get("opset") or {}
    lines = [
        f"## Quantization: {q.get('format')}",
        "",
        f"Q/DQ in `{q.get('source')}`, {q.get('high_precision')} for what is not quantized, opset "
        f"{opset.get('source')} raised to {opset.get('graph')}. Calibration: {c.get('samples')} samples "
        f"({c.get('tokens')} tokens, {c.get('source')}, sha256 `{str(c.get('sha256'))[:16]}…`), method "
        f"{q.get('method')}.",
        "",
    ]
    if c.get("note"):
        lines += [f"**{c['note']}**", ""]
    lines += _table(
        ["role", "quantized", "high"],
        [[k, v.get("quantized"), v.get("high")] for k, v in (q.get("placement") or {}).items()],
    )
    fb = q.get("fallback") or {}
    if fb.get("mode") == "auto":
        kept = fb.get("kept") or []
        lines += [
            f"Fallback: {len(kept)} of {fb.get('quantizable')} MatMuls kept high (budget {fb.get('budget')}), "
            f"{100 * fb.get('high_flops_share', 0):.1f} % of the MatMul FLOPs; "
            + ("passed." if fb.get("passed") else f"**{fb.get('reason')}**"),
            "",
        ]
        if kept:
            lines += _table(
                ["kept high", "role", "local error", "FLOPs share"],
                [[k["node"], k["role"], f"{k['error']:.3g}", f"{100 * k['flops_share']:.1f} %"] for k in kept],
            )
    return lines


def _profiles(r: Report) -> list[str]:
    if not r.profiles:
        return []
    rows = [[p["index"], "/".join(map(str, p["batch"])), "/".join(map(str, p["sequence"]))] for p in r.profiles]
    return ["## Optimization profiles", ""] + _table(["profile", "batch min/opt/max", "sequence min/opt/max"], rows)


def _plugin(r: Report) -> list[str]:
    if not r.plugin:
        return []
    p = r.plugin
    if p.get("status") == "unavailable" or not p.get("path"):
        return ["## Plugin", "", f"Not available: {p.get('reason', 'unknown reason')}", ""]
    return ["## Plugin", ""] + _table(["library", "sha256"], [[f"`{p['path']}`", p.get("sha256", "")]])


def _engine(r: Report) -> list[str]:
    e = r.engine
    if not e:
        return []
    if e.get("status") != "built":
        return ["## Engine", "", f"**{e.get('status')}**: {e.get('reason', '')}", ""]
    rows = [
        [
            x.get("plan"),
            x.get("precision"),
            x.get("onnx"),
            "reused" if x.get("reused") else "built",
            x.get("build_seconds"),
            x.get("plugin_layers"),
            "; ".join(x.get("rebuild_reasons") or []),
        ]
        for x in e.get("engines", [])
    ]
    return ["## Engine", ""] + _table(
        ["plan", "precision", "from", "status", "build s", "plugin layers", "rebuild reasons"], rows
    )


def _reproduce(r: Report) -> list[str]:
    if not r.reproduce:
        return []
    return ["## Reproduce with NVIDIA's tools", "", render_reproduce(r.reproduce)]


def _bench(r: Report) -> list[str]:
    b = r.bench
    if not b:
        return []
    rows = [
        [x["backend"], x["device"], x["batch"], x["seq"]]
        + (
            [f"{x['p50_ms']:.2f}", f"{x['p99_ms']:.2f}", ""]
            if x.get("p50_ms") is not None
            else ["", "", x.get("skipped")]
        )
        for x in b["results"]
    ]
    return (
        ["## Benchmark", ""]
        + _table(["backend", "device", "batch", "seq", "p50 ms", "p99 ms", "note"], rows)
        + [f"![benchmark]({b['files']['plot']})", ""]
    )


def _timings(r: Report) -> list[str]:
    if not r.timings:
        return []
    return ["## Time per stage", ""] + _table(["stage", "seconds"], [[k, f"{v:.2f}"] for k, v in r.timings.items()])

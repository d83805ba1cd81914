"""report.md: the facts of report.json for people, every section a table or a sentence (no JSON dumps)."""

from __future__ import annotations

from export.report import Report
from export.reproduce import render_markdown as render_reproduce


def render_markdown(r: Report) -> str:
    lines = [f"# roformer-trt report: {'PASSED' if r.passed else 'FAILED'}", ""]
    if r.failure:
        lines += [f"**Failure:** {r.failure}", ""]
    if r.validation_skipped:
        lines += ["**Not validated** (`--skip-validation`): the accuracy gate fails this report.", ""]
    for section in (_model, _export, _rewrite, _artifacts, _validation, _precision, _profiles, _plugin, _engine,
                    _reproduce, _bench, _timings):
        lines += section(r)
    return "\n".join(lines)


def _table(header: list[str], rows: list[list[object]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join("" if v is None else str(v).replace("|", "\\|") for v in row) + " |" for row in rows]
    return out + [""]


def _model(r: Report) -> list[str]:
    if not r.model:
        return []
    lines = ["## Model", ""] + _table(["field", "value"], [[k, v] for k, v in r.model.items()])
    if r.checkpoint:
        lines += [f"Checkpoint `{r.checkpoint.get('path')}` ({r.checkpoint.get('format')}"
                  + (f", sha256 `{r.checkpoint['sha256'][:16]}…`" if r.checkpoint.get("sha256") else "") + ")", ""]
    return lines


def _export(r: Report) -> list[str]:
    if not r.export:
        return []
    e = r.export
    table = (r.model or {}).get("table", "?")
    return ["## Export", "", f"{e['exporter']} exporter, opset {e['opset']}, max_len {e['max_len']} "
            f"(sinusoidal table {e['table_rows']} rows, {table}), {e['seconds']} s", ""]


def _rewrite(r: Report) -> list[str]:
    if not r.rewrite:
        return []
    w = r.rewrite
    lines = ["## Rotary rewrite", "", f"mode `{w.get('mode')}`: {w.get('rewritten')}/{w.get('expected')} rotary sites "
             f"rewritten into {w.get('nodes')} nodes", ""]
    if w.get("skipped"):
        lines += _table(["site", "layer", "reason"], [[s.get("site"), s.get("layer"), s.get("reason")]
                                                      for s in w["skipped"]])
    return lines


def _artifacts(r: Report) -> list[str]:
    if not r.artifacts:
        return []
    rows = [[k, f"`{v}`", (r.artifacts_sha256.get(v) or "")[:16]] for k, v in r.artifacts.items()]
    return ["## Artifacts", "", "Paths are relative to this report's folder; `engines.gate` re-hashes every file.", ""] \
        + _table(["artifact", "file", "sha256 (first 16)"], rows)


def _validation(r: Report) -> list[str]:
    if not r.validation:
        return []
    rows = []
    for c in r.validation:
        for name, o in c["outputs"].items():
            head = [c["graph"], c["precision"], c["batch"], c["seq"], name]
            if "error" in o:
                rows.append(head + [o["error"], "", "", "", "FAIL"])
                continue
            rows.append(head + [f"{o['max_abs']:.2e}", f"{o['max_rel']:.2e}", f"{o['cosine']:.7f}", f"{o['atol']:.0e}",
                                "ok" if o["passed"] else "FAIL"])
    return ["## Validation against PyTorch fp32", "",
            "ONNX graphs run in ONNX Runtime (CPU); `engine-*` graphs are TensorRT engines.", ""] + _table(
        ["graph", "precision", "batch", "seq", "output", "max abs", "max rel", "cosine", "atol", "pass"], rows)


def _precision(r: Report) -> list[str]:
    p = r.precision or {}
    if not p.get("ops"):
        return []
    return [f"## Precision: {p['precision']}", "", f"from `{p['source']}`, {p['casts']} casts", ""] + _table(
        ["op", "low", "fp32"], [[op, d.get("low", 0), d.get("fp32", 0)] for op, d in p["ops"].items()])


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
    rows = [[x.get("plan"), x.get("precision"), x.get("onnx"), "reused" if x.get("reused") else "built",
             x.get("build_seconds"), x.get("plugin_layers"), "; ".join(x.get("rebuild_reasons") or [])]
            for x in e.get("engines", [])]
    return ["## Engine", ""] + _table(["plan", "precision", "from", "status", "build s", "plugin layers",
                                       "rebuild reasons"], rows)


def _reproduce(r: Report) -> list[str]:
    if not r.reproduce:
        return []
    return ["## Reproduce with NVIDIA's tools", "", render_reproduce(r.reproduce)]


def _bench(r: Report) -> list[str]:
    b = r.bench
    if not b:
        return []
    rows = [[x["backend"], x["device"], x["batch"], x["seq"]]
            + ([f"{x['p50_ms']:.2f}", f"{x['p99_ms']:.2f}", ""] if x.get("p50_ms") is not None
               else ["", "", x.get("skipped")]) for x in b["results"]]
    return ["## Benchmark", ""] + _table(["backend", "device", "batch", "seq", "p50 ms", "p99 ms", "note"], rows) \
        + [f"![benchmark]({b['files']['plot']})", ""]


def _timings(r: Report) -> list[str]:
    if not r.timings:
        return []
    return ["## Time per stage", ""] + _table(["stage", "seconds"], [[k, f"{v:.2f}"] for k, v in r.timings.items()])

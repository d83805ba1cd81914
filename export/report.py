"""report.json, the spine every stage appends to, and report.md, the same facts for people."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

REPORT_JSON, REPORT_MD = "report.json", "report.md"


def write_atomic(path: str | Path, data: bytes | str) -> Path:
    """Write to a temp file in the same directory (same filesystem), fsync, os.replace: readers see the
    old file or the new one, never half of one; a failed write leaves no temp file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    raw = data.encode() if isinstance(data, str) else bytes(data)
    try:
        with open(tmp, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def new_report(argv: list[str]) -> dict:
    from export import __version__
    return {"tool": "roformer-trt", "version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": argv,
            "artifacts": {}, "validation": [], "passed": False}


def load_report(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def save_report(report: dict, out_dir: Path) -> None:
    write_atomic(out_dir / REPORT_JSON, (json.dumps(report, indent=2, default=str) + "\n").encode())
    write_atomic(out_dir / REPORT_MD, render_markdown(report).encode())


def render_markdown(r: dict) -> str:
    m = r.get("model", {})
    lines = [f"# roformer-trt report: {'PASSED' if r.get('passed') else 'FAILED'}", ""]
    if r.get("failure"):
        lines += [f"**Failure:** {r['failure']}", ""]
    if m:
        lines += ["## Model", "", "| field | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in m.items()] + [""]
    if r.get("export"):
        e = r["export"]
        lines += ["## Export", "", f"{e['exporter']} exporter, opset {e['opset']}, max_len {e['max_len']} "
                  f"(sinusoidal table {e['table_rows']} rows, {m.get('table', '?')}), {e['seconds']} s", ""]
    if r.get("rewrite"):
        w = r["rewrite"]
        lines += ["## Rotary rewrite", "", f"mode `{w['mode']}`: {w['rewritten']}/{w['expected']} rotary sites "
                  f"rewritten into {w['nodes']} nodes", ""]
        lines += [f"- skipped `{s['site']}`: {s['reason']}" for s in w.get("skipped", [])]
        lines += [""] if w.get("skipped") else []
    if r.get("artifacts"):
        lines += ["## Artifacts", ""] + [f"- {k}: `{v}`" for k, v in r["artifacts"].items()] + [""]
    cases = r.get("validation", [])
    if cases:
        lines += ["## Validation against PyTorch fp32", "",
                  "ONNX graphs run in ONNX Runtime (CPU); `engine-*` graphs are TensorRT engines.", "",
                  "| graph | precision | batch | seq | output | max abs | max rel | cosine | atol | pass |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for c in cases:
            for name, o in c["outputs"].items():
                if "error" in o:
                    lines.append(f"| {c['graph']} | {c['precision']} | {c['batch']} | {c['seq']} | {name} | "
                                 f"{o['error']} | | | | FAIL |")
                    continue
                lines.append(f"| {c['graph']} | {c['precision']} | {c['batch']} | {c['seq']} | {name} | "
                             f"{o['max_abs']:.2e} | {o['max_rel']:.2e} | {o['cosine']:.7f} | {o['atol']:.0e} | "
                             f"{'ok' if o['passed'] else 'FAIL'} |")
        lines.append("")
    if r.get("precision", {}).get("ops"):
        p = r["precision"]
        lines += [f"## Precision: {p['precision']}", "", f"from `{p['source']}`, {p['casts']} casts", "",
                  "| op | low | fp32 |", "|---|---|---|"]
        lines += [f"| {op} | {d.get('low', 0)} | {d.get('fp32', 0)} |" for op, d in p["ops"].items()] + [""]
    if r.get("profiles"):
        lines += ["## Optimization profiles", "", "| profile | batch min/opt/max | sequence min/opt/max |", "|---|---|---|"]
        lines += [f"| {p['index']} | {'/'.join(map(str, p['batch']))} | {'/'.join(map(str, p['sequence']))} |"
                  for p in r["profiles"]] + [""]
    if r.get("bench"):
        b = r["bench"]
        lines += ["## Benchmark", "", "| backend | device | batch | seq | p50 ms | p99 ms | note |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {x['backend']} | {x['device']} | {x['batch']} | {x['seq']} | "
                  + (f"{x['p50_ms']:.2f} | {x['p99_ms']:.2f} | |" if x.get("p50_ms") is not None else f" | | {x['skipped']} |")
                  for x in b["results"]]
        lines += ["", f"![benchmark]({b['files']['plot']})", ""]
    for key in ("plugin", "engine"):
        if r.get(key):
            lines += [f"## {key.title()}", "", "```", json.dumps(r[key], indent=2), "```", ""]
    return "\n".join(lines)

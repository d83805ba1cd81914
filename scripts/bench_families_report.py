"""The Markdown of scripts/bench_families.py's results: per family, the checks against HF, the timings and the
verdict, the node counts and (with --profile) where the kernels' time goes."""

from __future__ import annotations


def markdown(result: dict) -> str:
    lines = [f"# Rotary families on ONNX Runtime CPU: ours vs peers ({result['date']})", "",
             f"- machine: {result['machine']}; code: commit {result.get('commit')}", ""]  # fmt: skip
    for name, fam in result["families"].items():
        lines += _family_markdown(name, fam)
    return "\n".join(lines) + "\n"


def _family_markdown(name: str, fam: dict) -> list[str]:
    opt = fam["optimum"]
    lines = [
        f"## {name}",
        "",
        f"- model: {fam['model']}; {fam['config']}; attention {fam['attn_implementation']}",
        f"- rotary pass: {fam['rotary_sites']}; tables of {fam['max_len_of_tables']} rows; export + pass "
        f"{fam['export_and_rotary_pass_seconds']} s",
        f"- optimum: {opt.get('versions') or 'no peer: ' + opt['none']}",
        f"- load average (1, 5, 15 min) on {fam['load_average']['cpus']} CPUs: {fam['load_average']['before']} as "
        f"timing started, {fam['load_average']['after']} as it ended",
        "",
        "Checked against HF transformers (fp32, default fp32 thresholds, right-padded rows) before timing:",
        "",
        "| graph | shape | padded rows | passed | max abs | scaled error | min row cosine |",
        "|---|---|---|---|---|---|---|",
    ]
    for graph, cases in fam["checks"].items():
        lines += [f"| {graph} | {c['shape']} | {c['padded']} | {c['passed']} | {c['max_abs']:.3g} | "
                  f"{c['scaled_error']:.3g} | {c['row_cosine']:.12f} |" for c in cases]  # fmt: skip
    caveat = [g for g, cs in fam["checks"].items() if any(not c["passed"] for c in cs if c["padded"])
              and all(c["passed"] for c in cs if not c["padded"]) and g != "ours"]  # fmt: skip
    if caveat:
        lines += ["", f"Timed though failing with padded rows (they pass without padding; timing does not pad): "
                      f"{', '.join(caveat)}."]  # fmt: skip
    lines += ["", "| shape | graph | median ms | min | q1 | q3 | max |", "|---|---|---|---|---|---|---|"]
    for row in fam["timings"]:
        for graph, s in row["stats"].items():
            lines.append(f"| {row['shape']} | {graph} | {s['median_ms']:.1f} | {s['min_ms']:.1f} | {s['q1_ms']:.1f} | "
                         f"{s['q3_ms']:.1f} | {s['max_ms']:.1f} |")  # fmt: skip
    lines += [""]
    for row in fam["timings"]:
        if row["verdict"]:
            paired = ", ".join(f"{n} {r:.3f}" for n, r in row.get("paired_ratio_median", {}).items())
            lines.append(f"- {row['shape']}: ours / {row['faster_peer']} = {row['ours_vs_faster_peer']:.3f} "
                         f"({row['rounds']} interleaved rounds): **{row['verdict']}**"
                         + (f"; median of the per-round ratios ours / peer: {paired}" if paired else ""))  # fmt: skip
    ops = fam["ops"]
    kinds = sorted({k for c in ops.values() for k in c if len({c.get(k, 0) for c in ops.values()}) > 1})
    lines += ["", "Nodes per graph (total; op types whose counts differ):", ""]
    lines += [f"- {g}: {sum(c.values())} nodes; " + ", ".join(f"{k} {c.get(k, 0)}" for k in kinds)
              for g, c in ops.items()]  # fmt: skip
    for shape, per_graph in fam.get("profile", {}).items():
        shown = sorted({k for c in per_graph.values() for k in c} & {*kinds, "RotaryEmbedding"})
        lines += ["", f"ONNX Runtime's profiler at {shape}, ms per run in kernels (op types whose counts differ, and "
                      "RotaryEmbedding):", "", "| graph | all kernels | " + " | ".join(shown) + " |",
                  "|---" * (len(shown) + 2) + "|"]  # fmt: skip
        lines += [f"| {g} | {sum(c.values()):.1f} | " + " | ".join(f"{c.get(k, 0):.3f}" for k in shown) + " |"
                  for g, c in per_graph.items()]  # fmt: skip
    return [*lines, ""]

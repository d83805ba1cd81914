"""A Diagnosis for people and machines: JSON (Diagnosis.to_json), Markdown, and one PNG of error against depth.

Every file is written atomically; the PNG needs matplotlib (a dependency of the project), drawn with Agg.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from export.folder.atomic import write_atomic
from export.report.markdown import divergence_sentence


def render_markdown(d: dict) -> str:
    """d: Diagnosis.to_json()."""
    t = d["thresholds"]
    lines = [
        "# Where does it diverge?",
        "",
        f"Reference `{d['reference']}`, candidate `{d['candidate']}` ({d['precision']}), batch {d['batch']} x "
        f"sequence {d['seq']}, {d.get('padded_rows', 0)} padded row(s). Thresholds: scaled error <= "
        f"{t['rtol']:.3g}, per-row cosine >= {t['min_row_cosine']:.11g}, cosine >= {t['min_cosine']}.",
        "",
        divergence_sentence(d["first_divergence"]),
        "",
    ]
    if not d["complete"]:
        lines += [f"**Incomplete**: {d['reason']}.", ""]
    lines += [
        "| depth | layer | landmark | scaled error | row cosine | cosine | nodes | pass |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, p in enumerate(d["points"]):
        if "scaled_error" not in p:
            lines.append(f"| {i} | {_layer(p)} | {p['name']} | | | | | {p.get('note', '')} |")
            continue
        row = f"{p['row_cosine']:.9f}" if "row_cosine" in p else "n/a"
        nodes = ", ".join(f"`{n}`" for n in p.get("nodes", []))
        lines.append(
            f"| {i} | {_layer(p)} | {p['name']} | {p['scaled_error']:.2e} | {row} | {p['cosine']:.7f} | "
            f"{nodes} | {'ok' if p['passed'] else 'FAIL'} |"
        )
    lines.append("")
    if d["notes"]:
        lines += ["Notes:", ""] + [f"- {n}" for n in d["notes"]] + [""]
    c = d.get("cost") or {}
    lines.append(
        f"{c.get('runs_per_side')} run(s) of each side ({c.get('layers_per_group')} layer(s) per group after "
        f"the first), {d['seconds']} s."
    )
    return "\n".join(lines) + "\n"


def _layer(p: dict) -> str:
    return "" if p.get("layer") is None else str(p["layer"])


def render_png(d: dict) -> bytes:
    """Scaled error and 1 - per-row cosine of every landmark against depth, thresholds dashed, the first
    divergence marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [p for p in d["points"] if "scaled_error" in p]
    x = list(range(len(pts)))
    fig, (a, b) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    floor = 1e-12
    a.semilogy(x, [max(p["scaled_error"], floor) for p in pts], "o-", ms=3)
    a.axhline(d["thresholds"]["rtol"], ls="--", c="r", lw=1, label="rtol")
    a.set_ylabel("scaled error")
    rows = [(i, max(1 - p["row_cosine"], floor)) for i, p in enumerate(pts) if "row_cosine" in p]
    b.semilogy([i for i, _ in rows], [v for _, v in rows], "o-", ms=3, c="tab:green")
    b.axhline(max(1 - d["thresholds"]["min_row_cosine"], floor), ls="--", c="r", lw=1, label="1 - min_row_cosine")
    b.set_ylabel("1 - row cosine")
    first = d["first_divergence"]
    if first is not None:
        k = next(i for i, p in enumerate(pts) if p["name"] == first["point"] and p.get("layer") == first["layer"])
        for ax in (a, b):
            ax.axvline(k, c="k", lw=0.8)
    ticks = [i for i, p in enumerate(pts) if p["stage"] in ("embeddings", "layer_output", "head")]
    b.set_xticks(ticks, [_tick(pts[i]) for i in ticks], rotation=90, fontsize=7)
    for ax in (a, b):
        ax.legend(loc="upper left", fontsize=8)
        ax.grid(alpha=0.3)
    a.set_title(f"{Path(d['candidate']).name} vs {Path(d['reference']).name}: error against depth")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _tick(p: dict) -> str:
    if p["stage"] in ("embeddings", "head"):
        return "emb" if p["stage"] == "embeddings" else p["name"]
    return f"L{p['layer']}"


def write_outputs(d: dict, json_path=None, md_path=None, png_path=None) -> dict[str, str]:
    """Write the files asked for; returns {"json" | "md" | "png": path}."""
    written = {}
    for kind, path, data in (
        ("json", json_path, lambda: json.dumps(d, indent=2) + "\n"),
        ("md", md_path, lambda: render_markdown(d)),
        ("png", png_path, lambda: render_png(d)),
    ):
        if path is not None:
            write_atomic(Path(path), data())
            written[kind] = str(path)
    return written

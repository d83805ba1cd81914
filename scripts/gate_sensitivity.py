"""The accuracy gate's sensitivity and specificity, measured on the demo checkpoint and its outlier stress twin.

    python scripts/gate_sensitivity.py                     # demo size: about 25 min on 2 cores
    python scripts/gate_sensitivity.py --tiny              # the tiny checkpoints: about 5 min
    python scripts/gate_sensitivity.py --update-results    # regenerate scripts/results/gate_sensitivity/

For each checkpoint (written into --work by tests.fixtures.checkpoints.write_demo, plain and --outliers):
1. honest builds: `python -m export.build --precision fp16` and `--precision bf16` (each also holds the fp32
   graphs), judged by `python -m engines.gate` (false alarm = the gate fails an honest build);
2. defects (tests/fixtures/faults.py) written into the fp32 plain export at the first, middle and last layer,
   and LayerNorm in fp16 written into the fp16 graph, each validated as export.build validates and judged by the
   default gate's verdict (tests/fixtures/sensitivity.py; miss = the gate passes a defect), and located with
   python -m export.diagnose's API;
3. the worst honest statistics per precision and the defaults they imply (export/report/thresholds.py's rule).
Writes gate_sensitivity.{json,md,png} into --out (default build/scripts/gate_sensitivity/; --update-results:
scripts/results/gate_sensitivity/, the derivation export/report/README.md and thresholds.py cite) with the date and
the machine; checkpoints and builds go to --work (several GB at demo size).
"""

import json
import math
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from script_outputs import add_output_flags  # noqa: E402

from export.checkpoint.rebuild import load_checkpoint  # noqa: E402
from export.cli import entry as cli  # noqa: E402
from export.cli.entry import Parser  # noqa: E402
from export.errors import UsageError  # noqa: E402
from export.inputs.numbers import int_arg  # noqa: E402
from export.report.persist import read_report  # noqa: E402
from export.report.thresholds import DEFAULTS  # noqa: E402
from export.validate import Shape, TorchReference, make_inputs  # noqa: E402
from tests.fixtures.checkpoints import write_demo  # noqa: E402
from tests.fixtures.sensitivity import TINY_WITHOUT_OUTLIERS, WITHOUT_OUTLIERS, defects, honest  # noqa: E402


def run(argv: list[str]) -> int:
    print("+", " ".join(argv), flush=True)
    return subprocess.run(argv).returncode


def measure_checkpoint(name: str, ckpt: Path, work: Path, max_len: int, tiny: bool) -> dict:
    cells, builds = [], {}
    for precision in ("fp16", "bf16"):
        out = work / f"{name}-{precision}"
        t0 = time.perf_counter()
        code = run(
            [
                sys.executable,
                "-m",
                "export.build",
                "--model",
                str(ckpt),
                "--out",
                str(out),
                "--max-len",
                str(max_len),
                "--precision",
                precision,
                "--force",
            ]
        )
        gate = run([sys.executable, "-m", "engines.gate", str(out)])
        builds[precision] = {"build_exit": code, "gate_exit": gate, "seconds": round(time.perf_counter() - t0, 1)}
        seen = {c.graph for c in cells}  # the fp32 graphs are in both builds: counted once (the fp16 build's)
        cells += [c for c in honest(name, read_report(out), gate == 0) if c.graph not in seen]
    ck = load_checkpoint(ckpt, table_rows=max_len)
    n = ck.config.num_hidden_layers
    layers = sorted({0, n // 2, n - 1})
    outliers = name.endswith("stress")
    not_caught = None if outliers else (TINY_WITHOUT_OUTLIERS if tiny else WITHOUT_OUTLIERS)
    t0 = time.perf_counter()
    cells += defects(
        name, ck.model, ck.task, ck.config, work / f"{name}-fp16", max_len, layers, not_caught, locate=True
    )
    shape = Shape(1, max_len)
    out = TorchReference(ck.model, ck.task)(shape, make_inputs(shape, ck.facts.vocab_size, ck.facts.type_vocab_size))[
        "last_hidden_state"
    ]
    return {
        "cells": [c.to_dict() for c in cells],
        "builds": builds,
        "defect_seconds": round(time.perf_counter() - t0, 1),
        "activations": {
            "shape": f"B=1 S={max_len}",
            "max_abs": float(np.abs(out).max()),
            "median_abs": float(np.median(np.abs(out))),
        },
    }


def step_125(x: float) -> float:
    """The next value of the 1-2-5 series at or above x."""
    e = math.floor(math.log10(x))
    for m in (1, 2, 5, 10):
        if m * 10**e >= x * (1 - 1e-9):
            return m * 10**e
    return 10 ** (e + 1)


def derivation(cells: list[dict]) -> dict:
    """Worst honest statistics per precision, and the defaults export/report/thresholds.py's rule makes of them."""
    out = {}
    for precision in ("fp32", "fp16", "bf16"):
        hs = [c for c in cells if c["defect"] == "honest" and c["precision"] == precision]
        scaled = max(c["scaled_error"] for c in hs)
        loss = max(1 - c["row_cosine"] for c in hs)
        out[precision] = {
            "worst_scaled_error": scaled,
            "worst_1_minus_row_cosine": loss,
            "rule_rtol": step_125(2 * scaled),
            "rule_1_minus_min_row_cosine": step_125(4 * loss),
            "default_rtol": DEFAULTS[precision].rtol,
            "default_1_minus_min_row_cosine": 1 - DEFAULTS[precision].min_row_cosine,
        }
    return out


def machine() -> str:
    cpu = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        )
        if Path("/proc/cpuinfo").exists()
        else ""
    )
    import onnxruntime
    import torch

    return (
        f"{cpu}, {len(os.sched_getaffinity(0))} cores, torch {torch.__version__}, "
        f"onnxruntime {onnxruntime.__version__}, Python {platform.python_version()}"
    )


def _fmt_cell(c: dict) -> list[str]:
    verdict = "FAIL (caught)" if c["caught"] else "pass"
    expected = "caught" if c["expected"] else "pass"
    layer = "" if c["layer"] is None else str(c["layer"])
    located = c.get("located") or ""
    if c.get("located_ok") is False:
        located += " (wrong layer)"
    if c.get("located_seconds") is not None:
        located += f", {c['located_seconds']} s"
    return [
        c["checkpoint"],
        c["defect"],
        layer,
        c["graph"],
        f"{c['scaled_error']:.2e}",
        f"{c['row_cosine']:.9f}",
        verdict,
        expected,
        "yes" if c["ok"] else "**NO**",
        located,
    ]


def render_markdown(r: dict) -> str:
    lines = [
        "# Gate sensitivity and specificity",
        "",
        f"{r['date']}, {r['machine']}. `python scripts/gate_sensitivity.py` (max_len {r['max_len']}); every "
        "statistic is the worst over the build's validation shapes (batch 1 and 3, sequence 1, 61 and "
        f"{r['max_len']}, padded rows), ONNX Runtime CPU against PyTorch fp32, default thresholds "
        "(export/report/thresholds.py).",
        "",
    ]
    lines += ["| checkpoint | largest \\|output\\| | median \\|output\\| |", "|---|---|---|"]
    for name, c in r["checkpoints"].items():
        a = c["activations"]
        lines.append(f"| {name} | {a['max_abs']:.1f} | {a['median_abs']:.3f} |")
    head = [
        "checkpoint",
        "defect",
        "layer",
        "graph",
        "scaled error",
        "row cosine",
        "default gate",
        "expected",
        "as expected",
        "export.diagnose: first divergence",
    ]
    cells = [c for ck in r["checkpoints"].values() for c in ck["cells"]]
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_fmt_cell(c)) + " |" for c in cells]
    lines += ["", "Not caught, and why:", ""]
    for defect, note in sorted({(c["defect"], c["note"]) for c in cells if c["note"]}):
        where = sorted({c["checkpoint"] for c in cells if c["defect"] == defect and c["note"] == note})
        lines.append(f"- {defect} on {', '.join(where)}: {note}")
    lines += [
        "",
        "| precision | worst honest scaled error | worst honest 1 - row cosine | rule: rtol = 2 x worst, "
        "next 1-2-5 | default rtol | rule: 1 - min_row_cosine = 4 x worst | default |",
        "|---|---|---|---|---|---|---|",
    ]
    for precision, d in r["derivation"].items():
        lines.append(
            f"| {precision} | {d['worst_scaled_error']:.2e} | {d['worst_1_minus_row_cosine']:.2e} | "
            f"{d['rule_rtol']:.0e} | {d['default_rtol']:.0e} | {d['rule_1_minus_min_row_cosine']:.0e} | "
            f"{d['default_1_minus_min_row_cosine']:.0e} |"
        )
    lines += ["", f"Every cell as expected: **{r['all_ok']}**.", ""]
    for name, c in r["checkpoints"].items():
        b = ", ".join(
            f"{p}: build exit {v['build_exit']}, gate exit {v['gate_exit']}, {v['seconds']} s"
            for p, v in c["builds"].items()
        )
        lines.append(f"- {name}: {b}; defects {c['defect_seconds']} s.")
    return "\n".join(lines) + "\n"


def render_png(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, grid = plt.subplots(1, len(r["checkpoints"]), figsize=(13, 5), sharey=True, squeeze=False)
    axes = grid[0]  # one Axes per checkpoint, also when there is one
    for ax, (name, ck) in zip(axes, r["checkpoints"].items(), strict=True):
        cells = ck["cells"]
        labels = [
            f"{c['defect']}{'' if c['layer'] is None else ' L' + str(c['layer'])} [{c['precision']}]" for c in cells
        ]
        colors = [
            "tab:green" if c["defect"] == "honest" else ("tab:red" if c["caught"] else "tab:orange") for c in cells
        ]
        ax.scatter(range(len(cells)), [max(c["scaled_error"], 1e-9) for c in cells], c=colors, s=18)
        for precision, style in (("fp32", ":"), ("fp16", "--"), ("bf16", "-.")):
            ax.axhline(DEFAULTS[precision].rtol, ls=style, c="k", lw=0.8, label=f"rtol {precision}")
        ax.set_yscale("log")
        ax.set_xticks(range(len(cells)), labels, rotation=90, fontsize=6)
        ax.set_title(name)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("scaled error (worst case)")
    axes[0].legend(fontsize=7)
    fig.suptitle("honest (green) / caught (red) / passed (orange) against the default rtol")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_results(r: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gate_sensitivity.json").write_text(json.dumps(r, indent=2) + "\n")
    (out / "gate_sensitivity.md").write_text(render_markdown(r))
    render_png(r, out / "gate_sensitivity.png")


def build_parser() -> Parser:
    p = Parser(
        prog="scripts/gate_sensitivity.py",
        description=__doc__.split("\n\n")[0],
        epilog="example: python scripts/gate_sensitivity.py --tiny",
    )
    add_output_flags(p, "gate_sensitivity", "gate_sensitivity", work=True)
    p.add_argument("--tiny", action="store_true", help="tiny checkpoints (a quick run; the suite tests these)")
    p.add_argument("--max-len", type=int_arg(), help="default: 2048 (64 with --tiny)")
    p.add_argument("--render", action="store_true", help="only re-render --out's gate_sensitivity.json")
    return p


def main(argv: list[str] | None = None) -> int:
    return cli.run(build_parser(), _main, argv)


def _main(args) -> int:
    work, out = Path(args.work), Path(args.out)
    if args.render:
        if not (out / "gate_sensitivity.json").is_file():
            raise UsageError(f"--render: {out} holds no gate_sensitivity.json; run without --render first")
        write_results(json.loads((out / "gate_sensitivity.json").read_text()), out)
        return 0
    max_len = args.max_len or (64 if args.tiny else 2048)
    base = "tiny" if args.tiny else "demo"
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "max_len": max_len,
        "checkpoints": {},
    }
    for name in (base, f"{base}-stress"):
        ckpt = write_demo(work / name, tiny=args.tiny, outliers=name.endswith("stress"))
        result["checkpoints"][name] = measure_checkpoint(name, ckpt, work, max_len, args.tiny)
    cells = [c for r in result["checkpoints"].values() for c in r["cells"]]
    result["derivation"] = derivation(cells)
    result["all_ok"] = all(c["ok"] for c in cells)
    write_results(result, out)
    print(f"wrote {out}; every cell as expected: {result['all_ok']}")
    return 0 if result["all_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

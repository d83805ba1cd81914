"""CLI: python -m export.diagnose REF.onnx CAND.onnx | --build DIR [--graph KEY] [--model PATH]

Two graphs of one model (fp32 vs rewritten, vs fp16, vs quantized, vs a graph from another tool), or a build's
graph against the PyTorch model of its checkpoint (`--model` overrides the path report.json records; its sha256
must be the recorded one). Prints where the candidate first diverges; --json, --md and --png write the full
diagnosis. Exit 0: nothing diverges; 1: it diverges (the first divergence is printed); 2: bad input.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from export import cli
from export.checkpoint.rebuild import load_checkpoint
from export.cli import Parser
from export.cli_flags import add_build, add_thresholds, add_trust_pickle
from export.diagnose import diagnose, diagnose_model
from export.diagnose.divergence import DEFAULT_BUDGET
from export.diagnose.expose import structure_of
from export.diagnose.inputs import graph_feeds, graph_shape
from export.diagnose.render import write_outputs
from export.errors import EXIT_OK, EXIT_VERIFICATION, UsageError
from export.files import load_toml, require_regular_file
from export.folder.artifacts import artifact
from export.folder.digest import sha256_tree
from export.onnx_export import declared_max_len
from export.report.markdown import divergence_sentence
from export.report.persist import read_report
from export.report.schema import ONNX_KEY, key_precision
from export.report.thresholds import ThresholdError, Thresholds
from export.spec import DEFAULT_CHOICES
from export.validate import OnnxFile, Shape, make_inputs

EXAMPLE = (
    "examples: python -m export.diagnose build/ckpt/model.onnx build/ckpt/model.rope-plugin.fp16.onnx --png d.png; "
    "python -m export.diagnose --build build/ckpt --graph rope-plugin.fp16 --json d.json"
)


def build_parser() -> Parser:
    p = Parser(prog="python -m export.diagnose", description=__doc__.split("\n\n")[1], epilog=EXAMPLE)
    p.add_argument("graphs", nargs="*", metavar="REF.onnx CAND.onnx", help="reference and candidate graphs")
    add_build(p, required=False)  # its graph against PyTorch
    p.add_argument(
        "--graph",
        help="with --build: the artifact key to diagnose (default: the graph of the first "
        "failing validation case, else the last graph validated)",
    )
    p.add_argument("--model", help="with --build: the checkpoint, instead of the path report.json records")
    add_trust_pickle(p)
    p.add_argument("--batch", type=int, help="batch of the inputs (default: the failing case's, else 2)")
    p.add_argument("--seq", type=int, help="sequence length (default: the failing case's, else min(61, max_len))")
    p.add_argument(
        "--precision",
        help="the candidate's precision for its thresholds (default: read from its dtypes "
        "or, with --build, from the artifact key)",
    )
    add_thresholds(p)
    p.add_argument(
        "--budget-mib",
        type=int,
        default=DEFAULT_BUDGET >> 20,
        help="memory for exposed tensors per run; more layers per run above it",
    )
    p.add_argument("--time-cap", type=float, help="seconds after which no further layer group is started")
    p.add_argument("--json", help="write the diagnosis as JSON here")
    p.add_argument("--md", help="write it as Markdown here")
    p.add_argument("--png", help="write the plot of error against depth here")
    return p


def main(argv: list[str] | None = None) -> int:
    return cli.run(build_parser(), _main, argv, usage_errors=(ThresholdError,))


def _main(args) -> int:
    _check_flags(args)
    data = load_toml(args.thresholds, what="thresholds file") if args.thresholds else None
    thresholds = Thresholds.from_data(data, str(args.thresholds))
    deadline = time.monotonic() + args.time_cap if args.time_cap else None
    if args.build:
        d = _build_mode(args, thresholds, deadline)
    else:
        ref, cand = (require_regular_file(g, what="graph") for g in args.graphs)
        model = structure_of(cand)
        feeds = graph_feeds(model, graph_shape(model, args.batch or 2, args.seq or _default_seq(model)))
        d = diagnose(
            ref, cand, feeds, thresholds, args.precision, budget_bytes=args.budget_mib << 20, deadline=deadline
        )
    out = d.to_json()
    written = write_outputs(out, args.json, args.md, args.png)
    print(divergence_sentence(out["first_divergence"]))
    for kind, path in written.items():
        print(f"{kind}: {path}")
    if not d.complete:
        print(f"incomplete: {d.reason}")
    return EXIT_OK if out["first_divergence"] is None else EXIT_VERIFICATION


def _check_flags(args) -> None:
    if args.build and args.graphs:
        raise UsageError("pass either two graphs or --build DIR, not both")
    if not args.build and len(args.graphs) != 2:
        raise UsageError("pass two graphs (REF.onnx CAND.onnx) or --build DIR")
    if not args.build and (args.graph or args.model or args.trust_pickle):
        raise UsageError("--graph, --model and --trust-pickle go with --build DIR")
    if args.budget_mib < 1 or (args.time_cap is not None and args.time_cap <= 0):
        raise UsageError("--budget-mib and --time-cap must be positive")
    for flag in ("json", "md", "png"):
        path = getattr(args, flag)
        if path is not None and Path(path).is_dir():
            raise UsageError(f"--{flag} {path} is a folder; pass a file path")


def _default_seq(model) -> int:
    return min(61, declared_max_len(model) or 61)


def _build_mode(args, thresholds: Thresholds, deadline):
    build = Path(args.build)
    if not build.is_dir():
        raise UsageError(f"--build {build} is not a directory; pass the folder written by python -m export.build")
    report = read_report(build)
    key = args.graph or _default_key(report)
    if key is None or key_precision(key) is None or key not in report.artifacts or key.startswith("engine-"):
        graphs = sorted(k for k in report.artifacts if key_precision(k) and not k.startswith("engine-"))
        raise UsageError(
            f"--graph {key!r} is not an ONNX graph of {build}/report.json; use one of {graphs} (a "
            "TensorRT engine is diagnosed through the ONNX graph it was built from)"
        )
    graph = artifact(build, report, key)
    ck = _checkpoint(args, report, graph)
    shape = _case_shape(report, key, args, ck.config)
    feeds = make_inputs(shape, ck.config.vocab_size, ck.config.type_vocab_size)
    names = _name_reference(build, report, key)
    return diagnose_model(
        ck.model,
        ck.task,
        OnnxFile(graph, rotary_function=True),
        feeds,
        thresholds,
        args.precision or key_precision(key),
        key,
        names,
        args.budget_mib << 20,
        deadline,
    )


def _default_key(report) -> str | None:
    failing = [c["graph"] for c in report.validation if not c.get("passed") and not c["graph"].startswith("engine-")]
    onnx_cases = [c["graph"] for c in report.validation if not c["graph"].startswith("engine-")]
    return (failing or onnx_cases or [None])[0 if failing else -1]


def _checkpoint(args, report, graph: Path):
    """The report's checkpoint (or --model), refused unless its sha256 is the recorded one."""
    recorded = report.checkpoint or {}
    text = args.model or recorded.get("path") or ""
    path = Path(text)
    if not text or not path.exists():
        raise UsageError(f"checkpoint {text!r} not found; pass --model PATH (the checkpoint the build was made from)")
    want, got = recorded.get("sha256"), sha256_tree(path)
    if want and got != want:
        raise UsageError(
            f"checkpoint {path} has sha256 {got[:16]}..., report.json records {want[:16]}... (not the "
            "checkpoint of this build); pass --model with the checkpoint the build was made from"
        )
    source = recorded.get("config_source") or ""
    config = source.removeprefix("--config ") if source.startswith("--config ") else None
    rows = declared_max_len(structure_of(graph))
    return load_checkpoint(path, config, args.trust_pickle, table_rows=rows)


def _case_shape(report, key: str, args, config) -> Shape:
    """The smallest failing case of `key` (batch x seq), with --batch/--seq overriding."""
    failing = sorted(
        (c for c in report.validation if c["graph"] == key and not c.get("passed")),
        key=lambda c: (c["batch"] * c["seq"], c["seq"]),
    )
    if failing and args.batch is None and args.seq is None:
        c = failing[0]
        return Shape(c["batch"], c["seq"], c.get("padded_rows", 0), c.get("choices"))
    max_len = (report.export or {}).get("max_len") or 61
    batch, seq = args.batch or 2, args.seq or min(61, max_len)
    if seq > max_len or batch < 1 or seq < 1:
        raise UsageError(f"--batch {batch} --seq {seq}: need 1 <= seq <= max_len {max_len} and batch >= 1")
    return Shape(batch, seq, 1 if batch > 1 and seq > 1 else 0, recorded_choices(report))


def recorded_choices(report) -> int | None:
    """The choices a multiple-choice build fixed (its profiles record them, whatever --choices was); None for
    other heads."""
    if (report.model or {}).get("task") != "multiple-choice":
        return None
    rows = [r["choices"][0] for r in report.profiles or [] if isinstance(r, dict) and r.get("choices")]
    return rows[0] if rows else DEFAULT_CHOICES


def _name_reference(build: Path, report, key: str):
    """The plain export, when it is not the graph diagnosed and it passed validation: its tensor names let the
    search go down to the node."""
    cases = [c for c in report.validation if c["graph"] == ONNX_KEY]
    if key == ONNX_KEY or ONNX_KEY not in report.artifacts or not cases or not all(c.get("passed") for c in cases):
        return None
    return artifact(build, report, ONNX_KEY)


if __name__ == "__main__":
    sys.exit(main())

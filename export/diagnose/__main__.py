"""CLI: python -m export.diagnose REF.onnx CAND.onnx | --build DIR [--graph KEY] [--model PATH]

Two graphs of one model (fp32 vs rewritten, vs fp16, vs quantized, vs a graph from another tool), or a build's
graph against the PyTorch model of its checkpoint (`--model` overrides the path report.json records; its sha256
must be the recorded one). Prints where the candidate first diverges; --json, --md and --png write the full
diagnosis. Exit 0: nothing diverges; 1: it diverges (the first divergence is printed); 2: bad input.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from export.checkpoint.rebuild import load_checkpoint
from export.cli import entry as cli
from export.cli.entry import Parser
from export.cli.flags import add_build, add_thresholds, add_trust_pickle
from export.diagnose import diagnose, diagnose_model
from export.diagnose.divergence import DEFAULT_BUDGET
from export.diagnose.inputs import check_feeds, check_tokens, graph_feeds, graph_shape, takes_types, vocab_sizes
from export.diagnose.render import write_outputs
from export.errors import EXIT_OK, EXIT_VERIFICATION, UsageError
from export.folder.artifacts import artifact
from export.folder.digest import sha256_tree
from export.folder.layout import MANIFEST
from export.inputs.files import check_distinct, check_output_file, load_toml
from export.inputs.graph_file import GraphFile, read_graph
from export.inputs.numbers import check_int, float_arg, int_arg
from export.onnx_export import declared_max_len
from export.report.markdown import divergence_sentence
from export.report.persist import read_report
from export.report.schema import ONNX_KEY, REPORT_JSON, REPORT_MD, Report, key_precision
from export.report.thresholds import ThresholdError, Thresholds
from export.spec import DEFAULT_CHOICES
from export.validate import OnnxFile, Shape, make_inputs

EXAMPLE = (
    "examples: python -m export.diagnose build/ckpt/model.onnx build/ckpt/model.rope-plugin.fp16.onnx --png d.png; "
    "python -m export.diagnose --build build/ckpt --graph rope-plugin.fp16 --json d.json"
)
MAX_BATCH = 256  # rows per run: validation's cases have 1 or 3; more rows only cost memory
MAX_SEQ = 1 << 20  # the graph's declared max_len bounds it further
MAX_TIME_CAP = 7 * 24 * 3600.0  # a week
MAX_BUDGET_MIB = 1 << 20  # a TiB of exposed tensors per run
OUTPUTS = ("json", "md", "png")


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
    p.add_argument(
        "--batch",
        type=int_arg(1, MAX_BATCH),
        help=f"batch of the inputs, 1 to {MAX_BATCH} (default: the failing case's, else 2)",
    )
    p.add_argument(
        "--seq",
        type=int_arg(1, MAX_SEQ),
        help="sequence length, at most the graph's max_len (default: the failing case's, else min(61, max_len))",
    )
    p.add_argument(
        "--precision",
        help="the candidate's precision for its thresholds (default: read from its dtypes "
        "or, with --build, from the artifact key)",
    )
    add_thresholds(p)
    p.add_argument(
        "--budget-mib",
        type=int_arg(1, MAX_BUDGET_MIB),
        default=DEFAULT_BUDGET >> 20,
        help="memory for exposed tensors per run; more layers per run above it",
    )
    p.add_argument(
        "--time-cap",
        type=float_arg(0.0, MAX_TIME_CAP, lo_open=True),
        help="seconds after which no further layer group is started",
    )
    p.add_argument("--json", help="write the diagnosis as JSON here")
    p.add_argument("--md", help="write it as Markdown here")
    p.add_argument("--png", help="write the plot of error against depth here")
    return p


def main(argv: list[str] | None = None) -> int:
    return cli.run(build_parser(), _main, argv, usage_errors=(ThresholdError,))


def _main(args) -> int:
    """Flags, then every input read and checked, then the output paths, then the work."""
    _check_flags(args)
    run = _build_inputs(args) if args.build else _graph_inputs(args)
    _check_outputs(args, run.inputs + ([Path(args.thresholds)] if args.thresholds else []))
    data = load_toml(args.thresholds, what="thresholds file") if args.thresholds else None
    thresholds = Thresholds.from_data(data, str(args.thresholds))
    deadline = time.monotonic() + args.time_cap if args.time_cap else None
    d = run.diagnose(args, thresholds, deadline)
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
    check_distinct({f"--{k}": getattr(args, k) for k in OUTPUTS})


def _check_outputs(args, inputs: list[Path]) -> None:
    """Every output path before any work: a writable file that is none of the run's inputs."""
    for flag in OUTPUTS:
        if getattr(args, flag) is not None:
            check_output_file(getattr(args, flag), flag=f"--{flag}", inputs=inputs)


@dataclass
class GraphPair:
    """Two graphs, read and checked, with the feeds both take."""

    ref: GraphFile
    cand: GraphFile
    feeds: dict
    inputs: list[Path]

    def diagnose(self, args, thresholds: Thresholds, deadline):
        return diagnose(
            self.ref,
            self.cand,
            self.feeds,
            thresholds,
            args.precision,
            budget_bytes=args.budget_mib << 20,
            deadline=deadline,
        )


def _graph_inputs(args) -> GraphPair:
    ref, cand = (read_graph(g, what="graph") for g in args.graphs)
    shape = graph_shape(cand.model, args.batch or 2, args.seq or _default_seq(cand.model))
    vocab, types = vocab_sizes([cand.model, ref.model])
    if vocab is None:
        vocab, types = _vocab_from_report(cand)
    feeds = graph_feeds(shape, vocab, types, takes_types([cand.model, ref.model]))
    for g in (ref, cand):
        check_feeds(g.model, feeds, f"graph {g.path}")
    files = [g.path for g in (ref, cand)] + [g.path.parent / f for g in (ref, cand) for f in g.data_files]
    records = [g.path.parent / n for g in (ref, cand) for n in (REPORT_JSON, REPORT_MD, MANIFEST)]
    return GraphPair(ref, cand, feeds, files + records)  # a build's records beside a graph are never written over


def _vocab_from_report(graph: GraphFile) -> tuple[int, int | None]:
    """The vocab sizes report.json records for the build `graph` belongs to (a fused graph, such as the INT8 CPU
    twin, reads its ids through ops that need not show a table's rows), the graph checked to be the report's."""
    folder = graph.path.parent
    fix = f"pass --build {folder} (its report records the vocab size) or a graph that gathers from its tables"
    if not (folder / REPORT_JSON).is_file():
        raise UsageError(f"cannot read the vocab size from graph {graph.path} and no {REPORT_JSON} is beside it; {fix}")
    report = read_report(folder)
    key = next((k for k, rel in report.artifacts.items() if Path(rel) == Path(graph.path.name)), None)
    if key is None:
        raise UsageError(
            f"cannot read the vocab size from graph {graph.path}, and {folder}/{REPORT_JSON} lists no such graph; {fix}"
        )
    artifact(folder, report, key)  # the graph and its data files are the ones the report hashed
    model = report.model or {}
    where = f"{folder}/{REPORT_JSON} model"
    return (
        check_int(model.get("vocab_size"), what=f"{where}.vocab_size", lo=1, hi=2**31 - 1),
        None  # a family without token_type_ids records null
        if model.get("type_vocab_size") is None and "token_type_ids" not in model.get("inputs", ["token_type_ids"])
        else check_int(model.get("type_vocab_size"), what=f"{where}.type_vocab_size", lo=1, hi=2**31 - 1),
    )


def _default_seq(model) -> int:
    return min(61, declared_max_len(model) or 61)


@dataclass
class BuildRun:
    """A build's graph against the PyTorch model of its checkpoint, every file checked before the model loads."""

    build: Path
    report: Report
    key: str
    graph: Path
    checkpoint: Path
    inputs: list[Path]

    def diagnose(self, args, thresholds: Thresholds, deadline):
        ck = _load_checkpoint(args, self.report, self.checkpoint, self.graph)
        shape = _case_shape(self.report, self.key, args)
        feeds = make_inputs(shape, ck.facts.vocab_size, ck.facts.type_vocab_size)
        check_feeds(read_graph(self.graph).model, feeds, f"graph {self.graph}")
        return diagnose_model(
            ck.model,
            ck.task,
            OnnxFile(self.graph, rotary_function=True),
            feeds,
            thresholds,
            args.precision or key_precision(self.key),
            self.key,
            _name_reference(self.build, self.report, self.key),
            args.budget_mib << 20,
            deadline,
        )


def _build_inputs(args) -> BuildRun:
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
    graph = artifact(build, report, key)  # export.inputs.graph_file's checks, and the recorded sha256
    assert graph is not None, key  # a key of report.artifacts, checked above
    checkpoint = _checkpoint_path(args, report)
    _case_shape(report, key, args)  # --batch / --seq against the build's max_len, before the model loads
    inputs = [build / n for n in (REPORT_JSON, REPORT_MD, MANIFEST, *report.artifacts_sha256)]
    held = [p for p in checkpoint.iterdir() if p.is_file()] if checkpoint.is_dir() else [checkpoint]
    return BuildRun(build, report, key, graph, checkpoint, inputs + held)


def _default_key(report) -> str | None:
    failing = [c["graph"] for c in report.validation if not c.get("passed") and not c["graph"].startswith("engine-")]
    onnx_cases = [c["graph"] for c in report.validation if not c["graph"].startswith("engine-")]
    return (failing or onnx_cases or [None])[0 if failing else -1]


def _checkpoint_path(args, report) -> Path:
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
    return path


def _load_checkpoint(args, report, path: Path, graph: Path):
    source = (report.checkpoint or {}).get("config_source") or ""
    config = source.removeprefix("--config ") if source.startswith("--config ") else None
    rows = declared_max_len(read_graph(graph).model)
    return load_checkpoint(path, config, args.trust_pickle, table_rows=rows)


def _case_shape(report, key: str, args) -> Shape:
    """The smallest failing case of `key` (batch x seq), with --batch/--seq overriding; every number, the
    report's too, bounded (--seq by the build's max_len)."""
    where = f"report.json case of {key}"
    failing = sorted(
        (c for c in report.validation if c["graph"] == key and not c.get("passed")),
        key=lambda c: (c["batch"] * c["seq"], c["seq"]),
    )
    max_len = check_int((report.export or {}).get("max_len") or 61, what="report.json export.max_len", lo=1, hi=MAX_SEQ)
    if failing and args.batch is None and args.seq is None:
        c = failing[0]
        return Shape(
            check_int(c["batch"], what=f"{where} batch", lo=1, hi=MAX_BATCH),
            check_int(c["seq"], what=f"{where} seq", lo=1, hi=max_len),
            check_int(c.get("padded_rows", 0), what=f"{where} padded_rows", lo=0, hi=c["batch"]),
            c.get("choices") and check_int(c["choices"], what=f"{where} choices", lo=1, hi=64),
        )
    batch, seq = args.batch or 2, args.seq or min(61, max_len)
    if seq > max_len:
        raise UsageError(f"--seq {seq} is longer than the build's max_len {max_len}; pass --seq {max_len} or less")
    check_tokens(batch, seq)
    return Shape(batch, seq, 1 if batch > 1 and seq > 1 else 0, recorded_choices(report))


def recorded_choices(report) -> int | None:
    """The choices a multiple-choice build fixed (its profiles record them, whatever --choices was); None for
    other heads."""
    if (report.model or {}).get("task") != "multiple-choice":
        return None
    rows = [r["choices"] for r in report.profiles or [] if isinstance(r, dict) and isinstance(r.get("choices"), list)]
    if not rows or not rows[0]:
        return DEFAULT_CHOICES
    return check_int(rows[0][0], what="report.json profiles choices", lo=1, hi=64)


def _name_reference(build: Path, report, key: str):
    """The plain export, when it is not the graph diagnosed and it passed validation: its tensor names let the
    search go down to the node."""
    cases = [c for c in report.validation if c["graph"] == ONNX_KEY]
    if key == ONNX_KEY or ONNX_KEY not in report.artifacts or not cases or not all(c.get("passed") for c in cases):
        return None
    return artifact(build, report, ONNX_KEY)


if __name__ == "__main__":
    sys.exit(main())

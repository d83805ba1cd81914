"""ORT CPU time of our `--rope onnx` graph against its peers, per model family, in one ONNX Runtime process:

- ours: the project's own pipeline, export.build's export and rotary stages (`--rope onnx`: torch's dynamo export
  at opset 23, then constant tables read through position ids);
- raw+expand: that same plain export with each RotaryEmbedding's batch-1 cos/sin expanded to x's batch, the
  cheapest correct fix of the raw graph (which ORT refuses at batch > 1); a graph without such nodes (RoFormer's
  decomposed rotary) runs as exported;
- optimum: HF Optimum's export (optimum-onnx, `feature-extraction`) where its exporter takes the family's
  model_type, made in its own venv (it pins transformers < 4.58); otherwise the results say why there is none.

    python scripts/bench_families.py --family esm --optimum-python /work/venv-optimum/bin/python --shapes 8x128
    python scripts/bench_families.py --family all --tiny        # a smoke run of every family

The model is each family's demo checkpoint, the one `make_demo_checkpoint.py --family NAME` writes (`--tiny`: its
tiny one), written once into --work and read back by the project's loader (export.checkpoint); `--checkpoint` takes
a folder or file of one family instead. Every graph is checked against HF transformers (fp32, the project's
default fp32 thresholds, right-padded rows) before it is timed; a graph that fails is reported and not timed.
Rounds are interleaved (one run of each graph per round, the order rotated); the result is the median with min,
quartiles and max. Verdict per shape: ours is "faster" when its median is at most the faster peer's, "within
spread" when it is at most that peer's upper quartile, else "slower". Writes bench_families_<families>_<date>.json
and .md to --out (default build/scripts/bench_families/; --update-results: scripts/results/families/); checkpoints
and graphs go to --work (default build/scripts/bench_families/work/; each run's graphs are removed after it unless
--keep-graphs).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import make_demo_checkpoint  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from bench_families_report import markdown  # noqa: E402
from script_outputs import add_output_flags  # noqa: E402

from export.families.registry import by_name, names  # noqa: E402
from export.inputs.numbers import int_arg  # noqa: E402

OPSET = 23
CONTROL = "ours (2nd session)"  # --control: a second session of our graph, timed like a peer, never one
OPTIMUM_CHECK = """
import json, sys
import optimum.exporters.onnx.model_configs  # fills the exporter's registry
from optimum.exporters.tasks import TasksManager
from transformers import CONFIG_MAPPING
mt = json.load(open(sys.argv[1]))["model_type"]
try:
    TasksManager.get_supported_tasks_for_model_type(mt.replace("_", "-"), exporter="onnx", library_name="transformers")
except KeyError:
    sys.exit(f"optimum-onnx's ONNX exporter has no config for model_type {mt!r}")
if mt not in CONFIG_MAPPING:
    sys.exit(f"transformers in Optimum's venv has no model_type {mt!r}")
"""
VERSIONS = (
    "import importlib.metadata as m; print(*(f'{p} {m.version(p)}' for p in "
    "('optimum-onnx', 'optimum', 'transformers', 'torch')), sep=', ')"
)


def log(msg: str) -> None:
    print(f"[bench_families] {msg}", file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scripts/bench_families.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--family", action="append", choices=(*names(), "all"), help="repeatable; all: every family "
                   "of export/families/ (default: modernbert)")  # fmt: skip
    p.add_argument("--checkpoint", help="a checkpoint of the one --family (default: the family's demo checkpoint)")
    p.add_argument("--tiny", action="store_true", help="each family's tiny config (a smoke run)")
    p.add_argument("--optimum-python", help="python of a venv with optimum-onnx (omitted: no optimum peer)")
    p.add_argument("--shapes", default="8x128,1x512", help="batch x sequence, comma-separated")
    p.add_argument("--rounds", type=int_arg(lo=9), default=9, help="interleaved rounds per shape (>= 9)")
    p.add_argument("--control", action="store_true", help=f"also time {CONTROL!r}: the noise of this machine")
    p.add_argument("--keep-graphs", action="store_true", help="keep each run's graphs in --work")
    p.add_argument("--profile", type=int_arg(lo=0), default=0, metavar="RUNS",
                   help="after timing, RUNS profiled runs of each graph per shape (ONNX Runtime's profiler): "
                        "milliseconds per run by op type")  # fmt: skip
    add_output_flags(p, "bench_families", "families", work=True)
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    families = sorted(names()) if "all" in (args.family or []) else list(dict.fromkeys(args.family or ["modernbert"]))
    if args.checkpoint and len(families) != 1:
        p.error("--checkpoint takes one --family")
    try:
        shapes = [(int(b), int(s)) for b, s in (x.split("x") for x in args.shapes.split(","))]
    except ValueError:
        p.error(f"--shapes {args.shapes!r}: pass BxS pairs, e.g. 8x128,1x512")
    from export.stages.bench import host_description

    date = time.strftime("%Y-%m-%d")
    result = {"date": date, "machine": host_description(), "commit": _commit(), "families": {}}
    for name in families:
        result["families"][name] = run_family(name, args, shapes, Path(args.work) / name)
        gc.collect()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    label = "all" if "all" in (args.family or []) else "+".join(families)
    stem = free_stem(out, f"bench_families_{label}_{date}{'_tiny' if args.tiny else ''}")
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    md = markdown(result)
    (out / f"{stem}.md").write_text(md)
    print(md)
    return 0


def _commit() -> str | None:
    """The checkout's commit (with "+changes" when the tree differs from it): which code made the figures."""
    git = ["git", "-C", str(Path(__file__).resolve().parent)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
    return head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "") if head.returncode == 0 else None


def free_stem(out: Path, base: str) -> str:
    """`base`, or `base_2`, `base_3`... when an earlier run wrote that one: a second run keeps the first's files."""
    stem, n = base, 1
    while any((out / f"{stem}{ext}").exists() for ext in (".json", ".md")):
        n += 1
        stem = f"{base}_{n}"
    return stem


def run_family(name: str, args, shapes: list[tuple[int, int]], work: Path) -> dict:
    from export.checkpoint.rebuild import inspect_checkpoint, materialize
    from export.validate import ort_session

    work.mkdir(parents=True, exist_ok=True)
    path = Path(args.checkpoint) if args.checkpoint else demo_checkpoint(name, args.tiny, work)
    family = by_name(name)
    max_len = max(s for _, s in shapes)
    inspected = inspect_checkpoint(path, adapter_task="none" if family.adapters is not None else None)
    if inspected.family.name != name:
        raise SystemExit(f"{path} is a {inspected.family.name} checkpoint, not {name}")
    ckpt = materialize(inspected, table_rows=max_len)
    graphs_dir = Path(tempfile.mkdtemp(prefix="graphs-", dir=work))
    try:
        t0 = time.perf_counter()
        graphs, rewrite = export_ours_and_expanded(ckpt, graphs_dir, max_len)
        export_s = time.perf_counter() - t0
        optimum = optimum_peer(args.optimum_python, path, ckpt, work, graphs_dir)
        if "graph" in optimum:
            graphs["optimum"] = Path(optimum.pop("graph"))
        ops = {n: op_counts(g) for n, g in graphs.items()}
        checks, sessions = check_against_hf(ckpt.model, family.inputs, graphs, shapes, name)
        if args.control and "ours" in sessions:  # an A/A pair: how far two sessions of one graph differ here
            sessions[CONTROL] = ort_session(graphs["ours"])
        load = {"cpus": os.cpu_count(), "before": [round(x, 2) for x in os.getloadavg()]}  # 1, 5, 15 min
        timings = time_graphs(sessions, shapes, args.rounds, family.inputs, ckpt.facts.vocab_size, name)
        load["after"] = [round(x, 2) for x in os.getloadavg()]  # other jobs share the machine: say how loaded
        del sessions
        profile = profile_graphs(graphs, shapes, args.profile, family.inputs, ckpt.facts.vocab_size, graphs_dir)
    finally:
        if not args.keep_graphs:
            shutil.rmtree(graphs_dir, ignore_errors=True)
    return {
        "model": str(path)
        if args.checkpoint
        else f"random-init demo{' (tiny)' if args.tiny else ''} checkpoint of make_demo_checkpoint.py --family {name}",
        "config": {k: v for k, v in vars(ckpt.facts).items() if isinstance(v, (int, float, str))},
        "attn_implementation": inspected.attn_implementation,
        "max_len_of_tables": max_len,
        "rotary_sites": {k: rewrite.get(k) for k in ("expected", "rewritten", "nodes", "caches_expanded")},
        "export_and_rotary_pass_seconds": round(export_s, 1),
        "optimum": optimum,
        "load_average": load,
        "ops": ops,
        "checks": checks,
        "timings": timings,
        "profile": profile,
    }


def demo_checkpoint(name: str, tiny: bool, work: Path) -> Path:
    """The family's demo (or tiny) checkpoint as make_demo_checkpoint.py writes it, once per --work folder."""
    folder = work / ("ckpt-tiny" if tiny else "ckpt")
    done = folder / ".path"  # written last: a folder without it is an interrupted write, rewritten
    if done.is_file():
        log(f"{name}: reusing {folder}")
        return Path(done.read_text())
    shutil.rmtree(folder, ignore_errors=True)
    log(f"{name}: writing the {'tiny' if tiny else 'demo'} checkpoint to {folder}")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        make_demo_checkpoint.main(["--family", name, "--out", str(folder), *(["--tiny"] if tiny else [])])
    path = buf.getvalue().strip().splitlines()[-1]
    done.write_text(path)
    return Path(path)


def export_ours_and_expanded(ckpt, work: Path, max_len: int) -> tuple[dict[str, Path], dict]:
    """The build's export and rotary stages (`--rope onnx`) into `work`, and the plain export with its caches
    expanded beside them (sharing model.onnx.data)."""
    import onnx

    from export.folder.layout import ONNX_FILE
    from export.onnx_io import write_model
    from export.stages.onnx import run_export_stage
    from export.stages.rope import run_rope_stage

    log(f"export (dynamo, opset {OPSET}) and rotary pass (--rope onnx), tables of {max_len} rows")
    export = run_export_stage(ckpt.model, ckpt.task, work, max_len, "dynamo", OPSET)
    rope = run_rope_stage("onnx", ckpt, work, max_len)
    if rope.failure:
        raise SystemExit(f"rotary pass: {rope.failure}")
    raw = onnx.load(str(work / ONNX_FILE), load_external_data=False)
    expanded, by_script = expand_caches(raw)
    write_model(expanded, work / "raw_expand.onnx", check=True)
    ours = work / next(iter(rope.artifacts.values()))
    caches = {"by_the_export": export.section.get("rotary_caches_expanded", 0), "by_this_script": by_script}
    return {"ours": ours, "raw+expand": work / "raw_expand.onnx"}, dict(rope.section) | {"caches_expanded": caches}


def expand_caches(model):
    """Each RotaryEmbedding(x, cos [1, S, R/2], sin) of the raw export reads Expand(cos, [B, S, R/2]) instead:
    valid at any batch, everything else as exported. Caches whose leading dim is not a static 1 (an export that
    expanded them itself) are left as they are. Returns the graph and how many nodes this expanded."""
    import onnx
    import onnx_graphsurgeon as gs

    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True).graph
    lead = {v.name: v.type.tensor_type.shape.dim[:1] for v in (*inferred.value_info, *inferred.input)}
    graph = gs.import_onnx(model)
    idx = {k: gs.Constant(f"bench_i{k}", np.array([k], np.int64)) for k in (0, 1, 2)}
    batch_one = [n for n in graph.nodes if n.op == "RotaryEmbedding" and len(n.inputs) == 3
                 and all(d.HasField("dim_value") and d.dim_value == 1 for d in lead.get(n.inputs[1].name, []))
                 and lead.get(n.inputs[1].name)]  # fmt: skip
    for i, node in enumerate(batch_one):
        x_shape = graph.layer(op="Shape", inputs=[node.inputs[0]], outputs=[f"bench_xs{i}"])[0]
        b = graph.layer(op="Gather", inputs=[x_shape, idx[0]], outputs=[f"bench_b{i}"], attrs={"axis": 0})[0]
        for k in (1, 2):
            c_shape = graph.layer(op="Shape", inputs=[node.inputs[k]], outputs=[f"bench_cs{i}_{k}"])[0]
            rest = graph.layer(op="Slice", inputs=[c_shape, idx[1], gs.Constant(f"bench_end{i}_{k}", np.array([3]))],
                               outputs=[f"bench_rest{i}_{k}"])[0]  # fmt: skip
            shape = graph.layer(op="Concat", inputs=[b, rest], outputs=[f"bench_shape{i}_{k}"], attrs={"axis": 0})[0]
            node.inputs[k] = graph.layer(op="Expand", inputs=[node.inputs[k], shape], outputs=[f"bench_exp{i}_{k}"])[0]
    graph.toposort()
    out = gs.export_onnx(graph, do_type_check=False)
    out.ir_version = model.ir_version
    del out.opset_import[:]
    out.opset_import.extend(model.opset_import)
    return onnx.shape_inference.infer_shapes(out), len(batch_one)


def optimum_peer(python: str | None, path: Path, ckpt, work: Path, graphs: Path) -> dict:
    """Optimum's export of the checkpoint in its own venv, or why there is none: {"graph", "versions"} or
    {"none": reason}. Optimum reads HF folders: a checkpoint of another format is saved as one first."""
    if not python:
        return {"none": "not run (no --optimum-python)"}
    folder = path if (path / "config.json").is_file() else graphs / "hf"
    if folder != path:
        ckpt.model.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    if "auto_map" in config:
        return {"none": "the checkpoint's config names remote code (auto_map), which Optimum's export would run"}
    check = subprocess.run([python, "-c", OPTIMUM_CHECK, str(folder / "config.json")], capture_output=True, text=True)
    if check.returncode:
        return {"none": (check.stderr.strip().splitlines() or ["optimum check failed"])[-1]}
    log(f"optimum export with {python}")
    out = graphs / "optimum"
    cmd = [python, "-m", "optimum.exporters.onnx", "--model", str(folder), "--task", "feature-extraction", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"optimum export failed ({done.returncode}): {done.stderr[-2000:]}")
    versions = subprocess.run([python, "-c", VERSIONS], capture_output=True, text=True, check=True).stdout.strip()
    return {"graph": str(out / "model.onnx"), "versions": versions}


def op_counts(path: Path) -> dict[str, int]:
    """Node count per op type of the graph's top level (what to compare when one graph is slower)."""
    import onnx

    return dict(sorted(Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node).items()))


def feeds(batch: int, seq: int, inputs, vocab: int, pad: bool) -> dict[str, np.ndarray]:
    """Random ids, attention_mask, any other input zeros; with pad, row r > 0 is right-padded to seq - 13 r
    tokens (at least 1)."""
    rng = np.random.default_rng(batch * 1000 + seq)
    ids = rng.integers(5, vocab, (batch, seq)).astype(np.int64) if vocab > 5 else np.zeros((batch, seq), np.int64)
    mask = np.ones_like(ids)
    if pad:
        for r in range(1, batch):
            n = max(1, seq - 13 * r)
            mask[r, n:], ids[r, n:] = 0, 0
    return {n: {"input_ids": ids, "attention_mask": mask}.get(n, np.zeros_like(ids)) for n in inputs}


def _session_feeds(sess, f: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The feeds a graph declares (Optimum's may add token_type_ids: zeros)."""
    zeros = np.zeros_like(f["input_ids"])
    return {i.name: f.get(i.name, zeros) for i in sess.get_inputs()}


def check_against_hf(model, inputs, graphs: dict[str, Path], shapes, name: str) -> tuple[dict, dict]:
    """Each graph against HF fp32 at each shape (right padding), with the project's default fp32 thresholds.
    A peer that fails there is checked again without padding and timed if it passes so (its results say so:
    timing does not pad); ours must pass with padding. Returns the checks and the ORT sessions to time."""
    from export.validate import ort_session

    checks, sessions = {}, {}
    for graph, path in graphs.items():
        sess = ort_session(path)
        cases = _graded(model, inputs, sess, graph, shapes, pad=True)
        if not all(c["passed"] for c in cases) and graph != "ours":
            cases += _graded(model, inputs, sess, graph, shapes, pad=False)
        checks[graph] = cases
        padded = all(c["passed"] for c in cases if c["padded"])
        log(f"{name} {graph}: {'passes' if padded else 'FAILS'} the fp32 check against HF with padded rows")
        if all(c["passed"] for c in cases if not c["padded"]) and (padded or graph != "ours"):
            sessions[graph] = sess
    return checks, sessions


def _graded(model, inputs, sess, graph: str, shapes, pad: bool) -> list[dict]:
    from export.report.thresholds import Thresholds
    from export.validate import Shape, grade

    cases = []
    for batch, seq in shapes:
        f = feeds(batch, seq, inputs, model.config.vocab_size, pad=pad)
        with torch.no_grad():
            ref = model(**{k: torch.from_numpy(v) for k, v in f.items()}, return_dict=True)["last_hidden_state"]
        got = sess.run(["last_hidden_state"], _session_feeds(sess, f))[0]
        case = grade(f"bench-{graph}", "fp32", Shape(batch, seq, batch - 1 if pad else 0),
                     {"last_hidden_state": got}, {"last_hidden_state": ref.numpy()}, Thresholds.defaults(),
                     inputs=f)  # fmt: skip
        out = case["outputs"]["last_hidden_state"]
        cases.append({"shape": f"{batch}x{seq}", "padded": pad and batch > 1, "passed": case["passed"]} | {
            k: out.get(k) for k in ("max_abs", "scaled_error", "cosine", "row_cosine")})  # fmt: skip
    return cases


def time_graphs(sessions: dict, shapes, rounds: int, inputs, vocab: int, family: str) -> list[dict]:
    rows = []
    for batch, seq in shapes:
        f = feeds(batch, seq, inputs, vocab, pad=False)
        names_ = list(sessions)
        per = {n: _session_feeds(sessions[n], f) for n in names_}
        for n in names_:
            sessions[n].run(None, per[n])  # warm-up, excluded
        times: dict[str, list[float]] = {n: [] for n in names_}
        for r in range(rounds):
            for n in names_[r % len(names_) :] + names_[: r % len(names_)]:  # rotate: no graph always first
                t = time.perf_counter()
                sessions[n].run(None, per[n])
                times[n].append(time.perf_counter() - t)
            log(f"{family} {batch}x{seq} round {r + 1}/{rounds}")
        row = verdict(f"{batch}x{seq}", rounds, {n: _stats(ts) for n, ts in times.items()})
        if "ours" in times:  # ours / peer within each round (the same load), its median: for reading noise only
            row["paired_ratio_median"] = {
                n: statistics.median(a / b for a, b in zip(times["ours"], ts, strict=True))
                for n, ts in times.items()
                if n != "ours"
            }
        rows.append(row | {"runs_ms": {n: [round(t * 1e3, 1) for t in ts] for n, ts in times.items()}})  # by round
    return rows


def verdict(shape: str, rounds: int, stats: dict) -> dict:
    peers = [n for n in stats if n not in ("ours", CONTROL)]
    faster = min(peers, key=lambda n: stats[n]["median_ms"]) if peers else None
    word = ratio = None
    if faster is not None and "ours" in stats:
        ours, peer = stats["ours"]["median_ms"], stats[faster]
        word = "faster" if ours <= peer["median_ms"] else "within spread" if ours <= peer["q3_ms"] else "slower"
        ratio = ours / peer["median_ms"]
    return {"shape": shape, "rounds": rounds, "stats": stats, "faster_peer": faster, "ours_vs_faster_peer": ratio,
            "verdict": word}  # fmt: skip


def profile_graphs(graphs: dict[str, Path], shapes, runs: int, inputs, vocab: int, work: Path) -> dict:
    """ONNX Runtime's profiler on every graph, runs interleaved as in the timing (the same load for each): per shape
    and graph, the milliseconds per run spent in each op type's kernels (a warm-up run left out). Where the time
    goes, not a timing: the profiler adds its own cost."""
    import onnxruntime as ort

    result: dict = {}
    for batch, seq in shapes if runs else []:
        sessions = {}
        for graph, path in graphs.items():
            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            opts.enable_profiling = True
            opts.profile_file_prefix = str(work / f"profile-{len(sessions)}")
            sessions[graph] = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        per = {g: _session_feeds(s, feeds(batch, seq, inputs, vocab, pad=False)) for g, s in sessions.items()}
        order = list(sessions)
        for r in range(runs + 1):
            for g in order[r % len(order) :] + order[: r % len(order)]:
                sessions[g].run(None, per[g])
        for graph, sess in sessions.items():
            trace = Path(sess.end_profiling())
            per_op = _kernel_ms(json.loads(trace.read_text()), runs)
            trace.unlink()
            result.setdefault(f"{batch}x{seq}", {})[graph] = per_op
            log(f"profiled {graph} at {batch}x{seq}: {sum(per_op.values()):.0f} ms per run in kernels")
        del sessions
    return result


def _kernel_ms(events: list[dict], runs: int) -> dict[str, float]:
    """Milliseconds per run by op type, from a profile's kernel events after its first run."""
    first = next(e for e in events if e.get("name") == "model_run")
    per_op: Counter = Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] > first["ts"] + first["dur"]:
            per_op[e["args"]["op_name"]] += e["dur"] / 1e3 / runs
    return {k: round(v, 3) for k, v in per_op.most_common()}


def _stats(ts: list[float]) -> dict:
    ms = sorted(t * 1e3 for t in ts)
    q1, _, q3 = statistics.quantiles(ms, n=4)
    return {"median_ms": statistics.median(ms), "min_ms": ms[0], "q1_ms": q1, "q3_ms": q3, "max_ms": ms[-1]}


if __name__ == "__main__":
    sys.exit(main())

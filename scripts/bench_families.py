"""ORT CPU time of our `--rope onnx` ModernBERT graph against its two peers, in one ONNX Runtime process:

- ours: torch's dynamo export (opset 23) after the rotary pass (constant tables, position ids);
- raw+expand: the same export with each RotaryEmbedding's batch-1 cos/sin expanded to the batch, the
  cheapest correct fix of the raw graph (which ORT refuses at batch > 1);
- optimum: HF Optimum's export (optimum-onnx, `feature-extraction`), made in its own venv because it pins
  transformers < 4.58 (4.57 reads ModernBERT's theta from its config defaults, global_rope_theta 160000 and
  local_rope_theta 10000, which are the values this model has).

    python scripts/bench_families.py --optimum-python /work/venv-optimum/bin/python --rounds 9

The model is the checkpoint given with --checkpoint (an HF ModernBERT folder), else a random-init ModernBERT of
ModernBERT-base's shape (22 layers, hidden 768, 12 heads, local_attention 128, theta 160000/10000, vocab 50368;
--tiny for a 3-layer smoke). Every graph is checked against HF transformers (fp32, the project's default fp32
thresholds, right-padded rows) before it is timed; a graph that fails is reported and not timed. Rounds are
interleaved (one run of each graph per round, the order rotated); the result is the median with min, quartiles
and max. Verdict per shape: ours is "faster" when its median is at most the faster peer's, "within spread"
when it is at most that peer's upper quartile, else "slower". Writes bench_families_<date>.json and .md to
--out (default build/scripts/bench_families/; --update-results: scripts/results/families/); the checkpoint and
graphs go to --work (default build/scripts/bench_families/work/).

The model loading and export here are the script's own until export/families/ loads checkpoints.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from script_outputs import add_output_flags  # noqa: E402

from export.inputs.numbers import int_arg  # noqa: E402

DEMO = dict(
    vocab_size=50368,
    hidden_size=768,
    intermediate_size=1152,
    num_hidden_layers=22,
    num_attention_heads=12,
    global_attn_every_n_layers=3,
    local_attention=128,
    max_position_embeddings=8192,
)
TINY = dict(DEMO, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4)


def log(msg: str) -> None:
    print(f"[bench_families] {msg}", file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scripts/bench_families.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--checkpoint", help="an HF ModernBERT folder (default: a random-init one of base shape)")
    p.add_argument("--tiny", action="store_true", help="a 3-layer random ModernBERT (a smoke run)")
    p.add_argument("--optimum-python", help="python of a venv with optimum-onnx (omitted: no optimum peer)")
    p.add_argument("--shapes", default="8x128,1x512", help="batch x sequence, comma-separated")
    p.add_argument("--rounds", type=int_arg(lo=9), default=9, help="interleaved rounds per shape (>= 9)")
    add_output_flags(p, "bench_families", "families", work=True)
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.rounds < 9:
        p.error("--rounds must be at least 9")
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    result = run(args, shapes, work)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"bench_families_{result['date']}{'_tiny' if args.tiny else ''}"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    md = markdown(result)
    (out / f"{stem}.md").write_text(md)
    print(md)
    return 0


def run(args, shapes: list[tuple[int, int]], work: Path) -> dict:
    from export.stages.bench import host_description

    model, ckpt = load_model(args, work)
    max_len = max(s for _, s in shapes)
    graphs = {"ours": work / "ours.onnx", "raw+expand": work / "raw_expand.onnx"}
    t0 = time.perf_counter()
    export_ours_and_expanded(model, work, max_len)
    export_s = time.perf_counter() - t0
    optimum_note = "not run (no --optimum-python)"
    if args.optimum_python:
        optimum_note = export_optimum(args.optimum_python, ckpt, work / "optimum")
        graphs["optimum"] = work / "optimum" / "model.onnx"
    checks, sessions = check_against_hf(model, graphs, shapes)
    timings = time_graphs(sessions, shapes, args.rounds, model.config.vocab_size)
    return {
        "date": time.strftime("%Y-%m-%d"),
        "machine": host_description(),
        "model": args.checkpoint or f"random-init ModernBERT{' (tiny)' if args.tiny else '-base shape'}",
        "config": {k: getattr(model.config, k) for k in DEMO},
        "rope_theta": {k: v["rope_theta"] for k, v in model.config.rope_parameters.items()},
        "max_len_of_tables": max_len,
        "export_and_rotary_pass_seconds": round(export_s, 1),
        "optimum": optimum_note,
        "checks": checks,
        "timings": timings,
    }


def load_model(args, work: Path):
    from transformers import ModernBertConfig, ModernBertModel

    if args.checkpoint:
        model = ModernBertModel.from_pretrained(args.checkpoint, attn_implementation="eager")
        return model.eval(), Path(args.checkpoint)
    config = ModernBertConfig(**(TINY if args.tiny else DEMO))
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = ModernBertModel(config).eval()
    ckpt = work / "ckpt"
    model.save_pretrained(ckpt)  # safetensors + config.json, which optimum's transformers 4.57 reads
    log(f"random-init ModernBERT ({config.num_hidden_layers} layers, hidden {config.hidden_size}) in {ckpt}")
    return model, ckpt


class _LastHidden(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def export_ours_and_expanded(model, work: Path, max_len: int) -> None:
    import onnx

    from export.families.spec import SPLIT_HALVES, LayerRotary, RotaryTable
    from export.onnx_io import write_model
    from export.passes.rotary import fuse_rotary

    ids = torch.randint(5, model.config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(0))
    b, s = torch.export.Dim("batch"), torch.export.Dim("sequence", max=model.config.max_position_embeddings)
    log("dynamo export, opset 23")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _LastHidden(model), (ids, torch.ones_like(ids)), str(work / "raw.onnx"), dynamo=True, opset_version=23,
            input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state"],
            dynamic_shapes=({0: b, 1: s}, {0: b, 1: s}), external_data=True, verbose=False,
        )  # fmt: skip
    cfg = model.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    heads = (("query", cfg.num_attention_heads), ("key", cfg.num_attention_heads))
    theta = {t: float(cfg.rope_parameters[t]["rope_theta"]) for t in set(cfg.layer_types)}
    specs = [LayerRotary(SPLIT_HALVES, head_dim, RotaryTable(t, head_dim, theta[t]), heads) for t in cfg.layer_types]
    raw = onnx.load(str(work / "raw.onnx"), load_external_data=False)
    log("rotary pass (--rope onnx)")
    n = 2 * cfg.num_hidden_layers
    ours, rep = fuse_rotary(raw, "onnx", expected=n, max_len=max_len, rotary=specs, base_dir=work)
    if rep.coverage_error():
        raise SystemExit(f"rotary pass: {rep.coverage_error()}")
    write_model(ours, work / "ours.onnx", check=True)
    write_model(expand_caches(raw), work / "raw_expand.onnx", check=True)


def expand_caches(model):
    """Each RotaryEmbedding(x, cos [1, S, R/2], sin) of the raw export reads Expand(cos, [B, S, R/2]) instead:
    valid at any batch, everything else as exported."""
    import onnx
    import onnx_graphsurgeon as gs

    graph = gs.import_onnx(model)
    idx = {k: gs.Constant(f"bench_i{k}", np.array([k], np.int64)) for k in (0, 1, 2)}
    for i, node in enumerate([n for n in graph.nodes if n.op == "RotaryEmbedding" and len(n.inputs) == 3]):
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
    return onnx.shape_inference.infer_shapes(out)


def export_optimum(python: str, ckpt: Path, out: Path) -> str:
    """optimum-onnx's exporter in its own venv; returns the versions it ran with."""
    log(f"optimum export with {python}")
    cmd = [python, "-m", "optimum.exporters.onnx", "--model", str(ckpt), "--task", "feature-extraction", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"optimum export failed ({done.returncode}): {done.stderr[-2000:]}")
    versions = subprocess.run(
        [python, "-c", "import importlib.metadata as m; print(*(f'{p} {m.version(p)}' for p in "
         "('optimum-onnx', 'optimum', 'transformers', 'torch')), sep=', ')"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    return versions


def feeds(batch: int, seq: int, vocab: int, pad: bool) -> dict[str, np.ndarray]:
    """Random ids; with pad, row r > 0 is right-padded to seq - 13 r tokens (at least 1)."""
    rng = np.random.default_rng(batch * 1000 + seq)
    ids = rng.integers(5, vocab, (batch, seq)).astype(np.int64)
    mask = np.ones_like(ids)
    if pad:
        for r in range(1, batch):
            n = max(1, seq - 13 * r)
            mask[r, n:], ids[r, n:] = 0, 0
    return {"input_ids": ids, "attention_mask": mask}


def check_against_hf(model, graphs: dict[str, Path], shapes) -> tuple[dict, dict]:
    """Each graph against HF fp32 at each shape (right padding), with the project's default fp32 thresholds.
    Returns the checks and ORT sessions of the graphs that passed every shape."""
    from export.report.thresholds import Thresholds
    from export.validate import Shape, grade, ort_session

    checks, sessions = {}, {}
    for name, path in graphs.items():
        sess = ort_session(path)
        cases = []
        for batch, seq in shapes:
            f = feeds(batch, seq, model.config.vocab_size, pad=True)
            with torch.no_grad():
                ref = model(**{k: torch.from_numpy(v) for k, v in f.items()}).last_hidden_state.numpy()
            got = sess.run(["last_hidden_state"], f)[0]
            case = grade(f"bench-{name}", "fp32", Shape(batch, seq), {"last_hidden_state": got},
                         {"last_hidden_state": ref}, Thresholds.defaults(), inputs=f)  # fmt: skip
            out = case["outputs"]["last_hidden_state"]
            cases.append({"shape": f"{batch}x{seq}", "passed": case["passed"]} | {
                k: out.get(k) for k in ("max_abs", "scaled_error", "cosine", "row_cosine")})  # fmt: skip
        checks[name] = cases
        log(f"{name}: {'passes' if all(c['passed'] for c in cases) else 'FAILS'} the fp32 check against HF")
        if all(c["passed"] for c in cases):
            sessions[name] = sess
    return checks, sessions


def time_graphs(sessions: dict, shapes, rounds: int, vocab: int) -> list[dict]:
    rows = []
    for batch, seq in shapes:
        f = feeds(batch, seq, vocab, pad=False)
        names = list(sessions)
        for name in names:
            sessions[name].run(None, f)  # warm-up, excluded
        times: dict[str, list[float]] = {n: [] for n in names}
        for r in range(rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate: no graph always first
                t = time.perf_counter()
                sessions[name].run(None, f)
                times[name].append(time.perf_counter() - t)
            log(f"{batch}x{seq} round {r + 1}/{rounds}")
        stats = {n: _stats(ts) for n, ts in times.items()}
        peers = [n for n in stats if n != "ours"]
        faster = min(peers, key=lambda n: stats[n]["median_ms"]) if peers else None
        verdict = None
        if faster is not None and "ours" in stats:
            ours, peer = stats["ours"]["median_ms"], stats[faster]
            verdict = "faster" if ours <= peer["median_ms"] else "within spread" if ours <= peer["q3_ms"] else "slower"
        rows.append({"shape": f"{batch}x{seq}", "rounds": rounds, "stats": stats, "faster_peer": faster,
                     "ours_vs_faster_peer": (stats["ours"]["median_ms"] / stats[faster]["median_ms"])
                     if verdict else None, "verdict": verdict})  # fmt: skip
    return rows


def _stats(ts: list[float]) -> dict:
    ms = sorted(t * 1e3 for t in ts)
    q1, _, q3 = statistics.quantiles(ms, n=4)
    return {"median_ms": statistics.median(ms), "min_ms": ms[0], "q1_ms": q1, "q3_ms": q3, "max_ms": ms[-1]}


def markdown(result: dict) -> str:
    lines = [
        f"# ModernBERT on ONNX Runtime CPU: ours vs peers ({result['date']})",
        "",
        f"- machine: {result['machine']}",
        f"- model: {result['model']}; theta {result['rope_theta']}; tables of {result['max_len_of_tables']} rows",
        f"- optimum: {result['optimum']}",
        f"- export + rotary pass: {result['export_and_rotary_pass_seconds']} s",
        "",
        "Checked against HF transformers (fp32, default fp32 thresholds, right-padded rows) before timing:",
        "",
        "| graph | shape | passed | max abs | scaled error | min row cosine |",
        "|---|---|---|---|---|---|",
    ]
    for name, cases in result["checks"].items():
        lines += [f"| {name} | {c['shape']} | {c['passed']} | {c['max_abs']:.3g} | {c['scaled_error']:.3g} | "
                  f"{c['row_cosine']:.12f} |" for c in cases]  # fmt: skip
    lines += ["", "| shape | graph | median ms | min | q1 | q3 | max |", "|---|---|---|---|---|---|---|"]
    for row in result["timings"]:
        for name, s in row["stats"].items():
            lines.append(f"| {row['shape']} | {name} | {s['median_ms']:.1f} | {s['min_ms']:.1f} | {s['q1_ms']:.1f} | "
                         f"{s['q3_ms']:.1f} | {s['max_ms']:.1f} |")  # fmt: skip
    lines += [""]
    for row in result["timings"]:
        if row["verdict"]:
            lines.append(f"- {row['shape']}: ours / {row['faster_peer']} = {row['ours_vs_faster_peer']:.3f} "
                         f"({row['rounds']} interleaved rounds): **{row['verdict']}**")  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())

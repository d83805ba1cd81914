"""Every script of scripts/ starts, says before any work why it cannot run here, and writes only where it says:
its --out (default under build/), never the committed scripts/results/ unless --update-results asks.

Scripts are loaded from their files (they are not a package) and driven through `build_parser()` / `main(argv)`
in this process, on the tiny checkpoint; the demo-size runs they exist for are not repeated here."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

from tests.helpers import one_line

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts"
RESULTS = SCRIPTS / "results"
HELPERS = {"script_outputs", "bench_families_report"}  # imported by the scripts, not run
ALL = sorted(p.stem for p in SCRIPTS.glob("*.py") if p.stem not in HELPERS)
OUT_ELSEWHERE = {"make_demo_checkpoint": "demo"}  # writes the demo checkpoint README's commands read, not results


def load(name: str):
    """The script as a module (loaded once), as `python scripts/<name>.py` sees its folder: with script_outputs."""
    key = f"scripts_{name}"
    if key not in sys.modules:
        if str(SCRIPTS) not in sys.path:
            sys.path.insert(0, str(SCRIPTS))
        spec = importlib.util.spec_from_file_location(key, SCRIPTS / f"{name}.py")
        sys.modules[key] = importlib.util.module_from_spec(spec)  # dataclasses look their module up there
        spec.loader.exec_module(sys.modules[key])
    return sys.modules[key]


def test_every_script_is_in_scripts_readme():
    readme = (SCRIPTS / "README.md").read_text()
    assert not [n for n in ALL if f"`{n}.py`" not in readme], "scripts/README.md must describe every script"


@pytest.mark.parametrize("name", ALL)
def test_help_starts(name, capsys):
    with pytest.raises(SystemExit) as e:
        load(name).build_parser().parse_args(["--help"])
    assert e.value.code == 0 and "usage:" in capsys.readouterr().out


@pytest.mark.parametrize("name", ALL)
def test_default_outputs_stay_out_of_the_committed_results(name):
    """The class of `gate_sensitivity.py --tiny` overwriting scripts/results/: no default path of any flag leads
    there; only --update-results does, and it names a folder that exists."""
    parser = load(name).build_parser()
    for action in parser._actions:
        for value in (action.default, action.const):
            if isinstance(value, (str, Path)) and "results" in Path(value).parts:
                assert action.option_strings == ["--update-results"], (name, action.option_strings, value)
                assert Path(value).resolve().is_relative_to(RESULTS) and Path(value).is_dir(), value
        if action.dest in ("out", "work") and action.default is not None:
            want = OUT_ELSEWHERE.get(name, "build")
            assert Path(action.default).parts[0] == want, (name, action.dest, action.default)


def test_bench_export_measures_past_the_checkpoint_table(tiny_ckpt, tmp_path):
    """S=2048 on the demo (table 512) raised IndexError in the eager model: here S=70 on tiny (table 64)."""
    out, work = tmp_path / "out", tmp_path / "work"
    argv = ["--model", str(tiny_ckpt), "--seqs", "8,70", "--reps", "1", "--exporter", "torchscript"]
    assert load("bench_export").main([*argv, "--out", str(out), "--work", str(work)]) == 0
    rows = json.loads((out / "bench_export.json").read_text())["rows"]
    assert {(r["seq"], r["variant"]) for r in rows} == {
        (s, v) for s in (8, 70) for v in ("torch-eager", "ort-plain", "ort-rope-onnx", "ort-no-rotary")
    }
    assert sorted(p.name for p in out.iterdir()) == ["bench_export.json", "bench_export.md", "bench_export.png"]
    assert (work / "model.rope-onnx.onnx").is_file()


def test_bench_pipeline_runs_every_stage_of_an_int8_build(tmp_path, monkeypatch):
    """main -> children (prepare, export, pass, quantize, validation) -> the CLI build -> the table, with each child
    run in this process (a child costs seconds of imports); `measure` itself is checked on a real child below."""
    mod = load("bench_pipeline")
    ran = []

    def in_process(cmd: list[str]) -> dict:
        import contextlib
        import io

        from export.build import main as build

        ran.append(cmd)
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            code = build(cmd[3:]) if cmd[1:3] == ["-m", "export.build"] else mod.main(cmd[2:])
        assert code == 0, cmd
        return {"wall": 1.0, "peak_rss": 1, "stdout": buf.getvalue()}

    monkeypatch.setattr(mod, "measure", in_process)
    out = tmp_path / "out"
    argv = ["--sizes", "tiny", "--precision", "int8", "--repeats", "1", "--out", str(out), "--work", str(tmp_path)]
    assert mod.main(argv) == 0
    stages = [c[c.index("--child") + 1] for c in ran if "--child" in c]
    assert stages == ["prepare", "export", "pass", "quantize", "validation"]
    result = json.loads((out / "pipeline-int8.json").read_text())
    assert set(result["sizes"]["tiny"]["rows"]) == {"export", "pass", "quantize", "validation", "build"}
    assert sorted(p.name for p in out.iterdir()) == ["pipeline-int8.json", "pipeline-int8.md", "pipeline-int8.png"]


@pytest.mark.parametrize(
    "precision,files",
    [
        ("fp16", {"model.onnx", "model.rope-plugin.onnx", "model.rope-plugin.fp16.onnx"}),
        ("int8", {"model.onnx", "model.rope-plugin.onnx", "model.rope-plugin.int8.onnx", "model.int8-cpu.onnx"}),
        ("fp8", {"model.onnx", "model.rope-plugin.onnx", "model.rope-plugin.fp8.onnx"}),
    ],
)
def test_bench_pipeline_validates_the_graphs_the_build_writes(tmp_path, precision, files):
    """Every --precision's validation child names the files its quantize or precision child wrote (fp8 once asked
    for an fp16 graph nobody made)."""
    graphs = load("bench_pipeline").graphs_to_validate(tmp_path, precision)
    assert {g.path.name for g, _ in graphs.values()} == files


def test_bench_pipeline_measures_a_childs_own_peak():
    m = load("bench_pipeline").measure([sys.executable, "-c", "b = bytearray(300_000_000); print('ok')"])
    assert m["peak_rss"] >= 300_000_000 and m["stdout"].strip() == "ok" and m["wall"] > 0


def test_gate_sensitivity_render_without_results_is_usage(tmp_path, capsys):
    assert load("gate_sensitivity").main(["--render", "--out", str(tmp_path / "none")]) == 2
    assert "run without --render" in one_line(capsys) and not (tmp_path / "none").exists()


def test_bench_quant_without_modelopt_says_so_before_work(tiny_ckpt, tmp_path, capsys):
    argv = ["--demo", str(tiny_ckpt), "--modelopt-python", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]
    assert load("bench_quant").main([*argv, "--work", str(tmp_path / "w")]) == 3
    assert "ModelOpt" in one_line(capsys) and sorted(os.listdir(tmp_path)) == []


@pytest.mark.parametrize("name", ["bench_quant_cpu", "bench_quant_variants"])
def test_quant_benches_refuse_a_missing_build(name, tmp_path, capsys):
    argv = ["--build", str(tmp_path / "nope"), "--model", "m.pt", "--out", str(tmp_path / "o")]
    assert load(name).main(argv) == 2
    assert "export.build" in one_line(capsys) and not (tmp_path / "o").exists()


def test_bench_serving_outside_its_environment_says_so_before_work(tmp_path, capsys):
    from engines.serving.server import check_runtime
    from export.errors import UnavailableError

    try:
        check_runtime()
    except UnavailableError:
        pass
    else:
        pytest.skip("the serving runtime is here: tests/engines/serving/test_live.py serves for real")
    assert load("bench_serving").main(["--tiny", "--out", str(tmp_path / "o")]) == 3
    assert "serving" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_bench_rotary_without_a_gpu_says_so(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is here: tests/plugins/test_kernel_gpu.py covers the kernel")
    assert load("bench_rotary").main(["--out", str(tmp_path / "o")]) == 3
    assert "CUDA" in one_line(capsys) and not (tmp_path / "o").exists()


def test_measure_sincos_error_writes_its_json(tmp_path):
    out = tmp_path / "e.json"
    assert load("measure_sincos_error").main(["--head-dims", "8", "--max-pos", "16", "--json", str(out)]) == 0
    assert json.loads(out.read_text())[0]["fp32_table"]["max_abs_err"] < 1e-7


def test_make_demo_checkpoint_tiny(tmp_path):
    assert load("make_demo_checkpoint").main(["--tiny", "--out", str(tmp_path / "t")]) == 0
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == ["ckpt.pt", "vocab.txt"]


def test_bench_engines_takes_the_demo_checkpoint_format(tiny_ckpt, built, tmp_path, capsys):
    """Its example passes demo/ckpt.pt (a {config, state_dict} file); it used to want an HF folder."""
    argv = ["--checkpoint", str(tiny_ckpt), "--onnx", str(built / "model.onnx"), "--batch", "1", "--seq", "8"]
    argv += ["--backends", "torch-fp32,ort", "--iters", "1", "--warmup", "1", "--out", str(tmp_path / "o")]
    assert load("bench_engines").main(argv) == 0
    rows = json.loads((tmp_path / "o" / "bench.json").read_text())["results"]
    assert {r["backend"] for r in rows if r["p50_ms"]} == {"torch-fp32", "ort"}
    assert "benchmark: 1 shapes x 2 backends" in capsys.readouterr().err


def test_st_crosscheck_without_sentence_transformers_says_so(tmp_path, capsys):
    try:
        import sentence_transformers  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("sentence-transformers is installed here")
    assert load("st_crosscheck").main(["--out", str(tmp_path / "o"), "--work", str(tmp_path / "w")]) == 3
    assert "sentence-transformers" in one_line(capsys) and sorted(os.listdir(tmp_path)) == []


def test_bench_families_tiny_two_families(tmp_path):
    """Two families' tiny demo checkpoints (GQA's fewer K heads in eurobert): ours from the build's stages and
    raw+expand pass HF's check with padded rows and are timed; the run says why there is no Optimum peer, names
    its files by family and date; ONNX Runtime runs the same compute nodes in ours and raw+expand."""
    out, work = tmp_path / "out", tmp_path / "work"
    argv = ["--tiny", "--family", "modernbert", "--family", "eurobert", "--shapes", "2x16", "--rounds", "9"]
    argv += ["--profile", "1", "--control", "--keep-graphs"]
    assert load("bench_families").main([*argv, "--out", str(out), "--work", str(work)]) == 0
    (stem,) = {p.stem for p in out.iterdir()}
    assert stem.startswith("bench_families_modernbert+eurobert_") and stem.endswith("_tiny")
    result = json.loads((out / f"{stem}.json").read_text())
    assert list(result["families"]) == ["modernbert", "eurobert"]
    for fam in result["families"].values():
        assert fam["rotary_sites"]["rewritten"] == fam["rotary_sites"]["expected"] == 2 * fam["config"]["layers"]
        assert fam["ops"]["ours"]["RotaryEmbedding"] == fam["ops"]["raw+expand"]["RotaryEmbedding"]
        assert fam["ops"]["ours"].get("Cos", 0) == 0 < fam["ops"]["raw+expand"]["Cos"]  # the tables are constants
        assert all(c["passed"] and c["padded"] for g in ("ours", "raw+expand") for c in fam["checks"][g])
        (row,) = fam["timings"]
        control = load("bench_families").CONTROL
        assert set(row["stats"]) == {"ours", "raw+expand", control} and row["faster_peer"] == "raw+expand"
        assert set(row["paired_ratio_median"]) == {"raw+expand", control} and len(row["runs_ms"]["ours"]) == 9
        expanded = fam["rotary_sites"]["caches_expanded"]  # the export repairs them now: the script adds nothing
        assert expanded == {"by_the_export": 2 * fam["config"]["layers"], "by_this_script": 0}
        prof = fam["profile"]["2x16"]
        assert prof["ours"]["RotaryEmbedding"] > 0 and "Cos" not in prof["ours"] and "Cos" in prof["raw+expand"]
        assert row["verdict"] in ("faster", "within spread", "slower") and fam["optimum"] == {
            "none": "not run (no --optimum-python)"
        }
    for fam in result["families"]:  # after ONNX Runtime's own optimizations the compute is the same graph
        (graphs,) = (work / fam).glob("graphs-*")
        ours, raw = (_ort_optimized_ops(graphs / g, tmp_path) for g in ("model.rope-onnx.onnx", "raw_expand.onnx"))
        compute = {k for k in ours | raw if k not in ("Cos", "Sin", "Expand", "Concat", "Shape", "Gather", "Slice",
                                                      "Unsqueeze", "Squeeze", "Range", "Cast", "Mul")}  # fmt: skip
        assert {k: ours.get(k) for k in compute} == {k: raw.get(k) for k in compute} and ours["MatMul"] > 0


def _ort_optimized_ops(path, tmp_path) -> dict:
    """Op counts of the graph ONNX Runtime runs (its optimizers applied), written beside the test's files."""
    from collections import Counter

    import onnx
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.optimized_model_filepath = str(tmp_path / f"ort-{path.name}")
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    model = onnx.load(opts.optimized_model_filepath, load_external_data=False)
    return dict(Counter(n.op_type for n in model.graph.node))


@pytest.mark.parametrize(
    ("ours", "want"), [(9.0, "faster"), (10.0, "faster"), (11.0, "within spread"), (12.5, "slower")]
)
def test_bench_families_verdict_against_the_faster_peer(ours, want):
    """The faster peer decides; --control's second session of our graph is never a peer, however fast."""
    bench = load("bench_families")
    stat = {"median_ms": 10.0, "q3_ms": 12.0}
    stats = {"ours": {"median_ms": ours}, "slow": {"median_ms": 20.0, "q3_ms": 30.0}, "fast": stat}
    stats[bench.CONTROL] = {"median_ms": 1.0, "q3_ms": 1.0}
    row = bench.verdict("8x128", 9, stats)
    assert (row["faster_peer"], row["verdict"], row["ours_vs_faster_peer"]) == ("fast", want, ours / 10.0)


def test_bench_families_checkpoint_takes_one_family(tmp_path, capsys):
    argv = ["--family", "esm", "--family", "gte", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as e:
        load("bench_families").main(argv)
    assert e.value.code == 2 and "--checkpoint takes one --family" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_bench_families_keeps_an_earlier_runs_results(tmp_path):
    free_stem = load("bench_families").free_stem
    assert free_stem(tmp_path, "b_2026-12-08") == "b_2026-12-08"
    (tmp_path / "b_2026-12-08.md").write_text("first run")
    (tmp_path / "b_2026-12-08_2.json").write_text("{}")
    assert free_stem(tmp_path, "b_2026-12-08") == "b_2026-12-08_3"


def test_check_family_precisions_refuses_an_unknown_family_before_work(tmp_path, capsys):
    script = load("check_family_precisions")
    argv = ["--families", "gte,bert", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")]
    assert script.main(argv) == 2
    assert "unknown family or precision ['bert']" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "work").exists()


def test_check_family_precisions_reads_the_worst_figures_of_a_report(built):
    """Per graph: the largest scaled error and the smallest row cosine over every shape and output of the build's
    own validation cases, with the thresholds they were judged by."""
    from export.report.persist import read_report

    cases = read_report(built).validation
    figures = load("check_family_precisions").graph_figures(cases, "fp32")
    assert set(figures) == {c["graph"] for c in cases}
    for graph, f in figures.items():
        outs = [o for c in cases if c["graph"] == graph for o in c["outputs"].values()]
        assert f["max_scaled_error"] == max(o["scaled_error"] for o in outs)
        assert f["min_row_cosine"] == min(o["row_cosine"] for o in outs if o.get("row_cosine") is not None)
        assert f["rtol"] == outs[0]["rtol"] and f["passed"] is True


def test_bench_families_expands_batch_one_caches_once():
    """The raw+expand peer: a RotaryEmbedding with [1, S, R/2] caches runs at batch 3 on ONNX Runtime after the
    script's expansion, as onnx.reference computes the original; a graph already expanded is left alone."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper
    from onnx.reference import ReferenceEvaluator

    info = helper.make_tensor_value_info
    node = helper.make_node("RotaryEmbedding", ["x", "cos", "sin"], ["y"])
    graph = helper.make_graph(
        [node], "g",
        [info("x", TensorProto.FLOAT, ["B", 2, "S", 8]), info("cos", TensorProto.FLOAT, [1, "S", 4]),
         info("sin", TensorProto.FLOAT, [1, "S", 4])],
        [info("y", TensorProto.FLOAT, ["B", 2, "S", 8])],
    )  # fmt: skip
    raw = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)], ir_version=10)
    expand = load("bench_families").expand_caches
    fixed, n = expand(raw)
    assert n == 1 and expand(fixed)[1] == 0
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((3, 2, 5, 8), np.float32)}
    feeds |= {k: rng.standard_normal((1, 5, 4), np.float32) for k in ("cos", "sin")}
    want = ReferenceEvaluator(raw).run(None, feeds)[0]
    got = ort.InferenceSession(fixed.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    with pytest.raises(Exception, match="same shape"):  # why the peer needs it: ORT refuses the raw node at batch 3
        ort.InferenceSession(raw.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)

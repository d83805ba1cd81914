"""`python -m engines.build` on a machine without TensorRT: every flag is checked before the TensorRT
question, the longest sequence is what the graph declares (export.build's --max-len, in its metadata), and
the missing TensorRT is exit 3 with the reason (the build itself runs in
tests/engines/tensorrt/test_build_gpu.py where TensorRT exists)."""

import subprocess
import sys

import onnx
import pytest

from engines.build import main
from engines.tensorrt.availability import engine_stage_status
from engines.tensorrt.graph import declared_max_len
from export.build import main as export_main
from export.onnx_export import MAX_LEN_KEY
from tests.fixtures.hostile_graphs import edited, set_external, small_graph
from tests.fixtures.tiny_build import build_args
from tests.limits import SLOW_MACHINE_S

STAGE = engine_stage_status()


@pytest.fixture(scope="module")
def built(tiny_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli")
    for rope in ("plugin", "onnx"):
        code = export_main(
            build_args(tiny_ckpt, out / rope, "--rope", rope, "--precision", "fp16", "--skip-validation", max_len=48)
        )
        assert code == 0
    return out


def run(argv, capsys):
    code = main([str(a) for a in argv])
    return code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_every_graph_declares_max_len(built, tmp_path):
    for graph in (
        "plugin/model.rope-plugin.fp16.onnx",
        "onnx/model.rope-onnx.fp16.onnx",
        "plugin/model.onnx",
        "plugin/model.rope-plugin.onnx",
    ):
        assert declared_max_len(built / graph) == 48, graph
    bare = onnx.load(str(built / "plugin" / "model.onnx"), load_external_data=False)
    del bare.metadata_props[:]
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    assert declared_max_len(tmp_path / "bare.onnx") is None  # not our export: nothing is guessed from names


@pytest.mark.parametrize(
    "extra,pattern",
    [
        (["--precision", "int8"], "has no Q/DQ nodes; --precision int8 builds from the graph"),
        (["--precision", "int4"], "--precision 'int4' is not supported"),
        (["--profiles", "16,64"], "top 64 exceeds --max-len 48"),
        (["--batch", "4,2,1"], "needs min <= opt <= max"),
        (["--max-len", "64"], "--max-len 64 exceeds the 48 tokens"),  # would fail deep inside the TensorRT build
        (["--plugin-lib", "nope.so"], "--plugin-lib nope.so does not exist"),
    ],
)
def test_bad_flags_exit_2(built, capsys, extra, pattern):
    code, err = run([built / "plugin" / "model.rope-plugin.fp16.onnx", *extra], capsys)
    assert code == 2 and len(err) == 1 and pattern in err[0], err


def test_missing_file_and_unknown_length_exit_2(built, capsys):
    code, err = run([built / "nope.onnx"], capsys)
    assert code == 2 and "does not exist" in err[0]
    bare = onnx.load(str(built / "plugin" / "model.rope-plugin.fp16.onnx"), load_external_data=False)
    del bare.metadata_props[:]
    onnx.save(bare, str(built / "plugin" / "bare.onnx"))
    code, err = run([built / "plugin" / "bare.onnx"], capsys)
    assert code == 2 and "pass --max-len" in err[0]


@pytest.mark.parametrize(
    "change, pattern",
    [
        (set_external("location", "../../../../etc/passwd"), "external data at '../../../../etc/passwd'"),
        (set_external("offset", "1000000000000000"), "reads bytes 1000000000000000"),
        (lambda m: setattr(m.opset_import[0], "version", 99), "imports opset 99"),
        (lambda m: m.metadata_props.add(key=MAX_LEN_KEY, value="²"), "'²' is not an integer"),
        (lambda m: m.metadata_props.add(key=MAX_LEN_KEY, value="9" * 5000), "is too long for an integer"),
    ],
)
def test_the_graph_goes_through_the_checked_loader(tmp_path, capsys, change, pattern):
    """engines.build reads its graph with export.inputs.graph_file, as export.diagnose does (issue 27)."""
    code, err = run([edited(small_graph(tmp_path), change)], capsys)
    assert code == 2 and len(err) == 1 and pattern in err[0], err


@pytest.mark.parametrize(
    "extra,pattern", [(["--max-len", "64"], "exceeds the 48 tokens"), (["--precision", "int8"], "int8")]
)
def test_usage_errors_come_before_availability(built, extra, pattern):
    """In a fresh process, a usage error is exit 2 on every machine, never hidden behind exit 3 (no TensorRT)."""
    r = subprocess.run(
        [sys.executable, "-m", "engines.build", str(built / "plugin" / "model.rope-plugin.fp16.onnx"), *extra],
        capture_output=True,
        text=True,
        timeout=SLOW_MACHINE_S,
    )
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and pattern in r.stderr, r.stderr


@pytest.mark.skipif(
    STAGE["status"] == "available",
    reason=f"the engine stage can run here (TensorRT "
    f"{STAGE.get('tensorrt')} and a GPU); tests/engines/tensorrt/test_build_gpu.py builds the engine",
)
def test_without_tensorrt_exit_3_with_reason(built):
    plan_dir = built / "plugin"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "engines.build",
            str(plan_dir / "model.rope-plugin.fp16.onnx"),
            "--precision",
            "fp16",
            "--profiles",
            "16,48",
        ],
        capture_output=True,
        text=True,
        timeout=SLOW_MACHINE_S,
    )
    assert r.returncode == 3 and r.stderr.strip().count("\n") == 0, r.stderr
    assert STAGE["reason"] in r.stderr
    assert not list(plan_dir.glob("*.plan*")) and not (plan_dir / "timing.cache").exists()

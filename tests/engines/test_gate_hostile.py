"""The verification chain cannot be fooled: engines.gate and engines.triton on doctored reports and folders.

One real tiny build is made per module; each test doctors a copy of it. Every finding of the reliability
issue about the gate, report paths and the Triton generator has a test here.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time

import pytest

from engines.triton import __main__ as triton
from engines.gate import main as gate
from export.build import main as build
from export.report import REPORT_JSON, SCHEMA_VERSION


@pytest.fixture(scope="module")
def built(tiny_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("rel") / "tiny"
    assert build(["--model", str(tiny_ckpt), "--out", str(out), "--exporter", "torchscript", "--max-len", "24"]) == 0
    return out


@pytest.fixture
def copy(built, tmp_path):
    """A fresh copy of the build and a function that rewrites its report.json."""
    out = tmp_path / "tiny"
    shutil.copytree(built, out)

    def doctor(change):
        r = json.loads((out / REPORT_JSON).read_text())
        change(r)
        (out / REPORT_JSON).write_text(json.dumps(r))
        return str(out / REPORT_JSON)

    return out, doctor


def one_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def test_the_real_build_passes_the_gate(built, capsys):
    assert gate([str(built / REPORT_JSON)]) == 0
    assert "PASSED" in capsys.readouterr().out


# ---- impossible statistics fail the case, naming it ------------------------------------------------

@pytest.mark.parametrize("key,value", [
    ("max_abs", math.nan), ("max_abs", math.inf), ("max_rel", math.nan), ("max_abs", -1e-9), ("max_rel", -0.5),
    ("cosine", 7.0), ("cosine", -1.5), ("cosine", math.nan), ("max_abs", True), ("n_nan", 0.5), ("n_nan", "many"),
    ("n_nan", -1), ("n_nan", False), ("mean_abs", -1.0), ("max_abs", None),
])
def test_impossible_statistic_fails_naming_it(copy, capsys, key, value):
    out, doctor = copy

    def change(r):
        r["validation"][0]["outputs"]["last_hidden_state"][key] = value
    assert gate([doctor(change)]) == 1
    text = capsys.readouterr().out
    assert key in text, text


def test_missing_statistic_fails(copy, capsys):
    out, doctor = copy
    assert gate([doctor(lambda r: r["validation"][0]["outputs"]["last_hidden_state"].pop("cosine"))]) == 1
    assert "cosine is missing" in capsys.readouterr().out


def test_cosine_is_checked(copy):
    """A case within atol but below min_cosine fails: the gate does not ignore cosine."""
    out, doctor = copy
    assert gate([doctor(lambda r: r["validation"][0]["outputs"]["last_hidden_state"].update(cosine=0.5))]) == 1


def test_max_rel_alternative_is_kept(copy):
    """max_abs over atol but max_rel under rtol passes (Polygraphy's rule); both over fails."""
    out, doctor = copy

    def within_rel(r):
        r["validation"][0]["outputs"]["last_hidden_state"].update(max_abs=1.0, max_rel=1e-6)
    assert gate([doctor(within_rel)]) == 0

    def neither(r):
        r["validation"][0]["outputs"]["last_hidden_state"].update(max_abs=1.0, max_rel=1.0)
    assert gate([doctor(neither)]) == 1


# ---- the producer's own verdict ----------------------------------------------------------------------

@pytest.mark.parametrize("change,why", [
    (lambda r: r.update(passed=False), "not passed"),
    (lambda r: r.update(failure="rotary rewrite: 3/4 sites"), "rotary rewrite"),
    (lambda r: r.update(engine={"status": "failed", "reason": "parser error"}), "engine stage failed"),
    (lambda r: r.update(validation_skipped=True), "not validated"),
])
def test_report_marked_failed_by_its_producer_fails(copy, capsys, change, why):
    out, doctor = copy
    assert gate([doctor(change)]) == 1
    assert why in capsys.readouterr().out


# ---- artifacts beside the report -----------------------------------------------------------------------

def test_replaced_artifact_fails(copy, capsys):
    """The stale-report attack: another run's model.onnx beside this report."""
    out, doctor = copy
    data = bytearray((out / "model.onnx").read_bytes())
    data[-1] ^= 1
    (out / "model.onnx").write_bytes(bytes(data))
    assert gate([str(out / REPORT_JSON)]) == 1
    assert "model.onnx" in capsys.readouterr().out


def test_missing_artifact_fails(copy, capsys):
    out, _ = copy
    (out / "model.rope-plugin.onnx").unlink()
    assert gate([str(out / REPORT_JSON)]) == 1
    assert "missing" in capsys.readouterr().out


def test_symlink_out_of_the_folder_fails(copy, tmp_path, capsys):
    out, _ = copy
    outside = tmp_path / "outside.onnx"
    shutil.copy(out / "model.onnx", outside)
    (out / "model.onnx").unlink()
    (out / "model.onnx").symlink_to(outside)
    junit = tmp_path / "gate.xml"
    assert gate([str(out / REPORT_JSON), "--junit", str(junit)]) == 1
    assert "a symlink out of the build" in junit.read_text()


@pytest.mark.parametrize("path", ["../../etc/hostname", "/etc/hostname", "a/../../x.onnx"])
def test_artifact_path_leaving_the_folder_is_refused(copy, capsys, path):
    out, doctor = copy
    assert gate([doctor(lambda r: r["artifacts"].update(onnx=path))]) == 2
    assert "not a path inside the build folder" in one_line(capsys)


def test_unhashed_artifacts_fail(copy, capsys):
    out, doctor = copy
    assert gate([doctor(lambda r: r.pop("artifacts_sha256"))]) == 1
    assert "no artifact hashes" in capsys.readouterr().out


# ---- malformed reports: exit 2, one line ---------------------------------------------------------------

@pytest.mark.parametrize("change,text", [
    (lambda r: r.pop("schema_version"), "schema version 0"),
    (lambda r: r.update(schema_version=SCHEMA_VERSION + 1), f"schema version {SCHEMA_VERSION + 1}"),
    (lambda r: r.update(schema_version="1"), "schema version '1'"),
    (lambda r: r["validation"][0].update(graph=["a"]), "'graph' must be str"),
    (lambda r: r["validation"][0].update(batch="2"), "'batch' must be an integer"),
    (lambda r: r.update(validation={"a": 1}), "'validation' must be list"),
    (lambda r: r.update(artifacts_sha256={"model.onnx": "zz"}), "not a sha256"),
])
def test_malformed_report_exits_2(copy, capsys, change, text):
    out, doctor = copy
    assert gate([doctor(change)]) == 2
    line = one_line(capsys)
    assert text in line and line.endswith("rebuild it with python -m export.build"), line


@pytest.mark.parametrize("content", [b"[" * 100000 + b"]" * 100000, b"\xff\xfe{}", b"[1, 2]", b"{", b""])
def test_unreadable_report_exits_2(tmp_path, capsys, content):
    p = tmp_path / REPORT_JSON
    p.write_bytes(content)
    assert gate([str(p)]) == 2
    assert one_line(capsys).startswith("error: ")


@pytest.mark.parametrize("special", ["fifo", "/dev/zero", "dir"])
def test_special_files_as_report_exit_2_at_once(tmp_path, capsys, special):
    path = {"fifo": tmp_path / "fifo", "/dev/zero": "/dev/zero", "dir": tmp_path}[special]
    if special == "fifo":
        os.mkfifo(path)
    t0 = time.perf_counter()
    assert gate([str(path)]) == 2
    assert time.perf_counter() - t0 < 5
    one_line(capsys)


def test_junit_directory_exits_2(built, tmp_path, capsys):
    assert gate([str(built / REPORT_JSON), "--junit", str(tmp_path)]) == 2
    assert "--junit" in one_line(capsys)


@pytest.mark.parametrize("toml,key", [
    ("abc", "not valid TOML"), ('["*"."*"."*"]\natol = -1\n', "atol"), ('["*"."*"."*"]\nrtol = nan\n', "rtol"),
    ('["*"."*"."*"]\natol = inf\n', "atol"), ('["*"."*"."*"]\nmin_cosine = 2\n', "min_cosine"),
    ('["*"."*"."*"]\natol = true\n', "atol"), ('["*"."*"."*"]\natol = "1e-3"\n', "atol"),
])
def test_bad_thresholds_exit_2_naming_the_key(built, tmp_path, capsys, toml, key):
    t = tmp_path / "t.toml"
    t.write_text(toml)
    assert gate([str(built / REPORT_JSON), "--thresholds", str(t)]) == 2
    assert key in one_line(capsys)


def test_non_utf8_thresholds_exit_2(built, tmp_path, capsys):
    t = tmp_path / "t.toml"
    t.write_bytes(b"\xff\xfe atol")
    assert gate([str(built / REPORT_JSON), "--thresholds", str(t)]) == 2
    assert "UTF-8" in one_line(capsys)


# ---- the Triton generator: only what the report describes, only under --out ------------------------------

@pytest.mark.parametrize("name", ["../../x", "/abs", "a/b", "..", ""])
def test_triton_name_must_be_a_model_name(built, tmp_path, capsys, name):
    pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient[grpc] not installed")
    assert triton.main(["--build", str(built), "--out", str(tmp_path / "repo"), "--name", name]) == 2
    assert "not a valid Triton model name" in one_line(capsys)
    assert not (tmp_path / "x").exists() and not (tmp_path / "repo").exists()


def test_triton_refuses_a_failed_build_and_replaced_files(copy, tmp_path, capsys):
    pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient[grpc] not installed")
    out, doctor = copy
    doctor(lambda r: r.update(passed=False))
    assert triton.main(["--build", str(out), "--out", str(tmp_path / "r1")]) == 1
    assert "did not pass" in one_line(capsys)
    doctor(lambda r: r.update(passed=True))
    (out / "model.onnx").write_bytes(b"garbage, not the exported graph")
    assert triton.main(["--build", str(out), "--out", str(tmp_path / "r2")]) == 2
    assert "changed since the build" in one_line(capsys)


def test_triton_garbage_onnx_with_matching_hash_exits_2(copy, tmp_path, capsys):
    pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient[grpc] not installed")
    out, doctor = copy
    (out / "model.onnx").write_bytes(b"garbage")
    import hashlib
    digest = hashlib.sha256(b"garbage").hexdigest()
    doctor(lambda r: r["artifacts_sha256"].update({"model.onnx": digest}))
    assert triton.main(["--build", str(out), "--out", str(tmp_path / "r")]) == 2
    assert "not a usable ONNX graph" in one_line(capsys)


@pytest.mark.parametrize("bad_out", ["file", "/proc/roformer-trt-test"])
def test_triton_unwritable_out_exits_2(built, tmp_path, capsys, bad_out):
    pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient[grpc] not installed")
    target = tmp_path / "f" if bad_out == "file" else bad_out
    if bad_out == "file":
        target.write_text("x")
    assert triton.main(["--build", str(built), "--out", str(target)]) == 2
    one_line(capsys)


def test_triton_json_list_report_exits_2(built, tmp_path, capsys):
    pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient[grpc] not installed")
    b = tmp_path / "b"
    b.mkdir()
    (b / REPORT_JSON).write_text("[1, 2]")
    assert triton.main(["--build", str(b), "--out", str(tmp_path / "r")]) == 2
    assert "not a JSON object" in one_line(capsys)


def test_deeply_nested_thresholds_exit_2(built, tmp_path, capsys):
    t = tmp_path / "deep.toml"
    t.write_text("x = " + "[" * 5000 + "]" * 5000 + "\n")
    assert gate([str(built / REPORT_JSON), "--thresholds", str(t)]) == 2
    assert "deep" in one_line(capsys)


def test_atol_flag_overrides_every_table_of_the_file(tmp_path):
    from export.thresholds import Thresholds

    th = Thresholds.from_cli({"fp32": {"engine-fp32": {"*": {"atol": 0.0}}}}, "t.toml", atol=0.5, rtol=None)
    assert th.lookup("fp32", "engine-fp32", "last_hidden_state").atol == 0.5
    assert th.lookup("fp32", "onnx", "last_hidden_state").rtol == 1e-4  # untouched where no flag was given


def test_triton_and_serving_check_the_weights_file_too(copy, tmp_path, capsys):
    """The graphs read model.onnx.data: a changed byte there is refused like a changed graph."""
    pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient[grpc] not installed")
    from engines.serving.ort_model import OrtEncoder
    from export.errors import UsageError

    out, _ = copy
    data = bytearray((out / "model.onnx.data").read_bytes())
    data[-1] ^= 1
    (out / "model.onnx.data").write_bytes(bytes(data))
    assert triton.main(["--build", str(out), "--out", str(tmp_path / "r")]) == 2
    assert "model.onnx.data" in one_line(capsys) and not (tmp_path / "r" / "tiny_onnx").exists()
    with pytest.raises(UsageError, match="model.onnx.data"):
        OrtEncoder.from_build(out)

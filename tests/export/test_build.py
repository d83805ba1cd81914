"""export.build under interruption, kills, reruns and bad flags: --out only ever holds a report with the
exact files it describes. Interrupts and kills run the real CLI as a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engines.gate import main as gate
from export.build import main as build
from export.folder.staging import PREFIX
from export.report.schema import REPORT_JSON, REPORT_MD, SCHEMA_VERSION
from tests.fixtures.tiny_build import FAST
from tests.limits import HANG_S, SLOW_MACHINE_S, no_checkpoint_reading

ROOT = Path(__file__).resolve().parents[2]


def cli(ckpt, out, *extra) -> list[str]:
    return [sys.executable, "-m", "export.build", "--model", str(ckpt), "--out", str(out), *FAST, *extra]


def start(argv) -> subprocess.Popen:
    return subprocess.Popen(
        argv,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def wait_for(pattern: str, folder: Path, proc: subprocess.Popen, timeout: float = SLOW_MACHINE_S) -> Path:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        hits = list(folder.glob(pattern))
        if hits:
            return hits[0]
        if proc.poll() is not None:
            pytest.fail(f"the build ended before {pattern} appeared: {proc.communicate()}")
        time.sleep(0.01)
    proc.kill()
    pytest.fail(f"{pattern} did not appear in {timeout} s")


@pytest.fixture(scope="module")
def previous(tiny_ckpt, tmp_path_factory):
    """A passing build, the 'previous set' every test below must leave untouched or replace whole."""
    out = tmp_path_factory.mktemp("prev") / "out"
    assert build(["--model", str(tiny_ckpt), "--out", str(out), *FAST]) == 0
    return out


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def fresh_copy(previous, tmp_path) -> Path:
    import shutil

    out = tmp_path / "out"
    shutil.copytree(previous, out)
    return out


def test_sigint_after_model_onnx_keeps_the_previous_set(previous, tiny_ckpt, tmp_path):
    out = fresh_copy(previous, tmp_path)
    before = snapshot(out)
    proc = start(cli(tiny_ckpt, out))
    wait_for(f"{PREFIX}*/model.onnx", out, proc)
    time.sleep(0.03)  # the finding: about 30 ms after model.onnx appears
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=SLOW_MACHINE_S)
    assert proc.returncode == 130, err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("⠋", " "))]
    assert lines[-1].startswith("interrupted: nothing was changed in") and "Traceback" not in err, err
    assert snapshot(out) == before and not list(out.glob(PREFIX + "*"))
    assert gate([str(out / REPORT_JSON)]) == 0


def test_sigkill_mid_build_leaves_the_old_set_and_the_next_run_cleans_up(previous, tiny_ckpt, tmp_path, make_ckpt):
    out = fresh_copy(previous, tmp_path)
    before = snapshot(out)
    proc = start(cli(tiny_ckpt, out))
    wait_for(f"{PREFIX}*/model.onnx", out, proc)
    proc.kill()
    proc.communicate()
    assert [p.name for p in out.glob(PREFIX + "*")], "the killed run's staging folder is expected here"
    after = {k: v for k, v in snapshot(out).items() if not k.startswith(PREFIX)}
    assert after == before  # the report still describes exactly the files beside it
    assert gate([str(out / REPORT_JSON)]) == 0
    assert build(["--model", str(tiny_ckpt), "--out", str(out), *FAST]) == 0  # the rerun removes the dead one
    assert not list(out.glob(PREFIX + "*"))


def test_stale_report_cannot_pass_beside_another_runs_model(previous, tiny_ckpt, tmp_path):
    """Build A passed; a rerun is killed after its new model.onnx exists: no report may pass beside it."""
    out = fresh_copy(previous, tmp_path)
    proc = start(cli(tiny_ckpt, out, "--opset", "18"))  # a different graph than A's
    staged = wait_for(f"{PREFIX}*/model.onnx", out, proc)
    proc.kill()
    proc.communicate()
    assert gate([str(out / REPORT_JSON)]) == 0  # the old set is whole: its report may pass
    assert staged.exists()  # a SIGKILL leaves the staging folder; the new model.onnx never reached --out
    (out / "model.onnx").write_bytes(staged.read_bytes())  # the old tool's failure: new model, old report
    assert staged.read_bytes() != (previous / "model.onnx").read_bytes()
    assert gate([str(out / REPORT_JSON)]) == 1


@pytest.mark.parametrize(
    "flags,key",
    [
        (["--atol", "-1"], "--atol"),
        (["--rtol", "nan"], "--rtol"),
        (["--atol", "inf"], "--atol"),
    ],
)
def test_bad_threshold_flags_exit_2_before_any_work(tiny_ckpt, tmp_path, capsys, monkeypatch, flags, key):
    out = tmp_path / "o"
    no_checkpoint_reading(monkeypatch)
    try:  # nan and inf are refused by the flag's own parser (argparse exits 2), -1 by the thresholds' check
        code = build(["--model", str(tiny_ckpt), "--out", str(out), *FAST, *flags])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and key in err[0] and not out.exists()


@pytest.mark.parametrize(
    "toml,key", [('["*"."*"."*"]\nmin_cosine = 2\n', "min_cosine"), ("abc", "TOML"), (b"\xff\xfe", "UTF-8")]
)
def test_bad_thresholds_file_exits_2_before_any_work(tiny_ckpt, tmp_path, capsys, toml, key):
    t = tmp_path / "t.toml"
    t.write_bytes(toml if isinstance(toml, bytes) else toml.encode())
    out = tmp_path / "o"
    assert build(["--model", str(tiny_ckpt), "--out", str(out), *FAST, "--thresholds", str(t)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and key in err[0] and not out.exists(), err


@pytest.mark.timeout(HANG_S)
def test_thresholds_fifo_does_not_hang(tiny_ckpt, tmp_path, capsys, monkeypatch):
    fifo = tmp_path / "t.toml"
    os.mkfifo(fifo)
    no_checkpoint_reading(monkeypatch)
    assert build(["--model", str(tiny_ckpt), "--out", str(tmp_path / "o"), *FAST, "--thresholds", str(fifo)]) == 2
    assert "not a regular file" in capsys.readouterr().err


def test_report_records_hashes_timings_and_schema(previous):
    r = json.loads((previous / REPORT_JSON).read_text())
    assert r["schema_version"] == SCHEMA_VERSION == 3 and r["passed"] is True
    assert set(r["artifacts"].values()) <= set(r["artifacts_sha256"])
    assert len(r["checkpoint"]["sha256"]) == 64
    assert {"load", "export", "rotary", "precision", "validation"} <= set(r["timings"])
    md = (previous / REPORT_MD).read_text()
    assert "## Time per stage" in md and "| stage | seconds |" in md and "```\n{" not in md  # no JSON dumps


def test_a_node_the_plugin_refuses_fails_verification_with_the_report_kept(tiny_ckpt, tmp_path, monkeypatch, capsys):
    """A pass that wrote a node the plugin refuses (interleaved=2, no such layout): exit 1, report and artifacts
    kept."""
    from export.passes.rotary import rewrite

    real = rewrite.rewrite_plugin

    def interleaved_2(*args, **kwargs):
        node = real(*args, **kwargs)
        node.attrs["interleaved"] = 2
        return node

    monkeypatch.setattr(rewrite, "rewrite_plugin", interleaved_2)
    out = tmp_path / "o"
    assert build(["--model", str(tiny_ckpt), "--out", str(out), *FAST]) == 1
    assert "interleaved=2" in capsys.readouterr().err
    r = json.loads((out / REPORT_JSON).read_text())
    assert r["passed"] is False and "interleaved=2" in r["failure"] and r["engine"]["status"] == "skipped"
    assert (out / "model.rope-plugin.onnx").exists()
    assert gate([str(out / REPORT_JSON)]) == 1

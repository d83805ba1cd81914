"""No dead code: every function, method, class and property of the product, the scripts and the tests is used
somewhere in them (vulture's static analysis, the field's dead-code finder). A name called only from outside our code
is listed below with the framework that calls it; anything else vulture finds is code to delete."""

from __future__ import annotations

from pathlib import Path

import pytest

vulture = pytest.importorskip("vulture", reason="vulture (dev extra) not installed")

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("export", "engines", "plugins", "scripts", "tests")
KINDS = ("function", "method", "class", "property", "import", "unreachable_code")
CALLED_FROM_OUTSIDE = {
    ("engines/serving/backend_model.py", "TritonPythonModel"): "Triton's Python backend loads the class by name",
    ("engines/serving/backend_model.py", "initialize"): "Triton's Python backend",
    ("engines/serving/backend_model.py", "execute"): "Triton's Python backend",
    ("engines/serving/grpc_front.py", "service"): "grpc.GenericRpcHandler",
    ("engines/serving/http_front.py", "log_message"): "http.server.BaseHTTPRequestHandler",
    ("engines/serving/http_front.py", "do_GET"): "http.server.BaseHTTPRequestHandler",
    ("engines/serving/http_front.py", "do_HEAD"): "http.server.BaseHTTPRequestHandler",
    ("engines/serving/http_front.py", "do_POST"): "http.server.BaseHTTPRequestHandler",
    ("engines/serving/http_front.py", "handle_error"): "socketserver.BaseServer",
    ("engines/serving/http_front.py", "readable"): "io.RawIOBase (DeadlineReader)",
    ("engines/serving/http_front.py", "readinto"): "io.RawIOBase (DeadlineReader)",
    ("engines/tensorrt/builder.py", "phase_start"): "TensorRT's IProgressMonitor",
    ("engines/tensorrt/builder.py", "step_complete"): "TensorRT's IProgressMonitor",
    ("engines/tensorrt/builder.py", "phase_finish"): "TensorRT's IProgressMonitor",
    ("scripts/bench_quant_cpu.py", "get_next"): "onnxruntime.quantization.CalibrationDataReader",
    ("scripts/modelopt_quantize.py", "get_next"): "onnxruntime.quantization.CalibrationDataReader",
    ("scripts/modelopt_quantize.py", "rewind"): "ModelOpt's calibration data reader",
    ("scripts/modelopt_quantize.py", "get_first"): "ModelOpt's calibration data reader",
    ("tests/engines/serving/stand_in.py", "log_message"): "http.server.BaseHTTPRequestHandler",
    ("tests/engines/test_client_wait.py", "ServerReady"): "tritonclient's GRPCInferenceServiceServicer (gRPC)",
    ("tests/engines/test_client_wait.py", "ModelReady"): "tritonclient's GRPCInferenceServiceServicer (gRPC)",
}


@pytest.fixture(scope="module")
def flagged() -> dict[tuple[str, str], str]:
    """{(path, name): "path:line: unused kind 'name'"} for everything vulture finds unused in SCANNED."""
    # pytest calls its hooks by name, and a fixture by the parameter that asks for it
    v = vulture.Vulture(verbose=False, ignore_names=["pytest_*"], ignore_decorators=["@pytest.fixture"])
    v.scavenge([str(ROOT / d) for d in SCANNED], exclude=[str(ROOT / "plugins" / "build")])
    found = {}
    for item in v.get_unused_code(min_confidence=60):
        rel = Path(item.filename).resolve().relative_to(ROOT).as_posix()
        if item.typ in KINDS:
            found[(rel, item.name)] = f"{rel}:{item.first_lineno}: unused {item.typ} {item.name!r}"
    return found


def test_no_dead_code(flagged):
    dead = [line for key, line in flagged.items() if key not in CALLED_FROM_OUTSIDE]
    assert not dead, "delete these, or list the framework that calls them in CALLED_FROM_OUTSIDE:\n" + "\n".join(dead)


def test_every_exemption_is_still_needed(flagged):
    """An exemption whose name is gone (or now used) would hide the next dead function of that name."""
    assert set(CALLED_FROM_OUTSIDE) <= set(flagged), sorted(set(CALLED_FROM_OUTSIDE) - set(flagged))

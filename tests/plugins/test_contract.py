"""Contract test of the TensorRT adapter: plugins/tests/contractTest.cpp drives the built library the way
TensorRT's ONNX parser, builder and runtime call it, through its public C ABI only.

TensorRT itself is never run here (it cannot be installed on the machines this project is built on); what
runs is our library, called by a host program. The stand-ins (a logger finder, a constant-folding
expression builder, a TEST-ONLY stub `libnvinfer.so.<major>` with a recording registry) exist only in the
test build and only drive our library's side of the ABI.

Headers: tests.fixtures.toolchain.tensorrt_include_dirs ($ROFORMER_TRT_TENSORRT_INCLUDE, $TensorRT_INCLUDE_DIR, or
../shared/tensorrt-headers beside the repository: v10.16 and v11.1); without any, every test here skips with that
reason. Each header version gets its own build folder plugins/build/contract-<version>[-sanitize].
The expected identity (name, version, namespace, fields) comes from plugins.identity, which
tests/plugins/test_identity.py checks against RoformerRotary_PluginConfig.yaml.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from plugins import identity
from tests.fixtures.toolchain import HEADERS_ENV, headers_missing, tensorrt_include_dirs, version_of
from tests.plugins.fixtures import contract_build as build
from tests.plugins.fixtures import sanitizer_supported

MIN_BAD_FIELD_SETS = 20
HEADERS = tensorrt_include_dirs()
pytestmark = pytest.mark.skipif(not HEADERS, reason=headers_missing())


def has_gpu() -> bool:
    return Path("/dev/nvidia0").exists()


def run(exe: Path, *args: str, env: dict | None = None) -> tuple[int, str, str, int, int]:
    r = subprocess.run(
        [str(exe), *args], capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})}
    )
    m = re.search(r"contract: (\d+) passed, (\d+) failed", r.stdout)
    passed, failed = (int(m[1]), int(m[2])) if m else (0, -1)
    return r.returncode, r.stdout, r.stderr, passed, failed


def drive(d: Path):
    args = [
        "drive",
        str(d / identity.PLUGIN_LIB),
        "--name",
        identity.PLUGIN_OP,
        "--version",
        identity.PLUGIN_VERSION,
        "--namespace",
        identity.PLUGIN_NAMESPACE,
        "--fields",
        ",".join(identity.FIELDS),
    ]
    return run(d / "tests" / "roformer_trt_contract_test", *args, *([] if has_gpu() else ["--no-gpu"]))


def check_drive(result):
    rc, out, err, passed, failed = result
    assert rc == 0 and failed == 0, out[-6000:] + err[-2000:]
    fails = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert not fails, fails
    bad = [line for line in out.splitlines() if line.startswith("ok   bad fields")]
    assert len(bad) >= 2 * MIN_BAD_FIELD_SETS, len(bad)  # both phases
    assert sum("kBUILD" in b for b in bad) == sum("kRUNTIME" in b for b in bad)
    for k in range(1, 5):
        for interleaved in identity.INTERLEAVED_ALLOWED:  # both layouts through every stage
            tag = f"ok   k={k} interleaved={interleaved}: "
            assert tag + "supportsFormatCombination accepts exactly the contract's combinations" in out
            # 10.x's parser passes kINT32; a kINT64 of length 1 makes the same plugin, range-checked
            assert tag + "createPlugin(kBUILD) with kINT64 fields gives the kINT32 plugin" in out
            assert tag + "createPlugin(kRUNTIME) from the serialized fields gives identical fields" in out
            # grouped-query attention: each x_i its own H, but B, S and Dh shared
            assert tag + "getOutputShapes: y_i = [B, H_i, S, Dh] of x_i, H_i per tensor" in out
            assert tag + "configurePlugin accepts x_1.. with fewer heads than x_0" in out
            assert tag + "onShapeChange accepts x_1.. with fewer heads than x_0" in out
            if k > 1:
                for dim in ("B", "S", "Dh"):
                    assert tag + f"configurePlugin refuses x_1.. with another {dim}, with a logged reason" in out
                assert tag + "enqueue refuses x_1 with another Dh before any launch" in out
    assert "ok   bad fields kBUILD rotary_dim kINT64 2^32 + 64 (64 if truncated)" in out
    for bad in ("interleaved -1", "interleaved 2", "interleaved kINT64 2^32 (0 if truncated)"):
        assert f"ok   bad fields kBUILD {bad}: nullptr with a logged reason" in out
        assert f"ok   bad fields kRUNTIME {bad}: nullptr with a logged reason" in out
    return passed


@pytest.mark.parametrize("include", HEADERS, ids=[version_of(h) for h in HEADERS])
def test_contract_drive(include):
    passed = check_drive(drive(build(include)))
    print(f"TensorRT {version_of(include)} headers: contract drive {passed} checks passed")


@pytest.mark.parametrize("include", HEADERS, ids=[version_of(h) for h in HEADERS])
def test_static_library_registers_under_its_own_namespace(include):
    d = build(include)
    major = version_of(include).split(".")[0]
    exe, stub = d / "tests" / "roformer_trt_contract_test", d / "tests" / "stub" / f"libnvinfer.so.{major}"
    lib = d / "tests" / "libroformer_trt_plugin_static_on_stub.so"
    for refuse in ("0", "1"):
        rc, out, err, _, failed = run(
            exe,
            "static",
            str(stub),
            str(lib),
            "--namespace",
            identity.PLUGIN_NAMESPACE,
            env={"RR_STUB_REFUSE": refuse} if refuse == "1" else None,
        )
        assert rc == 0 and failed == 0, out + err
        assert f'registerCreator gets the creator\'s namespace "{identity.PLUGIN_NAMESPACE}"' in out


@pytest.mark.parametrize("include", HEADERS, ids=[version_of(h) for h in HEADERS])
def test_creator_lookup_walks_the_list_and_never_calls_getcreator(include):
    """plugins/common/creatorLookup.h (engines/cpp/embed.cpp's lookup) against the stub's recording registry:
    TensorRT logs every getCreator miss as an error, so the lookup reads getAllCreators instead, and tells
    our creator from decoys with its identity behind another interface kind."""
    check_lookup(build(include), include)


def check_lookup(d: Path, include: Path) -> str:
    major = version_of(include).split(".")[0]
    stub = d / "tests" / "stub" / f"libnvinfer.so.{major}"
    rc, out, err, passed, failed = run(
        d / "tests" / "roformer_trt_contract_test",
        "lookup",
        str(stub),
        str(d / identity.PLUGIN_LIB),
        "--name",
        identity.PLUGIN_OP,
        "--version",
        identity.PLUGIN_VERSION,
        "--namespace",
        identity.PLUGIN_NAMESPACE,
    )
    assert rc == 0 and failed == 0, out + err
    assert "ok   found: exactly our creator, not a decoy with its identity" in out
    assert "ok   IPluginRegistry::getCreator never called (0 calls)" in out
    return err


def test_mixed_majors_refuse_instead_of_crashing():
    """A host of one major (its runtime, a stub, loaded RTLD_LOCAL first) loading a library of the other."""
    by_major = {version_of(h).split(".")[0]: h for h in HEADERS}
    if len(by_major) < 2:
        pytest.skip(
            f"needs headers of two TensorRT majors ({HEADERS_ENV} or ../shared/tensorrt-headers), "
            f"got {sorted(by_major)}"
        )
    majors = sorted(by_major)[:2]
    for host_major, lib_major in (majors, majors[::-1]):
        host, lib = build(by_major[host_major]), build(by_major[lib_major])
        rc, out, err, passed, failed = run(
            host / "tests" / "roformer_trt_contract_test",
            "mixed",
            str(host / "tests" / "stub" / f"libnvinfer.so.{host_major}"),
            str(lib / identity.PLUGIN_LIB),
        )
        assert rc == 0 and failed == 0, f"host {host_major}, library {lib_major}: rc {rc}\n{out}\n{err}"
        lines = [line for line in err.splitlines() if "refusing to register" in line]
        assert len(lines) == 1, err  # one line naming both versions
        assert f"TensorRT {lib_major} headers" in lines[0] and f"running TensorRT is {host_major}." in lines[0]


@pytest.mark.parametrize("include", HEADERS, ids=[version_of(h) for h in HEADERS])
def test_contract_under_asan_ubsan(include):
    why = sanitizer_supported()
    if why:
        pytest.skip(why)
    d = build(include, sanitize=True)
    check_drive(drive(d))
    err = check_lookup(d, include)
    assert "ERROR: AddressSanitizer" not in err and "runtime error" not in err, err
    major = version_of(include).split(".")[0]
    rc, out, err, _, failed = run(
        d / "tests" / "roformer_trt_contract_test",
        "static",
        str(d / "tests" / "stub" / f"libnvinfer.so.{major}"),
        str(d / "tests" / "libroformer_trt_plugin_static_on_stub.so"),
        "--namespace",
        identity.PLUGIN_NAMESPACE,
    )
    assert rc == 0 and failed == 0 and "ERROR: AddressSanitizer" not in err and "runtime error" not in err, out + err


@pytest.mark.parametrize("include", HEADERS, ids=[version_of(h) for h in HEADERS])
def test_engines_build_refuses_a_library_of_another_major(include):
    """engines.build reads the library's stamp before TensorRT's load_library sees it (no TensorRT needed)."""
    from engines.tensorrt.plugin_library import plugin_library_major, plugin_major_problem

    lib = build(include) / identity.PLUGIN_LIB
    major = int(version_of(include).split(".")[0])
    assert plugin_library_major(lib) == major
    assert plugin_major_problem(lib, f"{major}.3.0") is None
    other = 10 if major != 10 else 11
    why = plugin_major_problem(lib, f"{other}.0.1")
    assert why and f"TensorRT {major} headers" in why and f"TensorRT {other}.0.1 is running" in why

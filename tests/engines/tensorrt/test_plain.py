"""engines.build / runner / validate_engine logic that needs no TensorRT: sidecars, atomic writes,
stage status, profile picking, validation shapes. TensorRT itself is exercised in tests/gpu/."""

from __future__ import annotations

import importlib.util
import json

import pytest

from engines.tensorrt.availability import engine_stage_status, require_engine, trt_major
from engines.tensorrt.profiles import ProfileSet
from engines.tensorrt.runner import pick_profile
from engines.tensorrt.sidecar import (
    MATCH_KEYS,
    make_sidecar,
    reuse_decision,
    sidecar_mismatches,
    sidecar_path,
)
from engines.tensorrt.validate import largest_prime_in, validation_shapes
from export.errors import EXIT_UNAVAILABLE, UnavailableError, UsageError
from export.folder.atomic import write_atomic
from export.folder.digest import onnx_sha256, sha256_file


def _sidecar(**over):
    kw = dict(
        tensorrt_version="10.13.0",
        gpu_name="NVIDIA H100",
        compute_capability="9.0",
        precision="fp16",
        profiles=ProfileSet.from_cli("1,8,32", "128,512", 512).to_report(),
        onnx_sha256="a" * 64,
        plugin_sha256="b" * 64,
    )
    kw.update(over)
    return make_sidecar(**kw)


def test_write_atomic_replaces_and_leaves_no_temp(tmp_path):
    p = tmp_path / "sub" / "x.plan"
    write_atomic(p, b"one")
    write_atomic(p, b"two")
    assert p.read_bytes() == b"two"
    assert [f.name for f in p.parent.iterdir()] == ["x.plan"]


def test_hashes(tmp_path):
    f = tmp_path / "abc.bin"
    f.write_bytes(b"abc")
    assert sha256_file(f) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # FIPS 180-2 "abc"


def test_onnx_identity_covers_the_shared_weights_file(tmp_path):
    """A rewritten graph reads its weights from model.onnx.data: new weights, same graph bytes, new identity,
    so a plan built from the old weights is never reused."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((64, 64), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
        [w],
    )
    path = tmp_path / "model.rope-plugin.onnx"
    onnx.save_model(
        helper.make_model(graph), str(path), save_as_external_data=True, location="model.onnx.data", size_threshold=0
    )
    before, graph_bytes = onnx_sha256(path), path.read_bytes()
    data = bytearray((tmp_path / "model.onnx.data").read_bytes())
    data[0] ^= 1
    (tmp_path / "model.onnx.data").write_bytes(bytes(data))
    assert path.read_bytes() == graph_bytes and onnx_sha256(path) != before


def test_sidecar_match_and_mismatch(tmp_path):
    expected = _sidecar()
    assert sidecar_mismatches(json.loads(json.dumps({**expected, "build_seconds": 3.0})), expected) == []
    for key, other in [
        ("precision", _sidecar(precision="bf16")),
        ("gpu", _sidecar(compute_capability="8.9")),
        ("tensorrt_version", _sidecar(tensorrt_version="11.0.0")),
        ("profiles", _sidecar(profiles=ProfileSet.from_cli("1,8,32", "256", 512).to_report())),
        ("onnx_sha256", _sidecar(onnx_sha256="c" * 64)),
        ("plugin_sha256", _sidecar(plugin_sha256=None)),
    ]:
        reasons = sidecar_mismatches(other, expected)
        assert len(reasons) == 1 and reasons[0].startswith(key), reasons
    assert set(MATCH_KEYS) <= set(expected)


def test_reuse_decision(tmp_path):
    plan = tmp_path / "model.fp16.plan"
    expected = _sidecar()
    assert reuse_decision(plan, expected) == (False, ["no plan yet"])
    write_atomic(plan, b"engine")
    assert reuse_decision(plan, expected)[0] is False  # plan without sidecar is never reused
    write_atomic(sidecar_path(plan), json.dumps(expected))
    assert reuse_decision(plan, expected) == (True, [])
    ok, reasons = reuse_decision(plan, _sidecar(onnx_sha256="d" * 64))
    assert not ok and "onnx_sha256" in reasons[0]
    # an unreadable sidecar: rebuilt, and the reason names the file and what is wrong with it
    sidecar_path(plan).write_text("{broken")
    ok, reasons = reuse_decision(plan, expected)
    assert not ok and str(sidecar_path(plan)) in reasons[0] and "not valid JSON" in reasons[0]
    sidecar_path(plan).write_text("[1, 2]")
    ok, reasons = reuse_decision(plan, expected)
    assert not ok and reasons == [
        f"engine sidecar {sidecar_path(plan)} is not a JSON object; rebuild the engine "
        "(python -m engines.build or python -m export.build)"
    ]


def test_one_sidecar_reader_for_reuse_and_triton(tmp_path):
    """engines.triton reads a sidecar through the reader the reuse rule uses: one policy (UsageError naming the
    file), which the reuse rule turns into a reason to rebuild and engines.triton into exit 2."""
    import engines.triton.config as triton_config
    import engines.triton.repository as triton_repository
    from engines.tensorrt import sidecar

    assert triton_repository.load_sidecar is sidecar.load_sidecar and not hasattr(triton_config, "load_sidecar")
    side = tmp_path / "model.fp16.plan.json"
    for text, why in (("[1, 2]", "is not a JSON object"), ("{broken", "is not valid JSON"), (None, "does not exist")):
        if text is not None:
            side.write_text(text)
        else:
            side.unlink()
        with pytest.raises(UsageError, match=why):
            sidecar.load_sidecar(side)
    side.write_text(json.dumps(_sidecar()))
    assert sidecar.load_sidecar(side) == _sidecar()


def test_trt_major():
    assert trt_major("10.13.0.35") == 10 and trt_major("11.0.0") == 11


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_engine_stage_skips_without_tensorrt():
    st = engine_stage_status()
    assert st["status"] == "skipped" and "TensorRT is not installed" in st["reason"]
    with pytest.raises(UnavailableError) as e:
        require_engine(st)
    assert e.value.exit_code == EXIT_UNAVAILABLE


def test_engines_modules_do_not_import_tensorrt():
    import sys

    import engines.bench  # noqa: F401,E401

    assert "tensorrt" not in sys.modules


def test_pick_profile():
    profs = [{"input_ids": ((1, 1), (8, 128), (32, 128))}, {"input_ids": ((1, 129), (8, 512), (32, 512))}]
    assert pick_profile(profs, {"input_ids": (4, 128)}) == 0
    assert pick_profile(profs, {"input_ids": (4, 129)}) == 1
    with pytest.raises(UsageError, match="no optimization profile"):
        pick_profile(profs, {"input_ids": (64, 16)})


def test_validation_shapes_cover_every_profile():
    ps = ProfileSet.from_cli("1,4,8", "16,64", 64)
    shapes = validation_shapes(ps)
    for s in ps.sequences:
        inside = [x for x in shapes if x.seq in s]
        assert {x.seq for x in inside} >= {s.min, s.opt, s.max, largest_prime_in(s.min, s.max)}
        assert any(x.padded_rows for x in inside)
        assert all(ps.profile_for(x.batch, x.seq) == ps.sequences.index(s) for x in inside)
    assert largest_prime_in(17, 64) == 61 and largest_prime_in(1, 1) is None

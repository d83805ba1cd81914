"""TensorRT engine build + run on a tiny RoFormer (rotary plugin graph, fp16), vs PyTorch fp32.

Skipped, with the reason, where TensorRT, a CUDA GPU or the built plugin library is missing.
"""

from __future__ import annotations

import importlib.util
import json

import pytest

pytestmark = [pytest.mark.gpu, pytest.mark.tensorrt]

if importlib.util.find_spec("tensorrt") is None:
    pytest.skip("TensorRT is not installed (pip install .[tensorrt] on a GPU machine)", allow_module_level=True)
torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("no CUDA GPU visible (torch.cuda.is_available() is False)", allow_module_level=True)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    import onnx

    from engines.tensorrt.builder import build_engine
    from engines.tensorrt.profiles import ProfileSet
    from export.onnx_io import write_model
    from export.passes.precision import convert_precision
    from export.passes.rotary import fuse_rotary
    from plugins.locate import find_plugin_library
    from tests.fixtures.checkpoints import make_model, tiny_config

    lib = find_plugin_library()
    if lib is None:
        pytest.skip("plugin library not built; run python -m plugins.build")
    cfg = tiny_config()
    model = make_model(cfg, "model")  # seed 0
    out = tmp_path_factory.mktemp("engine")
    ax = {0: "batch", 1: "sequence"}
    ids = torch.randint(0, 99, (2, 16))
    torch.onnx.export(
        model,
        (ids, torch.ones_like(ids), torch.zeros_like(ids)),
        str(out / "model.onnx"),
        dynamo=False,
        opset_version=17,
        input_names=["input_ids", "attention_mask", "token_type_ids"],
        output_names=["last_hidden_state"],
        dynamic_axes={n: ax for n in ("input_ids", "attention_mask", "token_type_ids", "last_hidden_state")},
    )
    rope, _ = fuse_rotary(onnx.load(str(out / "model.onnx")), mode="plugin", head_dim=16, max_len=64)
    fp16, _ = convert_precision(rope, "fp16")
    onnx_path = write_model(fp16, out / "model.fp16.onnx")
    profiles = ProfileSet.from_cli("1,2,4", "16", 64)
    kw = dict(
        name="model.fp16",
        plugin_lib=lib,
        profiles=profiles,
        precision="fp16",
        workspace_mib=1024,
        timing_cache=out / "timing.cache",
    )
    info = build_engine(onnx_path, out, **kw)
    return model, cfg, lib, profiles, info, onnx_path, out, kw


def test_sidecar_and_plugin_layers(built):
    _, cfg, _, profiles, info, _, out, _ = built
    side = json.loads((out / "model.fp16.plan.json").read_text())
    assert side["plugin_layers"] == cfg.num_hidden_layers  # one RoformerRotary node per layer
    assert side["profiles"] == profiles.to_report() and side["precision"] == "fp16"
    assert (out / "timing.cache").stat().st_size > 0 and not info["reused"]


def test_reuse_and_refusal(built):
    import shutil

    from engines.tensorrt.builder import build_engine
    from engines.tensorrt.profiles import ProfileSet

    _, _, _, _, _, onnx_path, out, kw = built
    assert build_engine(onnx_path, out, **kw)["reused"] is True
    shutil.copy(out / "model.fp16.plan", out / "other.plan")
    shutil.copy(out / "model.fp16.plan.json", out / "other.plan.json")
    again = build_engine(onnx_path, out, **{**kw, "name": "other", "profiles": ProfileSet.from_cli("1,2,4", "32", 64)})
    assert again["reused"] is False and [r.split(":")[0] for r in again["rebuild_reasons"]] == ["profiles"]


def test_engine_matches_pytorch_in_every_profile(built):
    from engines.tensorrt.runner import EngineRunner
    from engines.tensorrt.validate import validate_engine
    from export.validate import TorchReference

    model, cfg, lib, profiles, info, _, _, _ = built
    runner = EngineRunner(info["plan"], lib)
    cases = validate_engine(runner, TorchReference(model, "model"), profiles, "fp16", cfg.vocab_size)
    for c in cases:
        o = c["outputs"]["last_hidden_state"]
        print(f"engine-fp16 B={c['batch']} S={c['seq']} pad={c['padded_rows']}: max_abs {o['max_abs']:.3g}")
    assert cases and all(c["passed"] for c in cases)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_export_build_engine_stage_end_to_end(tmp_path, tiny_ckpt, precision):
    """The CLI path: export -> rotary pass -> mixed precision -> engine -> engine validation -> gate."""
    from engines.gate import main as gate_main
    from export.build import main
    from plugins.locate import find_plugin_library
    from tests.fixtures.tiny_build import build_args

    if find_plugin_library() is None:
        pytest.skip("plugin library not built; run python -m plugins.build")
    out = tmp_path / precision
    code = main(
        build_args(
            tiny_ckpt,
            out,
            "--precision",
            precision,
            "--batch",
            "1,2,4",
            "--profiles",
            "16,64",
            "--require-engine",
            max_len=64,
        )
    )
    report = json.loads((out / "report.json").read_text())
    assert code == 0 and report["passed"] and report["engine"]["status"] == "built"
    entry = report["engine"]["engines"][0]
    assert (out / entry["plan"]).stat().st_size > 0 and entry["plugin_layers"] == 2
    side = json.loads((out / entry["sidecar"]).read_text())
    assert {i["name"] for i in side["inputs"]} == {"input_ids", "attention_mask", "token_type_ids"}
    cases = [c for c in report["validation"] if c["graph"] == f"engine-{precision}"]
    assert {c["seq"] for c in cases} >= {1, 16, 17, 61, 64} and all(c["passed"] for c in cases)
    assert gate_main([str(out / "report.json")]) == 0

"""Triton repository generator on a tiny exported RoFormer (CPU only, no server, no TensorRT)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

try:  # any exception skips: a tritonclient installed without [grpc] raises RuntimeError, not ImportError
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2
except Exception as e:
    pytest.skip(f"tritonclient[grpc] not usable (serving extra): {type(e).__name__}: {e}", allow_module_level=True)

from engines.triton import __main__ as cli  # noqa: E402
from engines.triton import config as tc  # noqa: E402

# fp32 ORT vs PyTorch: optimum's BertOnnxConfig.ATOL_FOR_VALIDATION for BERT-family encoders
ATOL = 1e-4


@pytest.fixture(scope="module")
def tiny(served):
    return served.path, served.model


def parse(path):
    cfg = model_config_pb2.ModelConfig()
    text_format.Parse(path.read_text(), cfg)
    return cfg


def test_ort_twin_matches_onnx_io(tiny, tmp_path, capsys):
    build, model = tiny
    repo = tmp_path / "repo"
    assert cli.main(["--build", str(build), "--out", str(repo), "--pooling", "mean", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert list(summary["models"]) == ["tiny_onnx"]
    cfg = parse(repo / "tiny_onnx" / "config.pbtxt")
    assert cfg.platform == "onnxruntime_onnx" and cfg.max_batch_size == cli.DEFAULT_MAX_BATCH
    served = repo / "tiny_onnx" / "1" / "model.onnx"
    ins, outs = tc.read_onnx_io(served)
    assert [i.name for i in cfg.input] == [s.name for s in ins] == ["input_ids", "attention_mask", "token_type_ids"]
    assert all(list(i.dims) == [-1] and i.data_type == model_config_pb2.TYPE_INT64 for i in cfg.input)
    hidden = model.config.hidden_size
    assert {o.name: list(o.dims) for o in cfg.output} == {
        "last_hidden_state": [-1, hidden],
        "sentence_embedding": [hidden],
    }
    assert not cfg.dynamic_batching.preferred_batch_size  # requests of equal shape merge, up to max_batch_size
    assert cfg.dynamic_batching.max_queue_delay_microseconds == tc.QUEUE_DELAY_US
    assert cfg.parameters[tc.MAX_SEQUENCE_LENGTH].string_value == "64"  # the build's --max-len: engines.client reads it
    assert [p.name for p in repo.iterdir()] == ["tiny_onnx"]  # no staging dir left behind


def _torch_reference(model, ids, mask):
    import torch

    with torch.no_grad():
        h = model(
            input_ids=torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask),
            token_type_ids=torch.zeros_like(torch.from_numpy(ids)),
        ).last_hidden_state.double()
    m = torch.from_numpy(mask).double()[..., None]
    return h.numpy(), ((h * m).sum(1) / m.sum(1).clamp(min=1e-9)).numpy(), h[:, 0].numpy()


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_pooled_graph_matches_torch(tiny, pooling):
    import onnx

    from engines.serving.ort_model import Limits, OrtEncoder
    from export.passes.pooling import add_sentence_embedding

    build, model = tiny
    enc = OrtEncoder(add_sentence_embedding(onnx.load(str(build / "model.onnx")), pooling), Limits(64, 99))
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 99, (3, 13)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[1, 9:] = 0  # padded rows must not move the mean
    mask[2, 4:] = 0
    got = enc({"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})
    ref_h, ref_mean, ref_cls = _torch_reference(model, ids, mask)
    ref = ref_mean if pooling == "mean" else ref_cls
    err = float(np.abs(got["sentence_embedding"] - ref).max())
    print(f"{pooling}: max|ORT - torch| {err:.3g}")
    assert got["sentence_embedding"].shape == (3, model.config.hidden_size)
    assert err <= ATOL
    assert float(np.abs(got["last_hidden_state"] - ref_h).max()) <= ATOL


def test_tensorrt_config_from_engine_metadata(tiny):
    """The tensorrt_plan config from profile metadata and sidecar dtypes (no plan is read)."""
    build, _ = tiny
    ins, outs = tc.read_onnx_io(build / "model.onnx")
    dtypes = tc.sidecar_dtypes({"outputs": [{"name": "last_hidden_state", "dtype": "DataType.HALF"}]})
    cfg = tc.make_config("tiny_fp16", "tensorrt_plan", ins, outs, 32, dtypes=dtypes, profiles=[0, 1], instances=2)
    parsed = tc.check_config(tc.config_text(cfg), ins, outs, dtypes)
    assert parsed.platform == "tensorrt_plan" and parsed.max_batch_size == 32
    assert [(list(g.profile), g.count) for g in parsed.instance_group] == [(["0", "1"], 2)]  # one group, every profile
    assert parsed.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert not parsed.dynamic_batching.preferred_batch_size
    out = {o.name: o for o in parsed.output}
    assert out["last_hidden_state"].data_type == model_config_pb2.TYPE_FP16


def test_multiple_choice_inputs_keep_choices_axis():
    spec = tc.TensorSpec("input_ids", "int64", ("batch", "choices", "sequence"))
    assert spec.triton_dims() == [-1, -1]


def test_check_config_names_every_difference(tiny):
    build, _ = tiny
    ins, outs = tc.read_onnx_io(build / "model.onnx")
    text = tc.config_text(tc.make_config("t", "onnxruntime_onnx", ins, outs, 4)).replace('"token_type_ids"', '"tti"')
    with pytest.raises(tc.VerificationError, match="input names"):
        tc.check_config(text, ins, outs)
    with pytest.raises(tc.VerificationError, match="does not parse"):
        tc.check_config(text + "\nnot_a_field: 1\n", ins, outs)


def test_usage_errors_exit_2(tiny, tmp_path, capsys):
    build, _ = tiny
    assert cli.main(["--build", str(tmp_path / "missing"), "--out", str(tmp_path / "r")]) == 2
    assert "export.build" in capsys.readouterr().err
    repo = tmp_path / "r2"
    assert cli.main(["--build", str(build), "--out", str(repo)]) == 0
    before = (repo / "tiny_onnx" / "config.pbtxt").read_text()
    assert cli.main(["--build", str(build), "--out", str(repo), "--max-batch", "4"]) == 2
    assert "--force" in capsys.readouterr().err
    assert cli.main(["--build", str(build), "--out", str(repo), "--max-batch", "4", "--force"]) == 0
    assert (
        parse(repo / "tiny_onnx" / "config.pbtxt").max_batch_size == 4
        and before != (repo / "tiny_onnx" / "config.pbtxt").read_text()
    )
    report = json.loads((build / "report.json").read_text())
    bad = tmp_path / "bad"
    shutil.copytree(build, bad)  # every file of the build, the plan the doctored report names excepted
    report["engine"] = {
        "engines": [
            {
                "plan": "model.fp16.plan",
                "precision": "fp16",
                "profiles": [{"batch": [1, 4, 8], "sequence": [1, 32, 64]}],
            }
        ]
    }
    (bad / "report.json").write_text(json.dumps(report))
    assert cli.main(["--build", str(bad), "--out", str(tmp_path / "r3")]) == 2  # the plan is no artifact of it
    assert "model.fp16.plan" in capsys.readouterr().err


def test_pooling_needs_hidden_state(tiny):
    import onnx

    from export.passes.pooling import add_sentence_embedding

    build, _ = tiny
    m = onnx.load(str(build / "model.onnx"))
    m.graph.output[0].name = "logits"
    with pytest.raises(tc.UsageError, match="last_hidden_state"):
        add_sentence_embedding(m, "mean")


# ---- a build made with export.build --pooling: both models serve its sentence_embedding ----------------------


def test_twin_serves_the_builds_own_pooling(pooled, tmp_path, capsys):
    import onnx

    from export.validate import OnnxFile, Shape, make_inputs, ort_session

    repo = tmp_path / "repo"
    assert cli.main(["--build", str(pooled), "--out", str(repo), "--json"]) == 0  # --pooling none keeps the build's
    summary = json.loads(capsys.readouterr().out)
    assert summary["models"]["tiny_onnx"]["pooling"] == "mean, L2-normalised"
    twin = repo / "tiny_onnx" / "1" / "model.onnx"
    hidden = json.loads((pooled / "report.json").read_text())["model"]["hidden"]
    cfg = parse(repo / "tiny_onnx" / "config.pbtxt")
    assert {o.name: list(o.dims) for o in cfg.output} == {
        "last_hidden_state": [-1, hidden],
        "sentence_embedding": [hidden],
    }
    feeds = make_inputs(Shape(3, 19, padded_rows=2), vocab_size=99, type_vocab_size=2)
    engine_graph = ort_session(OnnxFile(pooled / "model.rope-plugin.onnx", rotary_function=True))
    names = [o.name for o in engine_graph.get_outputs()]
    want = dict(zip(names, engine_graph.run(None, feeds), strict=True))["sentence_embedding"]
    got = ort_session(onnx.load(str(twin))).run(["sentence_embedding"], feeds)[0]
    assert float(np.abs(got - want).max()) <= ATOL  # same pooling, normalisation included, as the TensorRT-bound graph
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-6)


def test_one_request_fits_both_models_of_a_pooled_build(pooled, tmp_path):
    """The TensorRT model's config (from the graph TensorRT builds from) and the twin's declare the same inputs and
    the same sentence_embedding, so engines.client's one request (int64 inputs, sentence_embedding) fits both."""
    repo = tmp_path / "repo"
    assert cli.main(["--build", str(pooled), "--out", str(repo), "--pooling", "mean"]) == 0
    twin = parse(repo / "tiny_onnx" / "config.pbtxt")
    ins, outs = tc.read_onnx_io(pooled / "model.rope-plugin.fp16.onnx")
    trt = tc.check_config(tc.config_text(tc.make_config("tiny_fp16", "tensorrt_plan", ins, outs, 8)), ins, outs)
    assert [(i.name, i.data_type, list(i.dims)) for i in trt.input] == [
        (i.name, i.data_type, list(i.dims)) for i in twin.input
    ]
    hidden = json.loads((pooled / "report.json").read_text())["model"]["hidden"]

    def embedding(cfg):
        return next((o.data_type, list(o.dims)) for o in cfg.output if o.name == "sentence_embedding")

    assert embedding(trt) == embedding(twin) == (model_config_pb2.TYPE_FP32, [hidden])


def test_pooling_flag_must_agree_with_the_build(pooled, tmp_path, capsys):
    repo = tmp_path / "repo"
    assert cli.main(["--build", str(pooled), "--out", str(repo), "--pooling", "cls"]) == 2
    err = capsys.readouterr().err
    assert "--pooling cls disagrees" in err and "mean, L2-normalised pooling" in err and "--pooling mean or none" in err
    assert not repo.exists() or not list(repo.iterdir())


def test_instances_must_be_positive(tiny, tmp_path, capsys):
    build, _ = tiny
    assert cli.main(["--build", str(build), "--out", str(tmp_path / "r"), "--instances", "0"]) == 2
    assert "--instances must be from 1" in capsys.readouterr().err

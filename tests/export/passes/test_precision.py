"""export.passes.precision on a tiny exported RoFormer: dtype policy, ORT accuracy vs PyTorch fp32, bf16 checker.

Every test runs on the tiny checkpoint and on its outlier stress twin (tests.fixtures.checkpoints.add_outliers):
low precision is what outlier channels break."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from export.errors import UsageError
from export.passes.precision import convert_precision, parse_precision, plan_precision, write_precision_variants
from export.report.thresholds import Thresholds
from export.validate import Shape, TorchReference, make_inputs, ort_session, validate_graphs

AXES = {0: "batch", 1: "sequence"}
SHAPES = [Shape(1, 1), Shape(2, 16), Shape(3, 29, padded_rows=2), Shape(1, 64)]  # 29: prime; 64 = max_len


@pytest.fixture(scope="module", params=["tiny", "tiny-stress"])
def tiny(tmp_path_factory, request):
    from tests.fixtures.checkpoints import add_outliers, make_model, tiny_config

    cfg = tiny_config()
    model = make_model(cfg, "model")
    if request.param == "tiny-stress":
        add_outliers(model)
    path = tmp_path_factory.mktemp("tiny") / "model.onnx"
    ids = torch.randint(0, 99, (2, 16))
    torch.onnx.export(
        model,
        (ids, torch.ones_like(ids), torch.zeros_like(ids)),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["input_ids", "attention_mask", "token_type_ids"],
        output_names=["last_hidden_state"],
        dynamic_axes={n: AXES for n in ("input_ids", "attention_mask", "token_type_ids", "last_hidden_state")},
    )
    return model, cfg, path


def _types(model: onnx.ModelProto) -> dict[str, int]:
    inf = onnx.shape_inference.infer_shapes(model)
    t = {v.name: v.type.tensor_type.elem_type for v in [*inf.graph.value_info, *inf.graph.input, *inf.graph.output]}
    t.update({i.name: i.data_type for i in inf.graph.initializer})
    return t


def test_parse_precision_rejects_unknown():
    assert parse_precision("FP16") == "fp16"
    with pytest.raises(UsageError, match="fp32, fp16, bf16, int8, fp8"):
        parse_precision("int4")


def test_the_precision_pass_leaves_int8_and_fp8_to_quantization(exported):
    path, _, _ = exported("torchscript", 17)
    with pytest.raises(UsageError, match="export.passes.quantize"):
        convert_precision(onnx.load(str(path)), "int8")


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_dtype_policy(tiny, precision):
    _, cfg, path = tiny
    src = onnx.load(str(path))
    low = {"fp16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16}[precision]
    out, rep = convert_precision(src, precision)
    onnx.checker.check_model(out, full_check=True)
    types = _types(out)
    by_op = {}
    for n in out.graph.node:
        by_op.setdefault(n.op_type, []).append(n)
    # every MatMul computes in low precision: both inputs (weights included) are low
    assert len(by_op["MatMul"]) == 8 * cfg.num_hidden_layers  # q, k, v, QK^T, PV, attn out, ffn in, ffn out
    for n in by_op["MatMul"]:
        assert [types[i] for i in n.input] == [low, low], n.name
    for op in ("LayerNormalization", "Softmax"):
        for n in by_op[op]:
            assert types[n.input[0]] == TensorProto.FLOAT and types[n.output[0]] == TensorProto.FLOAT, n.name
    # residual Adds feed LayerNormalization: fp32 (their input is the previous LayerNorm's fp32 output)
    producers = {o: n for n in out.graph.node for o in n.output}
    for ln in by_op["LayerNormalization"][1:]:
        add = producers[ln.input[0]]
        assert add.op_type == "Add" and types[add.output[0]] == TensorProto.FLOAT
    # I/O keep their dtypes
    assert all(i.type.tensor_type.elem_type == TensorProto.INT64 for i in out.graph.input)
    assert [o.type.tensor_type.elem_type for o in out.graph.output] == [TensorProto.FLOAT]
    assert rep["ops"]["MatMul"] == {"low": 8 * cfg.num_hidden_layers}
    assert src.SerializeToString() == onnx.load(str(path)).SerializeToString()  # input model untouched


def test_fp16_and_bf16_emulated_match_pytorch_fp32(tiny, tmp_path):
    model, cfg, path = tiny
    src = onnx.load(str(path))
    fp16, _ = convert_precision(src, "fp16")
    twin, _ = convert_precision(src, "bf16", emulate=True)
    graphs = {"onnx": (src, "fp32"), "fp16": (fp16, "fp16"), "bf16-emulated": (twin, "bf16")}
    cases = validate_graphs(
        graphs, TorchReference(model, "model"), SHAPES, Thresholds.defaults(), cfg.vocab_size, cfg.type_vocab_size
    )
    assert len(cases) == len(graphs) * len(SHAPES)
    for c in cases:
        o = c["outputs"]["last_hidden_state"]
        print(
            f"{c['graph']:>14} B={c['batch']} S={c['seq']} pad={c['padded_rows']}: max_abs {o['max_abs']:.3g} "
            f"scaled_error {o['scaled_error']:.3g} cosine {o['cosine']:.9f} row_cosine {o['row_cosine']:.12f}"
        )
    assert all(c["passed"] for c in cases), [c for c in cases if not c["passed"]]

    # Flash-attention-style bound: the mixed-precision graph is at most twice as wrong as PyTorch run
    # entirely in that dtype (everything low, LayerNorm and Softmax included), on the same inputs.
    shape = Shape(3, 29, padded_rows=2)
    feeds = make_inputs(shape, cfg.vocab_size, cfg.type_vocab_size)
    ref = TorchReference(model, "model")(shape, feeds)["last_hidden_state"].astype(np.float64)
    for graph, dtype, eps in (("fp16", torch.float16, 2.0**-11), ("bf16-emulated", torch.bfloat16, 2.0**-8)):
        sess = ort_session(graphs[graph][0])
        got = sess.run(None, feeds)[0]
        low_model = type(model)(cfg).eval()
        low_model.load_state_dict(model.state_dict())
        with torch.no_grad():
            base = low_model.to(dtype)(**{k: torch.from_numpy(v) for k, v in feeds.items()}).last_hidden_state
        err = np.abs(got - ref).max()
        base_err = np.abs(base.double().numpy() - ref).max()
        print(f"{graph}: ours {err:.3g} | torch-{dtype} {base_err:.3g}")
        assert err <= 2 * base_err + eps


def test_real_bf16_file_passes_checker(tiny, tmp_path):
    _, _, path = tiny
    paths, rep = write_precision_variants(path, "bf16", tmp_path)
    assert set(paths) == {"bf16", "bf16-emulated"}
    # every MatMul low, every LayerNorm fp32 (the conversion report that export.build puts in report.json)
    assert rep["precision"] == "bf16" and set(rep["ops"]["MatMul"]) == {"low"}
    assert set(rep["ops"]["LayerNormalization"]) == {"fp32"}
    onnx.checker.check_model(paths["bf16"], full_check=True)
    real = onnx.load(paths["bf16"])
    weights = [i for i in real.graph.initializer if i.data_type == TensorProto.BFLOAT16]
    assert weights and all(len(i.raw_data) == 2 * int(np.prod(i.dims)) for i in weights)
    # the emulated twin is all fp32 and holds the same bf16-rounded weight values
    twin = onnx.load(paths["bf16-emulated"])
    assert not [i for i in twin.graph.initializer if i.data_type == TensorProto.BFLOAT16]
    w = weights[0]
    bits = np.frombuffer(w.raw_data, dtype=np.uint16).astype(np.uint32) << 16
    tw = {i.name: numpy_helper.to_array(i) for i in twin.graph.initializer}[w.name]
    np.testing.assert_array_equal(bits.view(np.float32).reshape(tw.shape), tw)


def _graph(nodes, inits, extra_opset=None):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 4, "S", 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 4, "S", 8])
    g = helper.make_graph(nodes, "g", [x], [y], inits)
    ops = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(extra_opset, 1)] if extra_opset else [])
    return helper.make_model(g, opset_imports=ops)


def test_decomposed_layernorm_stays_fp32():
    w = numpy_helper.from_array(np.eye(8, dtype=np.float32), "w")
    two = numpy_helper.from_array(np.array(2.0, np.float32), "two")
    eps = numpy_helper.from_array(np.array(1e-12, np.float32), "eps")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("ReduceMean", ["h"], ["mu"], axes=[-1]),
        helper.make_node("Sub", ["h", "mu"], ["d"]),
        helper.make_node("Pow", ["d", "two"], ["d2"]),
        helper.make_node("ReduceMean", ["d2"], ["var"], axes=[-1]),
        helper.make_node("Add", ["var", "eps"], ["ve"]),
        helper.make_node("Sqrt", ["ve"], ["sd"]),
        helper.make_node("Div", ["d", "sd"], ["y"]),
    ]
    model = _graph(nodes, [w, two, eps])
    plan = plan_precision(model, "fp16")
    dt = {model.graph.node[i].output[0]: d for i, d in plan.node_dtype.items()}
    assert dt == {
        "h": "low",
        "mu": "fp32",
        "d": "fp32",
        "d2": "fp32",
        "var": "fp32",
        "ve": "fp32",
        "sd": "fp32",
        "y": "fp32",
    }
    out, _ = convert_precision(model, "fp16")
    onnx.checker.check_model(out, full_check=True)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_rotary_plugin_node_takes_low_x_and_fp32_sincos(precision):
    from export.reference import sincos_table

    low = {"fp16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16}[precision]
    w = numpy_helper.from_array(np.eye(8, dtype=np.float32), "w")
    table = numpy_helper.from_array(sincos_table(16, 8), "roformer_rotary_sincos")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["q"]),
        helper.make_node("MatMul", ["x", "w"], ["k"]),
        helper.make_node(
            "RoformerRotary",
            ["q", "k", "roformer_rotary_sincos"],
            ["qr", "kr"],
            domain="roformer_trt",
            interleaved=1,
            rotary_dim=8,
            plugin_version="1",
            plugin_namespace="roformer_trt",
        ),
        helper.make_node("Add", ["qr", "kr"], ["y"]),
    ]
    model = _graph(nodes, [w, table], extra_opset="roformer_trt")
    out, _ = convert_precision(model, precision)
    onnx.checker.check_model(out, full_check=True)
    types = _types(out)
    rot = next(n for n in out.graph.node if n.op_type == "RoformerRotary")
    assert [types[i] for i in rot.input] == [low, low, TensorProto.FLOAT]
    assert rot.input[-1] == "roformer_rotary_sincos"  # the shared fp32 table itself, not a converted copy
    assert [types[o] for o in rot.output] == [low, low]
    assert out.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT


@pytest.mark.parametrize("precision,graph", [("fp16", "fp16"), ("bf16", "bf16-emulated")])
def test_rope_plugin_graph_in_low_precision_matches_pytorch(tiny, precision, graph):
    """The TensorRT-bound graph (export.passes.rotary, plugin mode) after the precision pass, run on ORT
    through the in-memory lowering of RoformerRotary: plugin x inputs low, sincos fp32, accuracy held."""
    from export.passes.lowering import with_rotary_function
    from export.passes.rotary import fuse_rotary

    model, cfg, path = tiny
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    rope, _ = fuse_rotary(onnx.load(str(path)), mode="plugin", head_dim=head_dim, max_len=cfg.max_position_embeddings)
    n_rot = sum(n.op_type == "RoformerRotary" for n in rope.graph.node)
    assert n_rot == cfg.num_hidden_layers
    low, _ = convert_precision(rope, precision, emulate=graph.endswith("emulated"))
    if not graph.endswith("emulated"):
        onnx.checker.check_model(low, full_check=True)
        types = _types(low)
        for n in (n for n in low.graph.node if n.op_type == "RoformerRotary"):
            assert types[n.input[-1]] == TensorProto.FLOAT
            assert {types[i] for i in n.input[:-1]} == {TensorProto.FLOAT16}
    cases = validate_graphs(
        {graph: (with_rotary_function(low), precision)},
        TorchReference(model, "model"),
        SHAPES[1:3],
        Thresholds.defaults(),
        cfg.vocab_size,
        cfg.type_vocab_size,
    )
    for c in cases:
        o = c["outputs"]["last_hidden_state"]
        print(
            f"rope-plugin {graph} B={c['batch']} S={c['seq']}: scaled_error {o['scaled_error']:.3g} "
            f"row_cosine {o['row_cosine']:.12f}"
        )
    assert all(c["passed"] for c in cases)

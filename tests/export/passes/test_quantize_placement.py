"""Where Q/DQ go, how the weights are stored, and the structural check that catches every departure."""

from __future__ import annotations

import dataclasses

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.onnx_io import write_model
from export.passes.lowering import with_rotary_function
from export.passes.quantize import build, check_quantized, plan
from export.passes.quantize.placement import DQ_OP, Q_OP
from export.passes.quantize.qdq import quantize_weight
from plugins.identity import PLUGIN_OP
from tests.export.passes.quantize_fixtures import calibrated, rope_graph

LINEAR_PER_LAYER = 6  # Q, K, V, attention output, FFN in, FFN out
ATTENTION_PER_LAYER = 2  # Q·Kᵀ and softmax·V


def test_placement_covers_every_matmul_and_nothing_else(tmp_path_factory, exported):
    src, _, config = rope_graph(exported, tmp_path_factory)
    p = plan(src)
    layers = config.num_hidden_layers
    assert p.counts() == {
        "attention": {"quantized": ATTENTION_PER_LAYER * layers, "high": 0},
        "linear": {"quantized": LINEAR_PER_LAYER * layers, "high": 0},
    }
    model = onnx.load(str(src), load_external_data=False)
    ops = {n.name: n.op_type for n in model.graph.node}
    assert {ops[s.node] for s in p.sites} == {"MatMul"}
    inits = {i.name: i for i in model.graph.initializer}
    for s in p.sites:
        if s.role == "linear" and s.index == 1:  # MatMul(x, W [K, N]): per-channel along N
            assert s.kind == "weight" and s.axis == 1 and len(inits[s.tensor].dims) == 2
        else:
            assert s.kind == "activation"
    residual = plan(src, residual=True)
    assert residual.counts()["residual"] == {"quantized": 2 * layers, "high": 0}  # attention and FFN skip Adds
    assert sum(s.role == "residual" for s in residual.sites) == 2 * 2 * layers  # both inputs of each


@pytest.mark.parametrize("fmt,high", [("int8", "fp16"), ("fp8", "fp16"), ("int8", "fp32")])
def test_built_graph_is_the_placement_and_keeps_the_plugin_nodes(tmp_path_factory, exported, fmt, high):
    src, _, config = rope_graph(exported, tmp_path_factory)
    placement, amax, _ = calibrated(src, config, fmt)
    model, summary = build(src, placement, amax, fmt, high)
    assert check_quantized(model, placement) == []
    write_model(model, src.with_name(f"check.{fmt}.{high}.onnx"), check=True, external=True)  # full check, on disk
    assert summary.opset == {"source": 18, "graph": 19}
    source = onnx.load(str(src), load_external_data=False)
    plugin = [n for n in model.graph.node if n.op_type == PLUGIN_OP]
    assert len(plugin) == sum(n.op_type == PLUGIN_OP for n in source.graph.node) == config.num_hidden_layers
    with_rotary_function(model)  # the plugin's own node checks still pass
    qtype = TensorProto.INT8 if fmt == "int8" else TensorProto.FLOAT8E4M3FN
    inits = {i.name: i for i in model.graph.initializer}
    weights = [n for n in model.graph.node if n.op_type == DQ_OP and n.input[0] in inits]
    assert len(weights) == LINEAR_PER_LAYER * config.num_hidden_layers
    high_type = TensorProto.FLOAT16 if high == "fp16" else TensorProto.FLOAT
    for dq in weights:
        assert inits[dq.input[0]].data_type == qtype
        assert inits[dq.input[1]].data_type == high_type
        assert len(inits[dq.input[1]].dims) == (1 if fmt == "int8" else 0)  # per-channel INT8, per-tensor FP8


def test_check_catches_every_departure(tmp_path_factory, exported):
    src, _, config = rope_graph(exported, tmp_path_factory)
    placement, amax, _ = calibrated(src, config)
    good, _ = build(src, placement, amax, "int8", "fp16")
    nodes = {n.name: n for n in good.graph.node}

    def broken(change):
        m = onnx.ModelProto()
        m.CopyFrom(good)
        change(m, {n.name: n for n in m.graph.node})
        return check_quantized(m, placement)

    site = next(s for s in placement.sites if s.kind == "activation")
    dq_out = nodes[site.node].input[site.index]
    made = {o: n for n in good.graph.node for o in n.output}
    before_q = made[made[dq_out].input[0]].input[0]  # DQ <- Q <- the tensor as the high-precision graph has it

    def bypass(m, byname):  # one site reads its tensor directly
        byname[site.node].input[site.index] = before_q

    assert any(f"{site.node} input {site.index}" in p and "has no Q/DQ" in p for p in broken(bypass))

    softmax = next(n for n in good.graph.node if n.op_type == "Softmax")

    def into_softmax(m, byname):  # a dequantized tensor feeding Softmax
        byname[softmax.name].input[0] = dq_out

    assert any("Softmax" in p and "outside the rules" in p for p in broken(into_softmax))

    rotary = next(n for n in good.graph.node if n.op_type == PLUGIN_OP)

    def into_rotary(m, byname):  # Q/DQ inside a rotary site
        byname[rotary.name].input[0] = dq_out

    assert any("rotary node" in p for p in broken(into_rotary))
    kept = placement.with_kept({site.node})
    assert any("kept the node high" in p for p in check_quantized(good, kept))

    # judged per input: a node with one site may not have Q/DQ on another input (here: the rules minus one
    # activation site of a node whose weight stays a site)
    weight = next(s for s in placement.sites if s.kind == "weight")
    dropped = next(s for s in placement.sites if s.node == weight.node and s.kind == "activation")
    fewer = dataclasses.replace(placement, sites=[s for s in placement.sites if s != dropped])
    assert any(
        f"{dropped.node} input {dropped.index} reads a dequantized tensor" in p for p in check_quantized(good, fewer)
    )
    q_node = made[made[dq_out].input[0]]

    def computed_on(m, byname):  # an integer tensor read by a float op
        byname[softmax.name].input[0] = q_node.output[0]

    assert any("read by a node other than DequantizeLinear" in p for p in broken(computed_on))
    scale_name = made[dq_out].input[1]

    def zero_scale(m, byname):
        for init in m.graph.initializer:
            if init.name == scale_name:
                init.CopyFrom(numpy_helper.from_array(np.zeros((), numpy_helper.to_array(init).dtype), scale_name))

    assert any("positive finite scale" in p for p in broken(zero_scale))

    def orphan(m, byname):  # a Q/DQ pair left behind, read by nothing
        m.graph.node.extend(
            [
                helper.make_node(Q_OP, [before_q, scale_name, made[dq_out].input[2]], ["orphan_q"], name="orphan_Q"),
                helper.make_node(DQ_OP, ["orphan_q", scale_name, made[dq_out].input[2]], ["orphan"], name="orphan_DQ"),
            ]
        )

    assert any("orphan_DQ is read by nothing" in p for p in broken(orphan))


def test_fallback_kept_nodes_read_their_fp_inputs(tmp_path_factory, exported):
    src, _, config = rope_graph(exported, tmp_path_factory)
    placement, amax, _ = calibrated(src, config)
    keep = {placement.nodes()[0], placement.nodes()[-1]}
    model, _ = build(src, placement.with_kept(keep), amax, "int8", "fp16")
    assert check_quantized(model, placement.with_kept(keep)) == []
    made = {o: n.op_type for n in model.graph.node for o in n.output}
    for n in model.graph.node:
        if n.name in keep:
            assert all(made.get(t) != DQ_OP for t in n.input), n


@pytest.mark.parametrize("fmt", ["int8", "fp8"])
def test_weight_quantization_error_is_within_half_a_step(fmt):
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.02, (64, 48)).astype(np.float32)
    w[:, 3] *= 40  # one loud output channel
    q, scale = quantize_weight(w, fmt, axis=1, high=np.float32)
    if fmt == "int8":
        assert q.dtype == np.int8 and scale.shape == (48,) and np.abs(q).max() <= 127
        back = q.astype(np.float32) * scale
        assert np.all(np.abs(back - w) <= scale / 2 + 1e-12)  # round to nearest: half a step per channel
        assert np.allclose(np.abs(w).max(axis=0), 127 * scale)
    else:
        assert q.dtype == ml_dtypes.float8_e4m3fn and scale.shape == ()
        back = q.astype(np.float32) * scale
        normal = np.abs(w) >= 2.0**-6 * scale  # E4M3's smallest normal, in w's units
        assert np.all(np.abs(back - w)[normal] <= 2.0**-4 * np.abs(w)[normal] + 1e-12)  # 3 mantissa bits
        assert np.isclose(np.abs(w).max(), 448 * scale)


def test_fp16_scale_never_underflows_to_zero():
    w = np.full((4, 2), 1e-9, np.float32)  # below fp16's smallest subnormal once divided by 127
    _, scale = quantize_weight(w, "int8", axis=1, high=np.float16)
    assert np.all(scale > 0)


def test_activation_scale_of_a_constant_zero_tensor_is_positive(tmp_path_factory, exported):
    src, _, config = rope_graph(exported, tmp_path_factory)
    placement, amax, _ = calibrated(src, config)
    site = next(s for s in placement.sites if s.kind == "activation")
    tiny = {**amax, site.tensor: 0.0}  # a tensor that was zero on every calibration sample
    model, summary = build(src, placement, tiny, "int8", "fp16")
    assert summary.activations[site.tensor]["scale"] > 0
    assert check_quantized(model, placement) == []


def test_qdq_in_onnx_runtime_matches_numpy_fake_quantization():
    """The DQ(Q(x)) our nodes compute in ORT equals numpy's round-to-nearest-even with the same scale."""
    import onnxruntime as ort

    x = np.linspace(-3, 3, 101, dtype=np.float32).reshape(1, 101)
    scale = np.float32(3 / 127)
    g = helper.make_graph(
        [helper.make_node(Q_OP, ["x", "s", "z"], ["q"]), helper.make_node(DQ_OP, ["q", "s", "z"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 101])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 101])],
        [numpy_helper.from_array(np.array(scale), "s"), numpy_helper.from_array(np.array(0, np.int8), "z")],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)])
    y = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.array_equal(y, np.clip(np.rint(x / scale), -128, 127) * scale)

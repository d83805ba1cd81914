"""The pooling pass on small hand-made graphs: sentence-transformers' rules, fp32 whatever the hidden state is
stored in, the outputs asked for, the metadata readers check, and the precision pass keeping it fp32."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from export.errors import UsageError
from export.passes.pooling import (
    EMBEDDING,
    HIDDEN,
    Pooling,
    add_sentence_embedding,
    check_task,
    declared_pooling,
    parse_pooling,
)
from export.passes.precision import plan_precision
from export.reference import sentence_embedding_ref
from export.spec import TASKS

D = 6


def encoder_graph(hidden_elem: int = TensorProto.FLOAT) -> onnx.ModelProto:
    """inputs h [batch, sequence, D] fp32 and attention_mask; output last_hidden_state = h (cast to `hidden_elem`)."""
    h = helper.make_tensor_value_info("h", TensorProto.FLOAT, ["batch", "sequence", D])
    mask = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"])
    out = helper.make_tensor_value_info(HIDDEN, hidden_elem, ["batch", "sequence", D])
    node = helper.make_node("Cast", ["h"], [HIDDEN], to=hidden_elem)
    graph = helper.make_graph([node], "enc", [h, mask], [out])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def run(model, h, mask) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, {"h": h, "attention_mask": mask}), strict=True))


def inputs(seed: int = 0):
    rng = np.random.default_rng(seed)
    h = rng.normal(size=(4, 7, D)).astype(np.float32)
    mask = np.ones((4, 7), np.int64)
    mask[1, 3:] = 0  # padded rows must not move the mean
    mask[2, 1:] = 0
    mask[3, :] = 0  # an all-padding row: zeros (the 1e-9 clamp), not NaN
    return h, mask


def sentence_transformers(h: torch.Tensor, mask: torch.Tensor, mode: str, normalize: bool) -> torch.Tensor:
    """sentence-transformers' Pooling (mean tokens / cls token) and Normalize modules, as they compute it."""
    if mode == "cls":
        out = h[:, 0]
    else:
        input_mask_expanded = mask.unsqueeze(-1).expand(h.size()).to(h.dtype)
        sum_embeddings = torch.sum(h * input_mask_expanded, 1)
        sum_mask = torch.clamp(input_mask_expanded.sum(1), min=1e-9)
        out = sum_embeddings / sum_mask
    return torch.nn.functional.normalize(out, p=2, dim=1) if normalize else out


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("mode", ["mean", "cls"])
def test_reference_is_sentence_transformers_rule(mode, normalize):
    h, mask = inputs()
    want = sentence_transformers(torch.from_numpy(h).double(), torch.from_numpy(mask), mode, normalize).numpy()
    got = sentence_embedding_ref(h, mask, mode, normalize)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-15)  # both float64: same formula, same rounding
    if mode == "mean":
        assert not got[3].any()  # all padding: zeros


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("mode", ["mean", "cls"])
@pytest.mark.parametrize("stored", [TensorProto.FLOAT, TensorProto.FLOAT16])
def test_graph_output_matches_reference_in_fp32(mode, normalize, stored):
    model = add_sentence_embedding(encoder_graph(stored), mode, normalize)
    h, mask = inputs(1)
    got = run(model, h, mask)
    stored_h = got[HIDDEN].astype(np.float32)  # what the graph pools: h as stored (fp16-rounded for fp16)
    assert got[EMBEDDING].dtype == np.float32 and got[EMBEDDING].shape == (4, D)
    emb_type = next(o for o in model.graph.output if o.name == EMBEDDING).type.tensor_type
    assert emb_type.elem_type == TensorProto.FLOAT
    assert [d.dim_param or d.dim_value for d in emb_type.shape.dim] == ["batch", D]
    # fp32 sums of 7 terms of |h| < 5 against float64: a few ulp of float32 at that scale
    np.testing.assert_allclose(
        got[EMBEDDING], sentence_embedding_ref(stored_h, mask, mode, normalize), rtol=0, atol=1e-5
    )
    assert np.isfinite(got[EMBEDDING]).all()


def test_outputs_and_metadata():
    both = add_sentence_embedding(encoder_graph(), Pooling("mean", normalize=True))
    assert [o.name for o in both.graph.output] == [HIDDEN, EMBEDDING]
    assert declared_pooling(both) == Pooling("mean", True, keep_hidden=True)
    only = add_sentence_embedding(encoder_graph(), Pooling("cls", keep_hidden=False))
    assert [o.name for o in only.graph.output] == [EMBEDDING]
    assert declared_pooling(only) == Pooling("cls", False, keep_hidden=False)
    h, mask = inputs()
    assert list(run(only, h, mask)) == [EMBEDDING]
    assert declared_pooling(encoder_graph()) is None
    assert all(n.name.startswith("pool/") for n in only.graph.node[1:])


def test_a_pooled_graph_agrees_or_refuses():
    pooled = add_sentence_embedding(encoder_graph(), "mean", normalize=True)
    assert add_sentence_embedding(pooled, "mean") is pooled  # same mode: as it is, its normalisation kept
    assert add_sentence_embedding(pooled, "none") is pooled
    with pytest.raises(UsageError, match="mean, L2-normalised pooling, and cls was asked for"):
        add_sentence_embedding(pooled, "cls")
    foreign = onnx.ModelProto()
    foreign.CopyFrom(pooled)
    del foreign.metadata_props[:]
    with pytest.raises(UsageError, match="does not say how it was pooled"):
        declared_pooling(foreign)


def test_pooling_needs_hidden_state_and_mask():
    m = encoder_graph()
    m.graph.output[0].name = "logits"
    with pytest.raises(UsageError, match="last_hidden_state"):
        add_sentence_embedding(m, "mean")
    m = encoder_graph()
    m.graph.input[1].name = "mask"
    with pytest.raises(UsageError, match="attention_mask"):
        add_sentence_embedding(m, "mean")


@pytest.mark.parametrize("task", sorted(TASKS))
def test_pooling_only_for_heads_with_hidden_states(task):
    if task == "model":
        check_task(Pooling("mean"), task)
        return
    with pytest.raises(UsageError, match=f"a {task} checkpoint .* drop --pooling"):
        check_task(Pooling("cls"), task)
    check_task(None, task)


@pytest.mark.parametrize(
    "args, want",
    [
        (("none", False, None), None),
        (("mean", False, None), Pooling("mean")),
        (("cls", True, "sentence_embedding"), Pooling("cls", True, keep_hidden=False)),
        (("lasttoken+mean", False, None, 4), Pooling("lasttoken+mean", truncate_dim=4)),
        (("mean", False, "last_hidden_state, sentence_embedding"), Pooling("mean")),
    ],
)
def test_parse_pooling(args, want):
    assert parse_pooling(*args) == want


@pytest.mark.parametrize(
    "args, match",
    [
        (("none", True, None), "--normalize applies"),
        (("none", False, "sentence_embedding"), "--outputs applies to a pooled output"),
        (("none", False, None, 8), "--truncate-dim applies to a pooled output"),
        (("mean", False, "last_hidden_state"), "--outputs 'last_hidden_state'"),
        (("mean", False, "sentence_embedding,logits"), "--outputs"),
        (("maximum", False, None), "--pooling 'maximum'"),
        (("cls+avg", False, None), "--pooling 'cls\\+avg'"),
    ],
)
def test_parse_pooling_refuses(args, match):
    with pytest.raises(UsageError, match=match):
        parse_pooling(*args)


def test_precision_pass_keeps_pooling_in_fp32_over_a_low_hidden_state():
    """A hidden state a MatMul produces is low in the fp16 plan; the pooling nodes read it and stay fp32 (a
    Gather of a low value would be low by the generic rule)."""
    x = helper.make_tensor_value_info("h", TensorProto.FLOAT, ["batch", "sequence", D])
    mask = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"])
    out = helper.make_tensor_value_info(HIDDEN, TensorProto.FLOAT, ["batch", "sequence", D])
    w = numpy_helper.from_array(np.eye(D, dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["h", "w"], [HIDDEN])], "enc", [x, mask], [out], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    for mode in ("cls", "mean"):
        pooled = add_sentence_embedding(model, mode, normalize=True)
        plan = plan_precision(pooled, "fp16")
        dtypes = {n.name: plan.node_dtype.get(i) for i, n in enumerate(pooled.graph.node)}
        assert dtypes[pooled.graph.node[0].name] == "low"
        assert {d for name, d in dtypes.items() if name.startswith("pool/") and d is not None} == {"fp32"}

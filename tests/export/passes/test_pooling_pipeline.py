"""sentence-transformers' pipelines in the graph (every Pooling mode, mode lists, Dense layers, truncation,
normalisation), held against the tests' own restatement of sentence-transformers 6.3.0 (st_rules.py): the
numpy reference, the graph on hand-made hidden states (opsets 17 and 18), and the graph on a real RoFormer
export at batch 1 and 3 with right padding against the rule on PyTorch's hidden states."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from export.onnx_io import write_model
from export.passes.pooling import EMBEDDING, HIDDEN, Dense, Pooling, add_sentence_embedding, declared_pooling
from export.passes.precision import plan_precision
from export.passes.quantize.placement import plan_placement
from export.report.thresholds import Thresholds
from export.validate import Shape, grade, make_inputs
from tests.export.passes import st_rules

D = 6
TORCH = {  # our activation names -> the torch.nn class path sentence-transformers saves
    "identity": "torch.nn.modules.linear.Identity",
    "tanh": "torch.nn.modules.activation.Tanh",
    "relu": "torch.nn.modules.activation.ReLU",
    "gelu": "torch.nn.modules.activation.GELU",
    "sigmoid": "torch.nn.modules.activation.Sigmoid",
    "silu": "torch.nn.modules.activation.SiLU",
}


def dense(rng, n_in: int, n_out: int, activation: str, bias: bool = True) -> Dense:
    w = rng.normal(scale=1 / np.sqrt(n_in), size=(n_out, n_in)).astype(np.float32)
    return Dense(w, rng.normal(scale=0.1, size=n_out).astype(np.float32) if bias else None, activation)


def pipelines() -> dict[str, Pooling]:
    rng = np.random.default_rng(3)
    out = {m: Pooling(m) for m in ("mean", "cls", "max", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")}
    out["cls+mean+lasttoken"] = Pooling("cls+mean+lasttoken", normalize=True)
    out["mean_norm"] = Pooling("mean", normalize=True)
    for act in TORCH:
        out[f"weightedmean_dense_{act}"] = Pooling("weightedmean", dense=(dense(rng, D, 5, act),))
    out["lasttoken_2dense_trunc_norm"] = Pooling(
        "lasttoken", True, dense=(dense(rng, D, 9, "gelu"), dense(rng, 9, 7, "tanh", bias=False)), truncate_dim=4
    )
    out["mean+max_trunc"] = Pooling("mean+max", truncate_dim=5)
    return out


def st_encode(p: Pooling, hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The pipeline as SentenceTransformer.encode(truncate_dim=N, normalize_embeddings=...) computes it."""
    denses = tuple((d.weight, d.bias, TORCH[d.activation]) for d in p.dense)
    normalize_module = p.normalize and p.truncate_dim is None
    return st_rules.encode(hidden, mask, p.modes, denses, normalize_module, p.truncate_dim, p.normalize)


def right_padded(batch: int, seq: int, seed: int = 0, all_padding_row: bool = False):
    rng = np.random.default_rng(seed)
    h = rng.normal(size=(batch, seq, D)).astype(np.float32)
    mask = np.ones((batch, seq), np.int64)
    for b in range(1, batch):
        mask[b, max(1, seq - 2 * b) :] = 0
    if all_padding_row:
        mask[-1] = 0
    return h, mask


def encoder_graph(opset: int = 18) -> onnx.ModelProto:
    h = helper.make_tensor_value_info("h", TensorProto.FLOAT, ["batch", "sequence", D])
    mask = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"])
    out = helper.make_tensor_value_info(HIDDEN, TensorProto.FLOAT, ["batch", "sequence", D])
    graph = helper.make_graph([helper.make_node("Identity", ["h"], [HIDDEN])], "enc", [h, mask], [out])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def run(model: onnx.ModelProto, feeds: dict) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True))


@pytest.mark.parametrize("name", sorted(pipelines()))
def test_reference_is_sentence_transformers_rule(name):
    p = pipelines()[name]
    h, mask = right_padded(4, 7, all_padding_row="max" not in p.mode)  # max: a row of padding is -inf
    want = st_encode(p, h, mask)
    np.testing.assert_allclose(p.reference(h, mask), want, rtol=0, atol=1e-12)


def test_all_padding_rows_follow_the_library():
    h, mask = right_padded(2, 5, all_padding_row=True)
    assert (Pooling("max").reference(h, mask)[-1] == -np.inf).all()  # masked_fill(-inf).max
    for mode in ("mean", "weightedmean", "lasttoken", "mean_sqrt_len_tokens"):
        assert not Pooling(mode).reference(h, mask)[-1].any(), mode
    np.testing.assert_array_equal(Pooling("cls").reference(h, mask)[-1], h[-1, 0])  # argmax of zeros: token 0


@pytest.mark.parametrize("opset", [17, 18])  # ReduceMax/ReduceMin take axes as an attribute before 18
@pytest.mark.parametrize("name", sorted(pipelines()))
def test_graph_computes_the_rule(name, opset):
    p = pipelines()[name]
    model = add_sentence_embedding(encoder_graph(opset), p)
    h, mask = right_padded(4, 7, seed=opset, all_padding_row="max" not in p.mode)
    got = run(model, {"h": h, "attention_mask": mask})[EMBEDDING]
    want = st_encode(p, h, mask)
    assert got.dtype == np.float32 and got.shape == want.shape == (4, p.width(D))
    declared = next(o for o in model.graph.output if o.name == EMBEDDING).type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in declared] == ["batch", p.width(D)]
    # fp32 sums of at most 7 terms |h| < 5 and Dense layers of <= 9 inputs against float64: a few float32 ulp
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)


def test_last_token_is_the_last_non_padded_one():
    """Right padding: lasttoken reads the last real token, never position S-1 (a padding token)."""
    b, s = 3, 6
    h = np.broadcast_to(np.arange(1, s + 1, dtype=np.float32)[None, :, None], (b, s, D)).copy()  # h = position + 1
    mask = np.array([[1] * 6, [1, 1, 1, 1, 0, 0], [1, 0, 0, 0, 0, 0]], np.int64)
    model = add_sentence_embedding(encoder_graph(), Pooling("lasttoken+cls+weightedmean"))
    got = run(model, {"h": h, "attention_mask": mask})[EMBEDDING]
    np.testing.assert_array_equal(got[:, 0], [6, 4, 1])  # last real token
    np.testing.assert_array_equal(got[:, D], [1, 1, 1])  # cls: the first
    w = [np.arange(1, n + 1) for n in (6, 4, 1)]  # weights 1..n on the real tokens, h = 1..n there
    np.testing.assert_allclose(got[:, 2 * D], [(x * x).sum() / x.sum() for x in w], rtol=1e-6)


def test_metadata_rebuilds_the_pipeline(tmp_path):
    p = pipelines()["lasttoken_2dense_trunc_norm"]
    model = add_sentence_embedding(encoder_graph(), p)
    assert declared_pooling(model) == p
    assert add_sentence_embedding(model, p) is model  # the same pipeline: served as it is
    other = Pooling("lasttoken", True, dense=(p.dense[0], Dense(p.dense[1].weight * 2, None, "tanh")), truncate_dim=4)
    with pytest.raises(Exception, match="already computes sentence_embedding"):
        add_sentence_embedding(model, other)
    wide = Pooling("mean", dense=(dense(np.random.default_rng(1), D, 64, "tanh"),))  # 1.5 kB: stored outside
    path = write_model(add_sentence_embedding(encoder_graph(), wide), tmp_path / "pooled.onnx", external=True)
    bare = onnx.load(str(path), load_external_data=False)
    assert any(t.data_location == TensorProto.EXTERNAL for t in bare.graph.initializer)
    with pytest.raises(Exception, match="external data"):
        declared_pooling(bare)
    assert declared_pooling(bare, tmp_path) == wide


def test_precision_and_quantization_leave_the_dense_layers_fp32():
    x = helper.make_tensor_value_info("h", TensorProto.FLOAT, ["batch", "sequence", D])
    mask = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"])
    out = helper.make_tensor_value_info(HIDDEN, TensorProto.FLOAT, ["batch", "sequence", D])
    w = onnx.numpy_helper.from_array(np.eye(D, dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["h", "w"], [HIDDEN], name="enc")], "e", [x, mask], [out], [w]
    )
    pooled = add_sentence_embedding(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), pipelines()["weightedmean_dense_gelu"]
    )
    plan = plan_precision(pooled, "fp16")
    dtypes = {n.name: plan.node_dtype.get(i) for i, n in enumerate(pooled.graph.node)}
    assert dtypes["enc"] == "low" and dtypes["pool/dense0/matmul"] == "fp32"
    assert {d for name, d in dtypes.items() if name.startswith("pool/") and d is not None} == {"fp32"}
    assert plan_placement(pooled).nodes() == ["enc"]  # the encoder's MatMul only, never the pooling's


@pytest.mark.parametrize("name", ["lasttoken_2dense_trunc_norm", "cls+mean+lasttoken", "weightedmean_dense_tanh"])
def test_on_a_roformer_export_against_pytorch(exported, name):
    """The pass on a real export: batch 1 and 3 with right padding, graded against the rule on PyTorch's hidden
    states with the default fp32 thresholds (export.validate.grade, as validation grades it)."""
    path, model, config = exported("torchscript", 17)
    rng = np.random.default_rng(0)
    p = pipelines()[name]
    if p.dense:  # Dense layers sized for the export's hidden width
        dims = [config.hidden_size * len(p.modes)] + [d.out_features for d in p.dense]
        layers = tuple(
            dense(rng, i, o, d.activation, d.bias is not None)
            for i, o, d in zip(dims[:-1], dims[1:], p.dense, strict=True)
        )
        p = Pooling(p.mode, p.normalize, dense=layers, truncate_dim=p.truncate_dim)
    graph = add_sentence_embedding(onnx.load(str(path)), p)
    sess = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    for shape in (Shape(1, 13), Shape(3, 13, padded_rows=2)):
        feeds = make_inputs(shape, config.vocab_size, config.type_vocab_size)
        got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True))
        with torch.no_grad():
            hidden = model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).last_hidden_state.numpy()
        want = st_encode(p, hidden, feeds["attention_mask"])
        case = grade("onnx", "fp32", shape, {EMBEDDING: got[EMBEDDING]}, {EMBEDDING: want}, Thresholds.defaults())
        assert case["passed"], case["outputs"][EMBEDDING]
        own = st_encode(p, got[HIDDEN], feeds["attention_mask"])  # the pass alone, on the graph's own hidden state
        np.testing.assert_allclose(got[EMBEDDING], own, rtol=0, atol=1e-5)

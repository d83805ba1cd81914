"""export.build on a sentence-transformers folder (`--pooling auto`, the default): the folder's own pipeline
(lasttoken Pooling, a Tanh Dense, Normalize) with `--truncate-dim`, validated against PyTorch, recorded with its
source files, and served with the same pipeline by engines.triton's twin and engines.serving. One build
(the `st_built` session fixture); the refusals exit 2 before any work."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import pytest
import torch

from engines.serving.ort_model import load_build
from engines.triton import config as tc
from engines.triton.repository import build_repository
from export.build import main as build
from export.checkpoint.sentence_transformers import read_pipeline
from export.passes.pooling import EMBEDDING, HIDDEN, Pooling, declared_pooling
from export.validate import OnnxFile, Shape, make_inputs, ort_session
from tests.export.passes import st_rules
from tests.fixtures.tiny_build import build_args
from tests.helpers import one_line

WIDTH = 16  # --truncate-dim of the st_built fixture


def report_of(out) -> dict:
    return json.loads((out / "report.json").read_text())


def library_rule(st, model, feeds) -> np.ndarray:
    """sentence-transformers' encode(truncate_dim=16, normalize_embeddings=True) on PyTorch's hidden states, the
    Dense weights as the test wrote them (st_rules: the library's steps restated)."""
    with torch.no_grad():
        hidden = model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).last_hidden_state.numpy()
    mask = feeds["attention_mask"]
    return st_rules.encode(hidden, mask, ("lasttoken",), tuple(st.denses), True, WIDTH, normalize_embeddings=True)


def test_the_folders_pipeline_is_built_validated_and_recorded(st_built):
    st, out, _ = st_built
    r = report_of(out)
    assert r["passed"]
    p = r["pooling"]
    assert (p["mode"], p["normalize"], p["truncate_dim"], p["width"]) == ("lasttoken", True, WIDTH, WIDTH)
    hidden = r["model"]["hidden"]
    assert p["dense"] == [{"in_features": hidden, "out_features": 24, "bias": True, "activation": "tanh"}]
    assert p["matryoshka_dimensions"] == [8, 16, 24]
    src = p["source"]
    assert src["kind"] == "sentence-transformers" and src["flags"] == ["--truncate-dim", str(WIDTH)]
    assert {"modules.json", "1_Pooling/config.json", "2_Dense/config.json", "2_Dense/model.safetensors"} <= set(
        src["files"]
    )
    for name, sha in src["files"].items():
        assert sha == hashlib.sha256((st.folder / name).read_bytes()).hexdigest(), name
    assert p["engine_outputs"][EMBEDDING] == {"dtype": "float32", "shape": ["batch", WIDTH]}
    cases = [c for c in r["validation"] if c["graph"] == "rope-plugin"]
    assert {(c["batch"], c["padded_rows"]) for c in cases} >= {(1, 0), (3, 2)}  # batch 1 and 3, right padding
    assert all(c["outputs"][EMBEDDING]["passed"] for c in cases)
    graph = out / r["artifacts"]["tensorrt-onnx"]
    want = read_pipeline(st.folder, hidden).pooling
    declared = declared_pooling(onnx.load(str(graph), load_external_data=False), out)
    assert declared == Pooling(want.mode, want.normalize, dense=want.dense, truncate_dim=WIDTH)
    md = (out / "report.md").read_text()
    assert "From the sentence-transformers files" in md and "first 16 channels" in md


def test_the_graph_matches_the_library_rule_on_pytorch(st_built):
    """Reader, pass and validation together, against the rule written from the library's code."""
    st, out, model = st_built
    sess = ort_session(OnnxFile(out / "model.rope-plugin.onnx", rotary_function=True))
    for shape in (Shape(1, 13), Shape(3, 13, padded_rows=2)):
        feeds = make_inputs(shape, model.config.vocab_size, model.config.type_vocab_size)
        got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True))[EMBEDDING]
        want = library_rule(st, model, feeds)
        assert got.shape == (shape.batch, WIDTH)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)  # fp32 graph vs float64 rule on fp32 states
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-6)


def test_triton_twin_and_serving_carry_the_pipeline(st_built, tmp_path):
    st, out, model = st_built
    repo = tmp_path / "repo"
    build_repository(out, repo)
    twin = onnx.load(str(repo / "build_onnx" / "1" / "model.onnx"))
    assert declared_pooling(twin).truncate_dim == WIDTH and declared_pooling(twin).dense
    config = (repo / "build_onnx" / "config.pbtxt").read_text()
    assert f'name: "{EMBEDDING}"' in config and f"dims: {WIDTH}" in config.split(EMBEDDING)[1].split("}")[0]
    ins, outs = tc.read_onnx_io(out / "model.rope-plugin.onnx")  # what the TensorRT model's config is made from
    trt = tc.check_config(tc.config_text(tc.make_config("build_fp32", "tensorrt_plan", ins, outs, 8)), ins, outs)
    assert next(list(o.dims) for o in trt.output if o.name == EMBEDDING) == [WIDTH]
    served, _, _ = load_build(out, "none")
    feeds = make_inputs(Shape(3, 11, padded_rows=2), model.config.vocab_size, model.config.type_vocab_size)
    want = library_rule(st, model, feeds)
    for graph in (twin, served):
        got = ort_session(graph).run([EMBEDDING], feeds)[0]
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert HIDDEN in [o.name for o in served.graph.output]


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (["--truncate-dim", "12"], "--truncate-dim 12 is not one of the widths"),
        (["--truncate-dim", "32"], "--truncate-dim 32 exceeds the embedding's 24 channels"),
    ],
)
def test_truncate_dim_refused_before_any_work(st_built, tmp_path, capsys, flags, fragment):
    st, _, _ = st_built
    out = tmp_path / "o"
    assert build(build_args(st.folder, out, *flags)) == 2
    assert fragment in one_line(capsys)
    assert not out.exists() or not [p for p in out.iterdir() if not p.name.startswith(".")]

"""Issue #15: the rotary pass reads structure, not weights; graphs of one precision share one data file;
validation holds one ONNX Runtime session at a time; the precision pass's in-place mode changes nothing."""

import gc
import os
import shutil
import weakref

import numpy as np
import onnx
import pytest

from export import validate
from export.onnx_io import SIZE_THRESHOLD, check_locations, external_data_files
from export.passes.precision import convert_precision, write_precision_variants
from export.passes.rotary import SINCOS_NAME
from export.report.thresholds import Thresholds
from export.stages.rope import expected_sites, rewrite_file
from export.validate import OnnxFile, Shape, TorchReference, make_inputs, ort_session, validate_graphs

MAX_LEN = 96


@pytest.fixture
def data_reads(monkeypatch):
    """Bytes onnx reads from external data files while the test runs (every onnx path to external data,
    onnx.load included, goes through external_data_helper._read_external_data_bytes)."""
    from onnx import external_data_helper

    counter = {"bytes": 0, "tensors": []}
    real = external_data_helper._read_external_data_bytes

    def counting(tensor, base_dir):
        data = real(tensor, base_dir)
        counter["bytes"] += len(data)
        counter["tensors"].append(tensor.name)
        return data

    monkeypatch.setattr(external_data_helper, "_read_external_data_bytes", counting)
    return counter


@pytest.mark.parametrize("exporter,opset", [("dynamo", 18), ("torchscript", 17)])
def test_pass_reads_no_weights_and_shares_the_data_file(exported, tmp_path, data_reads, exporter, opset):
    path, model, config = exported(exporter, opset, max_len=MAX_LEN)
    work = tmp_path / "build"
    shutil.copytree(path.parent, work)
    src, dst = work / "model.onnx", work / "model.rope-plugin.onnx"
    weights = (work / "model.onnx.data").stat().st_size
    head_dim = config.hidden_size // config.num_attention_heads
    table = MAX_LEN * head_dim * 4  # the position table is the only initializer the site probe needs

    rep = rewrite_file(src, dst, "plugin", config, MAX_LEN, "model")
    print(
        f"{exporter}: read {data_reads['bytes']} B of {weights} B of weights (table {table} B): {data_reads['tensors']}"
    )
    assert rep["coverage_error"] is None and rep["rewritten"] == expected_sites(config)
    assert data_reads["bytes"] <= table, "the rotary pass read weights it does not change"
    # one data file for both fp32 graphs; the rewritten graph holds no weight of its own
    assert external_data_files(src) == external_data_files(dst) == ["model.onnx.data"]
    assert sorted(p.name for p in work.iterdir()) == ["model.onnx", "model.onnx.data", "model.rope-plugin.onnx"]
    graph = onnx.load(str(dst), load_external_data=False)
    inline = [
        t.name
        for t in graph.graph.initializer
        if t.data_location != onnx.TensorProto.EXTERNAL and len(t.raw_data) >= SIZE_THRESHOLD
    ]
    assert inline == [SINCOS_NAME], f"the rewritten graph carries tensors of its own: {inline}"

    # a finished set moved as a whole stays loadable: relative locations, onnx.load + checker + ORT
    moved = tmp_path / "moved"
    os.replace(work, moved)
    for name in ("model.onnx", "model.rope-plugin.onnx"):
        onnx.checker.check_model(str(moved / name), full_check=True)
        assert onnx.load(str(moved / name)).graph.initializer
    inputs = make_inputs(Shape(2, 13, 1), config.vocab_size, config.type_vocab_size)
    plain = ort_session(moved / "model.onnx").run(None, inputs)[0]
    rewritten = ort_session(OnnxFile(moved / "model.rope-plugin.onnx", rotary_function=True)).run(None, inputs)[0]
    np.testing.assert_allclose(rewritten, plain, rtol=0, atol=1e-5)  # fp32 graphs: same math, reassociated


def test_locations_must_stay_in_the_graph_folder(tmp_path):
    t = onnx.numpy_helper.from_array(np.zeros(4, np.float32), "w")
    for bad in ("../w.data", "/tmp/w.data", "sub/w.data"):
        m = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], [], [t]))
        onnx.external_data_helper.set_external_data(m.graph.initializer[0], bad)
        m.graph.initializer[0].data_location = onnx.TensorProto.EXTERNAL
        with pytest.raises(ValueError, match="file name beside the graph"):
            check_locations(m)
    onnx.external_data_helper.set_external_data(m.graph.initializer[0], "w.data")
    assert check_locations(m) == ["w.data"]


def test_validation_holds_one_session_at_a_time(exported, tmp_path, monkeypatch):
    path, model, config = exported("dynamo", 18, max_len=MAX_LEN)
    work = tmp_path / "build"
    shutil.copytree(path.parent, work)
    rewrite_file(work / "model.onnx", work / "model.rope-plugin.onnx", "plugin", config, MAX_LEN, "model")
    live, peak = [0], [0]

    def tracked(graph):
        sess = ort_session(graph)
        live[0] += 1
        peak[0] = max(peak[0], live[0])
        weakref.finalize(sess, lambda: live.__setitem__(0, live[0] - 1))
        return sess

    monkeypatch.setattr(validate, "ort_session", tracked)
    graphs = {
        "onnx": (work / "model.onnx", "fp32"),
        "rope-plugin": (OnnxFile(work / "model.rope-plugin.onnx", rotary_function=True), "fp32"),
    }
    shapes = [Shape(1, 1), Shape(3, 13, 2)]
    cases = validate_graphs(
        graphs, TorchReference(model, "model"), shapes, Thresholds.defaults(), config.vocab_size, config.type_vocab_size
    )
    assert peak[0] == 1, f"{peak[0]} ORT sessions alive at once"
    # the report keeps its order: every graph at the first shape, then the next shape
    assert [(c["graph"], c["seq"]) for c in cases] == [(g, s.seq) for s in shapes for g in graphs]
    assert all(c["passed"] for c in cases)


@pytest.mark.parametrize("precision,emulate", [("fp16", False), ("bf16", False), ("bf16", True)])
def test_precision_in_place_equals_copy(exported, precision, emulate):
    path, _, _ = exported("dynamo", 18, max_len=MAX_LEN)
    original = onnx.load(str(path))
    before = original.SerializeToString()
    copied, rep_c = convert_precision(original, precision, emulate=emulate)
    assert original.SerializeToString() == before, "convert_precision modified its input"
    in_place, rep_i = convert_precision(original, precision, emulate=emulate, inplace=True)
    assert in_place is original and rep_i == rep_c
    assert in_place.SerializeToString() == copied.SerializeToString()


def test_precision_variant_reads_structure_and_shares_fp32_data(exported, tmp_path):
    path, _, _ = exported("dynamo", 18, max_len=MAX_LEN)
    work = tmp_path / "build"
    shutil.copytree(path.parent, work)
    paths, rep = write_precision_variants(work / "model.onnx", "fp16", work, stem="model")
    # weights that stay fp32 are read from the fp32 file; only the new fp16 weights are written
    assert external_data_files(paths["fp16"]) == ["model.fp16.onnx.data", "model.onnx.data"]
    full, rep_full = convert_precision(onnx.load(str(path)), "fp16")  # the whole model in memory
    got = onnx.load(paths["fp16"])
    assert rep == rep_full
    assert [n.SerializeToString() for n in got.graph.node] == [n.SerializeToString() for n in full.graph.node]
    arrays = lambda m: {t.name: onnx.numpy_helper.to_array(t) for t in m.graph.initializer}  # noqa: E731
    a, b = arrays(got), arrays(full)
    assert a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]) for k in a)


def test_release_freed_returns_what_reference_cycles_held():
    """The INT8 build's stages free large objects that only a collection reaches (ONNX Runtime's graph optimizer holds
    its model in reference cycles); release_freed gives that memory back before the next stage starts."""
    from export.memory import release_freed

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    class Node:
        pass

    gc.disable()  # no automatic collection between the steps below
    try:
        a, b = Node(), Node()
        a.other, b.other, a.payload = b, a, np.ones(50_000_000, dtype=np.float32)  # 200 MB held by a cycle
        held = rss()
        del a, b
        assert rss() > held - 50e6  # still resident: nothing but a collection frees a cycle
        release_freed()
        assert rss() < held - 150e6
    finally:
        gc.enable()

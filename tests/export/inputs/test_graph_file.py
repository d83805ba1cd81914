"""export.inputs.graph_file.read_graph: the one checked loader of graphs a user names. Each class of broken graph is
refused with one UsageError line before any reader opens what it points at; a sound graph, and every graph a
build writes, passes."""

from __future__ import annotations

import os
import shutil

import onnx
import pytest
from onnx import TensorProto

from export.errors import UsageError
from export.inputs.graph_file import MAX_DIM, read_graph
from tests.fixtures.hostile_graphs import VOCAB, edited, set_external, small_graph


def test_a_sound_graph_and_its_data_file(tmp_path):
    g = read_graph(small_graph(tmp_path))
    assert g.data_files == ["g.onnx.data"] and g.model.graph.node[0].op_type == "Gather"
    assert g.model.graph.initializer[0].data_location == TensorProto.EXTERNAL  # structure only: nothing loaded


@pytest.mark.parametrize("build", ["built", "int8_built", "pooled"])  # fp32; int8 and its CPU twin; fp16 pooled
def test_every_graph_a_build_writes_passes(request, build):
    folder = request.getfixturevalue(build)
    graphs = sorted(folder.glob("*.onnx"))
    assert len(graphs) >= 2
    for f in graphs:
        assert read_graph(f).data_files, f


def refused(path, pattern: str) -> None:
    with pytest.raises(UsageError, match=pattern) as e:
        read_graph(path)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "content, pattern",
    [
        (b"hello world\n" * 20, "is not an ONNX file|holds no ONNX graph"),
        (b"PK\x03\x04" + bytes(range(256)) * 4, "is not an ONNX file|holds no ONNX graph"),  # a zip (torch.save)
        (b"", "holds no ONNX graph"),
    ],
)
def test_not_onnx(tmp_path, content, pattern):
    (tmp_path / "x.onnx").write_bytes(content)
    refused(tmp_path / "x.onnx", pattern)


def test_truncated(tmp_path):
    path = small_graph(tmp_path)
    data = path.read_bytes()
    for cut in (len(data) // 3, len(data) - 5):
        path.write_bytes(data[:cut])
        refused(path, "is not an ONNX file|holds no ONNX graph")


def test_a_folder_or_missing_file(tmp_path):
    refused(tmp_path, "is a directory")
    refused(tmp_path / "none.onnx", "does not exist")


@pytest.mark.parametrize(
    "location",
    ["../../../../etc/passwd", "/etc/passwd", "sub/g.onnx.data", "..", ".", "", "C:\\x.data", "..\\x.data"],
)
def test_external_data_stays_beside_the_graph(tmp_path, location):
    refused(edited(small_graph(tmp_path), set_external("location", location)), "external data at|is a directory")


def test_a_symlinked_data_file_leaving_the_folder(tmp_path):
    path = small_graph(tmp_path / "g")
    outside = tmp_path / "outside.data"
    shutil.move(tmp_path / "g" / "g.onnx.data", outside)
    os.symlink(outside, tmp_path / "g" / "g.onnx.data")
    refused(path, "resolves outside")


def test_a_missing_or_special_data_file(tmp_path):
    path = small_graph(tmp_path)
    refused(edited(path, set_external("location", "nope.data")), "does not exist")
    os.mkfifo(tmp_path / "fifo.data")
    refused(edited(path, set_external("location", "fifo.data")), "not a regular file")


@pytest.mark.parametrize(
    "key, value, pattern",
    [
        ("offset", "1000000000000000", "reads bytes 1000000000000000"),
        ("offset", "8", r"reads bytes 8\.\.1592 of g\.onnx\.data, which holds 1584"),
        ("offset", "-1", "out of range"),
        ("offset", "١٢", "not an integer"),
        ("offset", "9" * 5000, "too long"),
        ("length", "12", "records length 12, its dims need 1584"),
        ("checksum", "x", None),  # a known key: accepted
        ("owner", "x", "external data keys"),
    ],
)
def test_external_offsets_and_lengths(tmp_path, key, value, pattern):
    path = edited(small_graph(tmp_path), set_external(key, value))
    if pattern is None:
        assert read_graph(path).data_files == ["g.onnx.data"]
    else:
        refused(path, pattern)


def test_a_location_given_twice(tmp_path):
    def twice(m):
        m.graph.initializer[0].external_data.add(key="location", value="g.onnx.data")

    refused(edited(small_graph(tmp_path), twice), "external data keys")


@pytest.mark.parametrize("version, pattern", [(99, "imports opset 99"), (0, "imports opset 0")])
def test_opset(tmp_path, version, pattern):
    def change(m):
        m.opset_import[0].version = version

    refused(edited(small_graph(tmp_path), change), pattern)


def test_other_domains_and_ir_version(tmp_path):
    path = small_graph(tmp_path)
    edited(path, lambda m: m.opset_import.add(domain="com.microsoft", version=1))
    assert read_graph(path)
    edited(path, lambda m: m.opset_import.add(domain="x", version=10**9))
    refused(path, "domain 'x' at version 1000000000")
    path = small_graph(tmp_path / "ir")
    edited(path, lambda m: setattr(m, "ir_version", 99))
    refused(path, "IR version 99")


@pytest.mark.parametrize("value", [10**12, MAX_DIM + 1, -1])
def test_fixed_dims_are_bounded(tmp_path, value):
    def change(m):
        m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = value

    refused(edited(small_graph(tmp_path), change), f"has a dimension of {value}")


def test_tensor_dims_are_bounded(tmp_path):
    def change(m):
        m.graph.initializer[0].dims[0] = 10**12

    refused(edited(small_graph(tmp_path), change), "has dims")


@pytest.mark.parametrize("where", ["input", "initializer"])
def test_unknown_types(tmp_path, where):
    def change(m):
        if where == "input":
            m.graph.input[0].type.tensor_type.elem_type = 77
        else:
            m.graph.initializer[0].data_type = 77

    refused(edited(small_graph(tmp_path), change), "not an ONNX type")


def test_inline_tensor_size(tmp_path):
    def change(m):
        t = TensorProto(name="c", data_type=TensorProto.FLOAT, dims=[VOCAB], raw_data=b"\0" * 8)
        m.graph.node.append(onnx.helper.make_node("Constant", [], ["c"], value=t))

    refused(edited(small_graph(tmp_path), change), "holds 8 bytes, its dims")

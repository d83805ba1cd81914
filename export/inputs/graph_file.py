"""Reading an ONNX graph a user names, checked before ONNX Runtime, TensorRT or our passes see it.

In:  a path (and `what` it is meant to be, for the message). Out: `read_graph` -> the ModelProto without its
external weights, plus the data files it reads (`GraphFile`); else UsageError (exit 2) with one line naming
the file, what is wrong and the fix.

Checked, in this order, all before anything else reads the graph (export.folder.artifacts, so every reader of a
build's graphs, export.diagnose and engines.build use it):
- the file: a regular file of at most MAX_GRAPH_BYTES (protobuf's own limit is 2 GiB);
- protobuf: it parses as an onnx.ModelProto and holds a graph with nodes (a text file, a truncated .onnx or
  a checkpoint does not);
- versions: the IR version and the default domain's opset are ones this onnx knows (an opset of 99 is not a
  graph ONNX Runtime can run), other domains' versions are small positive numbers;
- types and dims: every tensor type (graph inputs, outputs, value_info, initializers, constants) is a known
  TensorProto type, and every fixed dim lies in [0, MAX_DIM] (TensorRT's dims are int32; an input dim fixed
  at 10^12 is refused here);
- external data: every location is a plain file name beside the graph (no folder, no `..`, not absolute),
  which resolves (symlinks followed) inside the graph's folder to an existing regular file; offset and length
  are ASCII integers, the tensor's bytes (dims x element size) lie inside that file, and a recorded length
  matches them. So `../../../../etc/passwd`, `/etc/passwd`, a missing file or an offset of 1e15 are refused
  before any reader opens them;
- inline tensors hold as many bytes as their dims say.
"""

from __future__ import annotations

import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto, helper
from onnx.external_data_helper import _get_all_tensors

from export.errors import UsageError
from export.inputs.files import read_bytes
from export.inputs.numbers import NumberError, parse_int

MAX_GRAPH_BYTES = 2**31 - 1  # protobuf refuses messages of 2 GiB and more
MAX_DIM = 2**31 - 1  # TensorRT dimensions are int32
MAX_DOMAIN_VERSION = 1000  # ai.onnx.ml is at 5, com.microsoft and our plugin domain at 1
EXTERNAL_KEYS = frozenset({"location", "offset", "length", "checksum", "basepath"})  # onnx's own list
KNOWN_TYPES = frozenset(TensorProto.DataType.values()) - {TensorProto.UNDEFINED}
FIX = "pass an .onnx file written by python -m export.build (or re-export it)"


@dataclass(frozen=True)
class GraphFile:
    path: Path
    model: onnx.ModelProto  # structure only: external tensors are not loaded
    data_files: list[str]  # names, beside the graph, of the external data files it reads (sorted)


def read_graph(path: str | Path, *, what: str = "graph") -> GraphFile:
    path = Path(path)
    data = read_bytes(path, what=what, max_bytes=MAX_GRAPH_BYTES)
    where = f"{what} {path}"
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, ValueError):
        raise UsageError(
            f"{where} is not an ONNX file (protobuf cannot parse it: truncated, or another format); {FIX}"
        ) from None
    del data
    if not model.HasField("graph") or not model.graph.node:
        raise UsageError(f"{where} holds no ONNX graph (no nodes; another protobuf or another format); {FIX}")
    check_versions(model, where)
    check_types_and_dims(model, where)
    files = check_tensor_data(model, path.parent, where)
    return GraphFile(path, model, files)


def check_versions(model: onnx.ModelProto, where: str) -> None:
    if not 1 <= model.ir_version <= onnx.IR_VERSION:
        raise UsageError(f"{where} has IR version {model.ir_version}; this onnx reads 1 to {onnx.IR_VERSION}; {FIX}")
    newest = onnx.defs.onnx_opset_version()
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx") and not 1 <= o.version <= newest:
            raise UsageError(f"{where} imports opset {o.version}; ONNX defines 1 to {newest}; {FIX}")
        if not 1 <= o.version <= MAX_DOMAIN_VERSION:
            raise UsageError(f"{where} imports domain {o.domain!r} at version {o.version}; {FIX}")


def check_types_and_dims(model: onnx.ModelProto, where: str) -> None:
    g = model.graph
    for vi in [*g.input, *g.output, *g.value_info]:
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type"):
            continue  # sequences and maps: none in our graphs, and ORT checks their element types itself
        if tt.elem_type not in KNOWN_TYPES:
            raise UsageError(f"{where}: {vi.name!r} has element type {tt.elem_type}, not an ONNX type; {FIX}")
        for d in tt.shape.dim:
            if d.HasField("dim_value") and not 0 <= d.dim_value <= MAX_DIM:
                raise UsageError(f"{where}: {vi.name!r} has a dimension of {d.dim_value}; at most {MAX_DIM}; {FIX}")
    for t in _get_all_tensors(model):
        if t.data_type not in KNOWN_TYPES:
            raise UsageError(f"{where}: tensor {t.name!r} has type {t.data_type}, not an ONNX type; {FIX}")
        if any(not 0 <= d <= MAX_DIM for d in t.dims):
            raise UsageError(f"{where}: tensor {t.name!r} has dims {list(t.dims)}; each must be 0 to {MAX_DIM}; {FIX}")


def nbytes(t: onnx.TensorProto) -> int | None:
    """Bytes of `t`'s values from its dims and type (sub-byte types packed); None for strings."""
    if t.data_type == TensorProto.STRING:
        return None
    bits = helper.tensor_dtype_to_np_dtype(t.data_type).itemsize * 8
    if t.data_type in _SUB_BYTE:
        bits = _SUB_BYTE[t.data_type]
    return math.ceil(math.prod(t.dims) * bits / 8)


_SUB_BYTE = {
    getattr(TensorProto, name): bits
    for name, bits in (("INT4", 4), ("UINT4", 4), ("FLOAT4E2M1", 4), ("INT2", 2), ("UINT2", 2))
    + (("FLOAT6E2M3", 6), ("FLOAT6E3M2", 6))
    if hasattr(TensorProto, name)
}


def check_tensor_data(model: onnx.ModelProto, folder: Path, where: str) -> list[str]:
    """Every tensor's bytes: inline ones as many as their dims say, external ones inside a regular file beside
    the graph. Returns the external data files' names (sorted)."""
    files: dict[str, int] = {}  # name -> size
    root = folder.resolve()
    for t in _get_all_tensors(model):
        need = nbytes(t)
        if t.data_location != TensorProto.EXTERNAL:
            if t.HasField("raw_data") and need is not None and len(t.raw_data) != need:
                raise UsageError(
                    f"{where}: tensor {t.name!r} holds {len(t.raw_data)} bytes, its dims {list(t.dims)} "
                    f"need {need}; {FIX}"
                )
            continue
        location, offset, length = _external(t, where)
        if location not in files:
            files[location] = _data_file_size(root, folder, location, t.name, where)
        if need is None:
            raise UsageError(f"{where}: string tensor {t.name!r} is in external data; {FIX}")
        if length is not None and length != need:
            raise UsageError(f"{where}: tensor {t.name!r} records length {length}, its dims need {need}; {FIX}")
        if offset + need > files[location]:
            raise UsageError(
                f"{where}: tensor {t.name!r} reads bytes {offset}..{offset + need} of {location}, which holds "
                f"{files[location]}; {FIX}"
            )
    return sorted(files)


def _external(t: onnx.TensorProto, where: str) -> tuple[str, int, int | None]:
    """(location, offset, length or None) of an external tensor, each key once, numbers read strictly (onnx's
    own ExternalDataInfo calls int(), which takes '١٢' and raises past 4300 digits)."""
    entries = [(e.key, e.value) for e in t.external_data]
    fields = dict(entries)
    if len(fields) != len(entries) or "location" not in fields or set(fields) - EXTERNAL_KEYS:
        raise UsageError(
            f"{where}: tensor {t.name!r} has external data keys {[k for k, _ in entries]}; expected one location "
            f"and at most one of offset, length, checksum; {FIX}"
        )
    location = fields["location"]
    p = PurePosixPath(location.replace("\\", "/"))
    if p.is_absolute() or len(p.parts) != 1 or p.name in ("", ".", "..") or ":" in location:
        raise UsageError(
            f"{where}: tensor {t.name!r} has external data at {location!r}; a graph's data files are plain "
            f"file names beside it; {FIX}"
        )
    offset = _int_field(fields.get("offset"), "offset", t.name, where)
    return location, offset or 0, _int_field(fields.get("length"), "length", t.name, where)


def _data_file_size(root: Path, folder: Path, name: str, tensor: str, where: str) -> int:
    path = folder / name
    if not path.resolve().is_relative_to(root):
        raise UsageError(f"{where}: data file {name} of tensor {tensor!r} resolves outside {root} (a symlink); {FIX}")
    try:
        st = os.stat(path)
    except OSError:
        raise UsageError(f"{where}: data file {path} of tensor {tensor!r} does not exist; {FIX}") from None
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(f"{where}: data file {path} of tensor {tensor!r} is not a regular file; {FIX}")
    return st.st_size


def _int_field(value: str | None, key: str, tensor: str, where: str) -> int | None:
    if value is None:
        return None
    try:
        return parse_int(value, what=f"{where}: tensor {tensor!r} external data {key}", lo=0, hi=2**62)
    except NumberError as e:
        raise UsageError(f"{e}; {FIX}") from None

"""Writing ONNX files: atomically, with the weights in external data (`<graph>.data` beside the graph),
so a graph that only rewrites structure can point at the weights of the graph it came from instead of
copying them. No torch here, so passes can write files cheaply.

External data rules kept by every writer here: a `location` is a plain file name in the graph's own
folder (never absolute, never `..`), so a finished build folder can be moved or renamed as a whole;
`external_data_files(graph)` lists the data files a graph needs (for hashing and copying).

Measured with onnx 1.23 / onnxruntime 1.32 (tests/export/test_build_memory.py): two graphs whose
initializers name the same data file both pass `onnx.checker.check_model(path, full_check=True)`,
load with `onnx.load`, and run in ORT from their path; ORT refuses a graph loaded from bytes unless
told the folder (`session.model_external_initializers_file_folder_path`), and refuses locations that
leave the model's folder.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath

import onnx
from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, load_external_data_for_tensor

MAX_PROTOBUF = 2**31 - 2**26  # stay clear of protobuf's 2 GiB hard limit
SIZE_THRESHOLD = 1024  # tensors below this stay in the graph: shape constants, so passes can read them


def data_name(graph_name: str) -> str:
    """The external data file written for graph `graph_name`: `<graph_name>.data`."""
    return graph_name + ".data"


def save_model(model: onnx.ModelProto, path: Path, external: bool | None = None) -> None:
    """Save `model` to `path`. external=True: every tensor of >= SIZE_THRESHOLD bytes that the proto
    holds goes to `<name>.data` beside it; None: only when the proto would pass 2 GB. Tensors that
    already reference a data file keep their reference (the caller keeps that file beside the graph)."""
    if external is None:
        external = _initializer_bytes(model) > MAX_PROTOBUF
    if external:
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data_name(path.name),
            size_threshold=SIZE_THRESHOLD,
        )
    else:
        onnx.save_model(model, str(path))


def write_model(model: onnx.ModelProto, path: str | Path, check: bool = False, external: bool | None = None) -> Path:
    """Write `model` to `path` atomically (new weights first, graph last), optionally running the full
    checker on the written file. `external`: new weights (tensors the proto holds, >= SIZE_THRESHOLD
    bytes) go to `<name>.data`; None: only past 2 GB.

    A model whose weights reference data files already (a structure-only rewrite) keeps those references:
    it is finished as a temp graph file beside `path`, so its relative locations resolve, checked there
    and renamed. Nothing it references is copied or loaded.
    """
    path = Path(path)
    if not has_external(model):
        return _write_self_contained(model, path, check, external)
    check_locations(model)
    if external is None:
        external = _initializer_bytes(model) > MAX_PROTOBUF
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_model(model, tmpdir / path.name, external=external)  # only the tensors it holds go to the .data
        _move_data_files(tmpdir, path)  # the new weights, before the graph that reads them
        os.replace(tmpdir / path.name, tmp)
        if check:
            onnx.checker.check_model(str(tmp), full_check=True)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        shutil.rmtree(tmpdir, ignore_errors=True)
    return path


def _write_self_contained(model: onnx.ModelProto, path: Path, check: bool, external: bool | None) -> Path:
    """Save into a temp folder beside `path`, check there, then move the weights and, last, the graph."""
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        save_model(model, tmpdir / path.name, external=external)
        if check:
            onnx.checker.check_model(str(tmpdir / path.name), full_check=True)
        move_into_place(tmpdir, path)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return path


def external_data_files(onnx_path: str | Path) -> list[str]:
    """The external data files graph `onnx_path` references, as names relative to its folder (sorted).
    Reads the graph only; ValueError for a location that is absolute or leaves the folder."""
    model = onnx.load(str(onnx_path), load_external_data=False)
    return check_locations(model)


def check_locations(model: onnx.ModelProto) -> list[str]:
    """Every external `location` of `model`, checked to be a plain file name (sorted, unique)."""
    names = set()
    for t in _get_all_tensors(model):
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        loc = ExternalDataInfo(t).location
        p = PurePosixPath(loc.replace("\\", "/"))
        if p.is_absolute() or len(p.parts) != 1 or p.name in ("", ".", ".."):
            raise ValueError(
                f"tensor {t.name!r} has external data at {loc!r}; expected a file name beside "
                "the graph (no folders), so the build folder can move as a whole"
            )
        names.add(loc)
    return sorted(names)


def is_external(t: onnx.TensorProto) -> bool:
    return t.data_location == onnx.TensorProto.EXTERNAL


def load_tensor(t: onnx.TensorProto, base_dir: str | Path | None) -> onnx.TensorProto:
    """A self-contained copy of initializer `t`: its external bytes read from `base_dir` (only this tensor)."""
    if not is_external(t):
        return t
    if base_dir is None:
        raise ValueError(f"initializer {t.name!r} is in external data and no folder was given to read it from")
    out = onnx.TensorProto()
    out.CopyFrom(t)
    load_external_data_for_tensor(out, str(base_dir))
    out.data_location = onnx.TensorProto.DEFAULT
    del out.external_data[:]
    return out


def _initializer_bytes(model: onnx.ModelProto) -> int:
    return sum(len(t.raw_data) for t in model.graph.initializer)


def has_external(model: onnx.ModelProto) -> bool:
    return any(is_external(t) for t in model.graph.initializer)


def move_into_place(tmpdir: Path, out_path: Path) -> list[str]:
    """The graph saved in tmpdir and its data files into out_path's folder: weights first, graph last."""
    files = _move_data_files(tmpdir, out_path)
    os.replace(tmpdir / out_path.name, out_path)
    return files + [out_path.name]


def _move_data_files(tmpdir: Path, out_path: Path) -> list[str]:
    """Every file in tmpdir but the graph `out_path.name`, moved beside out_path with the graph's mode
    (onnx creates data files 0600, which a server running as another user could not read)."""
    graph = tmpdir / out_path.name
    moved = []
    for f in sorted(tmpdir.iterdir()):
        if f.name != graph.name:
            shutil.copymode(graph, f)
            os.replace(f, out_path.parent / f.name)
            moved.append(f.name)
    return moved

"""Writing ONNX files: atomically (temp folder beside the target, weights first, graph last), with the
weights in external data past protobuf's 2 GiB limit. No torch here, so passes can write files cheaply."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import onnx

MAX_PROTOBUF = 2**31 - 2**26  # stay clear of protobuf's 2 GiB hard limit


def save_model(model: onnx.ModelProto, path: Path, external: bool | None = None) -> None:
    """Save, with weights in `<name>.data` beside it when the proto would pass 2 GB."""
    if external is None:
        external = _initializer_bytes(model) > MAX_PROTOBUF
    if external:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=1024)
    else:
        onnx.save_model(model, str(path))


def write_model(model: onnx.ModelProto, path: str | Path, check: bool = False) -> Path:
    """Write `model` to `path` atomically: save into a temp folder beside it (weights in `<name>.data` past
    2 GB), optionally run the full checker on that file, then move the weights and, last, the graph into place."""
    path = Path(path)
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        save_model(model, tmpdir / path.name)
        if check:
            onnx.checker.check_model(str(tmpdir / path.name), full_check=True)
        move_into_place(tmpdir, path)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return path


def _initializer_bytes(model: onnx.ModelProto) -> int:
    return sum(len(t.raw_data) for t in model.graph.initializer)


def has_external(model: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def move_into_place(tmpdir: Path, out_path: Path) -> list[str]:
    files = []
    for f in sorted(tmpdir.iterdir(), key=lambda p: p.suffix != ".data"):  # weights first, graph last
        target = out_path.parent / f.name
        os.replace(f, target)
        files.append(target.name)
    return files


def external_data_files(onnx_path: str | Path) -> list[str]:
    """File names (relative to the graph) that `onnx_path`'s initializers keep their weights in."""
    model = onnx.load(str(onnx_path), load_external_data=False)
    names = set()
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            names.update(e.value for e in t.external_data if e.key == "location")
    return sorted(names)

"""sha256 of files, streamed: what report.json records for every artifact and the checkpoint, and what an
engine's sidecar records of its graph."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from export.onnx_io import external_data_files


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_tree(path: str | Path) -> str:
    """A file's sha256, or for a folder (an HF checkpoint) one digest over its files' names and digests."""
    p = Path(path)
    if p.is_file():
        return sha256_file(p)
    h = hashlib.sha256()
    for f in sorted(x for x in p.rglob("*") if x.is_file()):
        h.update(f"{f.relative_to(p).as_posix()}\0{sha256_file(f)}\n".encode())
    return h.hexdigest()


def onnx_sha256(path: str | Path) -> str:
    """sha256 of an ONNX file plus every external-data file it references (a rewritten or fp16 graph reads most
    of its weights from model.onnx.data): what an engine's sidecar records of the graph it was built from."""
    h = hashlib.sha256(sha256_file(path).encode())
    for extra in external_data_files(path):
        h.update(sha256_file(Path(path).parent / extra).encode())
    return h.hexdigest()


def artifact_hashes(folder: Path, rel_paths: Iterable[str]) -> dict[str, str]:
    """{relative path: sha256} for every artifact and, for ONNX graphs, the external-data files they read."""
    hashes = {}
    for rel in sorted(set(rel_paths)):
        hashes[rel] = sha256_file(folder / rel)
        if rel.endswith(".onnx"):
            parent = Path(rel).parent
            for data in external_data_files(folder / rel):
                data_rel = (parent / data).as_posix()
                hashes.setdefault(data_rel, sha256_file(folder / data_rel))
    return hashes

"""Open a build's artifact only if it is the file report.json names and, when recorded, hashes to.

Used by the verdict (export.report.verdict, every artifact of a report) and by what reads a build's files
(engines.triton, engines.serving: `artifact`).

In:  the build folder, a path relative to it (as report.json's `artifacts` lists it), the report.
Out: the resolved Path of a regular file inside the build folder; else UsageError (exit 2), one line
     naming the file and saying to rebuild.

Refused: an absolute path or one with `..`; a path that resolves (symlinks followed) outside the build
folder; a missing or non-regular file; a file whose sha256 differs from `report["artifacts_sha256"]`
[rel_path] when the report records one (streamed, so an engine of any size costs 1 MiB of memory); an ONNX
graph that export.inputs.graph_file.read_graph refuses (the one checked loader of graphs), or whose data files fail
any of the above.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath, PureWindowsPath

from export.errors import UsageError
from export.folder.digest import sha256_file
from export.inputs.graph_file import read_graph
from export.report.schema import REBUILD, Report


def verify_artifact(build_dir: str | Path, rel_path: str, report: Report | dict) -> Path:
    build_dir = Path(build_dir)
    where = f"{build_dir}/report.json artifact {rel_path!r}"
    if not isinstance(rel_path, str) or not rel_path:
        raise UsageError(f"{where} is not a relative file path; {REBUILD}")
    parts = PurePosixPath(rel_path).parts
    if PurePosixPath(rel_path).is_absolute() or PureWindowsPath(rel_path).is_absolute():
        raise UsageError(f"{where} is an absolute path; artifacts live inside the build folder, {REBUILD}")
    if ".." in parts or ".." in PureWindowsPath(rel_path).parts:
        raise UsageError(f"{where} climbs out of the build folder with '..'; {REBUILD}")
    root = build_dir.resolve()
    path = (build_dir / rel_path).resolve()  # symlinks followed, all the way
    if not path.is_relative_to(root):
        raise UsageError(f"{where} resolves to {path}, outside {root} (a symlink out of the build); {REBUILD}")
    try:
        st = os.stat(path)
    except OSError:
        raise UsageError(f"{where}: {build_dir / rel_path} is missing; {REBUILD}") from None
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(f"{where}: {build_dir / rel_path} is not a regular file; {REBUILD}")
    hashes = report.artifacts_sha256 if isinstance(report, Report) else (report.get("artifacts_sha256") or {})
    want = hashes.get(rel_path)
    if want is None and isinstance(report, Report):  # a report of this schema hashes every file it describes
        raise UsageError(f"{where}: report.json records no sha256 for it; {REBUILD}")
    if want is not None:
        got = sha256_file(path)
        if got != str(want).lower():
            raise UsageError(
                f"{where}: {build_dir / rel_path} has sha256 {got[:16]}..., report.json recorded "
                f"{str(want)[:16]}... (changed since the build); {REBUILD}"
            )
    return path


def artifact(build: Path, report: Report, *keys: str) -> Path | None:
    """First of `keys` present in the report's artifacts, checked by verify_artifact, and for an ONNX graph
    every external-data file it reads too (onnx.load reads them); None if no key is present."""
    for k in keys:
        if k in report.artifacts:
            path = verify_artifact(build, report.artifacts[k], report)
            if path.suffix == ".onnx":
                parent = PurePosixPath(report.artifacts[k]).parent
                for data in read_graph(path, what=f"{build}/report.json artifact {k!r}").data_files:
                    verify_artifact(build, (parent / data).as_posix(), report)
            return path
    return None

"""Opening a build's artifacts safely (placeholder until the reliability branch lands; same API)."""

from __future__ import annotations

from pathlib import Path

from export.digest import sha256_file
from export.errors import UsageError

REBUILD = "rebuild it with python -m export.build"


def verify_artifact(build_dir: str | Path, rel_path: str, report) -> Path:
    """The file `rel_path` inside build_dir, confined to it and matching the report's sha256."""
    build = Path(build_dir).resolve()
    if not rel_path or Path(rel_path).is_absolute() or ".." in Path(rel_path).parts:
        raise UsageError(f"artifact path {rel_path!r} is not inside the build folder; {REBUILD}")
    path = (build / rel_path).resolve()
    if not path.is_relative_to(build):
        raise UsageError(f"artifact {rel_path} resolves outside the build folder ({path}); {REBUILD}")
    if not path.is_file():
        raise UsageError(f"artifact {rel_path} is missing from {build}; {REBUILD}")
    hashes = report.get("artifacts_sha256", {}) if isinstance(report, dict) else report.artifacts_sha256
    want = hashes.get(rel_path)
    if want is not None and sha256_file(path) != want:
        raise UsageError(f"artifact {rel_path} differs from the one report.json describes (sha256); {REBUILD}")
    return path

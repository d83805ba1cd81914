"""Which files in a build folder a run of roformer-trt wrote: decided from records, never from a name pattern.

Claims come from two records, each with the sha256 a file had when we wrote it:
- the manifest `.roformer-trt-files.json` ({"tool": "roformer-trt", "files": {relative path: [sha256, ...]}}),
  rewritten by every swap (export.folder.staging); during a swap a path may be claimed with the old and the new
  file's hash;
- the previous report.json's `artifacts_sha256`, so a folder whose manifest is lost, or that an older
  roformer-trt wrote, is still recognised. Its report.json and report.md are recognised by their content,
  and timing.cache when that report built an engine.
A claimed file is ours only while it is still the file we wrote: a regular file (not a symlink), inside the
folder, with the recorded sha256. A file the user replaced or edited is the user's again.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from export.folder.atomic import write_atomic
from export.folder.digest import sha256_file
from export.folder.layout import MANIFEST
from export.report.schema import REPORT_JSON, REPORT_MD, TIMING_CACHE

TOOL = "roformer-trt"
BY_CONTENT = "by-content"  # a claim checked by what the file says rather than by a hash
MAX_RECORD_BYTES = 64 << 20
_SHA256 = re.compile(r"[0-9a-f]{64}")


class Ownership:
    def __init__(self, out: Path):
        self.out = Path(out)
        self.claims: dict[str, frozenset[str]] = _claims(self.out)
        self._verdicts: dict[str, bool] = {}

    def owns(self, rel: str) -> bool:
        if rel not in self._verdicts:
            self._verdicts[rel] = self._check(rel)
        return self._verdicts[rel]

    def files(self) -> list[str]:
        """Every claimed file still present and still ours."""
        return sorted(rel for rel in self.claims if self.owns(rel))

    def collisions(self, names) -> list[str]:
        """Names among `names` that exist in the folder and are not ours (a user's file or folder)."""
        return [n for n in names if _exists(self.out / n) and not self.owns(n)]

    def _check(self, rel: str) -> bool:
        claim = self.claims.get(rel)
        path = self.out / rel
        if claim is None or not _inside(self.out, rel) or path.is_symlink() or not path.is_file():
            return False
        if BY_CONTENT not in claim:
            return sha256_file(path) in claim
        if rel == REPORT_JSON:
            return (_read_json(path) or {}).get("tool") == TOOL
        if rel == REPORT_MD:
            with open(path, "rb") as f:
                return f.read(64).startswith(b"# roformer-trt report")
        return rel == TIMING_CACHE


def write_manifest(out: Path, files: Mapping[str, frozenset[str] | set[str] | str]) -> None:
    """files: {relative path: its sha256, or every sha256 it may have (old and new, during a swap)}."""
    table = {rel: sorted({h} if isinstance(h, str) else h) for rel, h in sorted(files.items())}
    write_atomic(Path(out) / MANIFEST, json.dumps({"tool": TOOL, "files": table}, indent=1))


def merge_claims(*tables: Mapping[str, str | Iterable[str]]) -> dict[str, set[str]]:
    """The union of claim tables ({path: sha256 or a set of them}): a path keeps every hash any table gives."""
    out: dict[str, set[str]] = {}
    for table in tables:
        for rel, h in table.items():
            out.setdefault(rel, set()).update({h} if isinstance(h, str) else h)
    return out


def _claims(out: Path) -> dict[str, frozenset[str]]:
    tables: list[Mapping[str, str | Iterable[str]]] = []
    report = _read_json(out / REPORT_JSON)
    if isinstance(report, dict) and report.get("tool") == TOOL:
        tables.append({REPORT_JSON: BY_CONTENT, REPORT_MD: BY_CONTENT})
        tables.append(_hashes(report.get("artifacts_sha256")))
        if isinstance(report.get("engine"), dict) and report["engine"].get("status") == "built":
            tables.append({TIMING_CACHE: BY_CONTENT})
    manifest = _read_json(out / MANIFEST)
    if isinstance(manifest, dict) and manifest.get("tool") == TOOL:
        tables.append(_hashes(manifest.get("files")))
    return {rel: frozenset(h) for rel, h in merge_claims(*tables).items() if _inside(out, rel)}


def _hashes(table) -> dict[str, set[str]]:
    if not isinstance(table, dict):
        return {}
    out = {}
    for rel, digests in table.items():
        digests = [digests] if isinstance(digests, str) else digests
        if isinstance(rel, str) and isinstance(digests, list):
            good = {d for d in digests if isinstance(d, str) and _SHA256.fullmatch(d)}
            if good:
                out[rel] = good
    return out


def _inside(out: Path, rel: str) -> bool:
    """A relative path without '..' or NUL that resolves (symlinks followed) inside `out`."""
    if not rel or "\x00" in rel or rel.startswith(("/", "\\")) or ".." in re.split(r"[\\/]", rel):
        return False
    try:
        return (out / rel).resolve().is_relative_to(out.resolve())
    except (OSError, ValueError):
        return False


def _exists(path: Path) -> bool:
    return path.is_symlink() or path.exists()


def _read_json(path: Path):
    """A record of ours, read leniently: anything unreadable is no record at all."""
    try:
        if path.is_symlink() or not path.is_file() or os.path.getsize(path) > MAX_RECORD_BYTES:
            return None
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None

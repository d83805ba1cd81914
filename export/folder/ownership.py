"""Which files in a build folder a run of roformer-trt wrote: decided from records with hashes, never from a name
or from what a file says.

The records:
- the manifest `.roformer-trt-files.json` ({"tool": "roformer-trt", "files": {relative path: [sha256, ...]},
  "sha256": its own digest}), rewritten by every swap (export.folder.staging); during a swap a path may be claimed
  with the old and the new file's hash. The manifest is ours only while its own digest (MANIFEST_DIGEST of its
  "tool" and "files") matches: a user's file of that name, or our manifest edited, is the user's and claims
  nothing;
- the previous report.json's `artifacts_sha256`, when that report is itself ours (the manifest records its hash).
report.json and report.md are files like any other: ours only while the manifest records the hash they have (an
edited report is the user's). A claimed file is ours only while it is still the file we wrote: a regular file
(not a symlink), inside the folder, with a recorded sha256.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from export.folder.atomic import write_atomic
from export.folder.digest import sha256_file
from export.folder.layout import MANIFEST
from export.report.schema import REPORT_JSON

TOOL = "roformer-trt"
MAX_RECORD_BYTES = 64 << 20
_SHA256 = re.compile(r"[0-9a-f]{64}")


class Ownership:
    def __init__(self, out: Path):
        self.out = Path(out)
        self.manifest_is_ours, manifest_files = _read_manifest(self.out)
        self.claims: dict[str, frozenset[str]] = _claims(self.out, manifest_files)
        self._verdicts: dict[str, bool] = {}

    def owns(self, rel: str) -> bool:
        if rel == MANIFEST:
            return self.manifest_is_ours
        if rel not in self._verdicts:
            self._verdicts[rel] = self._check(rel)
        return self._verdicts[rel]

    def files(self) -> list[str]:
        """Every claimed file still present and still ours (the manifest itself not included)."""
        return sorted(rel for rel in self.claims if rel != MANIFEST and self.owns(rel))

    def collisions(self, names) -> list[str]:
        """Names among `names` that exist in the folder and are not ours (a user's file or folder)."""
        return [n for n in names if _exists(self.out / n) and not self.owns(n)]

    def _check(self, rel: str) -> bool:
        claim = self.claims.get(rel)
        path = self.out / rel
        if claim is None or not _inside(self.out, rel) or path.is_symlink() or not path.is_file():
            return False
        return sha256_file(path) in claim


def manifest_digest(files: Mapping[str, list[str]]) -> str:
    """The manifest's own sha256: over its "tool" and "files", as canonical JSON (sorted keys, no spaces)."""
    body = json.dumps({"files": files, "tool": TOOL}, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(body.encode()).hexdigest()


def write_manifest(out: Path, files: Mapping[str, frozenset[str] | set[str] | str]) -> None:
    """files: {relative path: its sha256, or every sha256 it may have (old and new, during a swap)}."""
    table = {rel: sorted({h} if isinstance(h, str) else h) for rel, h in sorted(files.items())}
    record = {"tool": TOOL, "files": table, "sha256": manifest_digest(table)}
    write_atomic(Path(out) / MANIFEST, json.dumps(record, indent=1))


def merge_claims(*tables: Mapping[str, str | Iterable[str]]) -> dict[str, set[str]]:
    """The union of claim tables ({path: sha256 or a set of them}): a path keeps every hash any table gives."""
    out: dict[str, set[str]] = {}
    for table in tables:
        for rel, h in table.items():
            out.setdefault(rel, set()).update({h} if isinstance(h, str) else h)
    return out


def _read_manifest(out: Path) -> tuple[bool, dict[str, set[str]]]:
    """(is the manifest ours, its claims): ours only when it carries its own digest and that digest matches."""
    data = _read_json(out / MANIFEST)
    if not isinstance(data, dict) or data.get("tool") != TOOL or not isinstance(data.get("files"), dict):
        return False, {}
    if data.get("sha256") != manifest_digest(data["files"]):
        return False, {}
    return True, _hashes(data["files"])


def _claims(out: Path, manifest_files: dict[str, set[str]]) -> dict[str, frozenset[str]]:
    tables: list[Mapping[str, str | Iterable[str]]] = [manifest_files]
    report_path = out / REPORT_JSON
    hashes = manifest_files.get(REPORT_JSON, set())
    if hashes and not report_path.is_symlink() and report_path.is_file() and sha256_file(report_path) in hashes:
        report = _read_json(report_path)  # a report of ours: its artifact hashes are records too
        if isinstance(report, dict):
            tables.append(_hashes(report.get("artifacts_sha256")))
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

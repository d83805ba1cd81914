"""Ownership by record for every file a build writes (issue 27, failures 2 and 4): report.json, report.md and the
manifest are ours only while a record of ours holds their sha256, staging folders only with our marker naming
them; every path a run writes is checked before any work. Most tests drive export.folder directly (no build);
the CLI tests refuse before the checkpoint is read, on a copy of the shared tiny build."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from export.build import main as build
from export.errors import UsageError
from export.folder.digest import sha256_file
from export.folder.layout import MANIFEST, Planned
from export.folder.ownership import Ownership, write_manifest
from export.folder.staging import LOCK, PREFIX, BuildFolder, marker, remove_dead_stagings
from export.report.schema import PRECISIONS, REPORT_JSON, REPORT_MD
from tests.fixtures.tiny_build import build_args
from tests.helpers import one_line
from tests.limits import no_checkpoint_reading


def every_name_we_write() -> list[str]:
    """Every file name any run of export.build may write: every rotary mode and precision, with an engine, the
    bench and the diagnosis, and the manifest."""
    names: dict[str, None] = {}
    for rope in ("plugin", "onnx", "none"):
        for precision in PRECISIONS:
            names |= dict.fromkeys(Planned(rope, precision, engine=True, bench=True).files())
    return sorted(names) + [MANIFEST]


NAMES = every_name_we_write()


def committed(out: Path, files: dict[str, str]) -> None:
    """A set of ours in `out`, moved in by the real swap (so the manifest records it)."""
    with BuildFolder(out) as bf:
        for rel, text in files.items():
            (bf.stage / rel).parent.mkdir(parents=True, exist_ok=True)
            (bf.stage / rel).write_text(text)
        bf.commit(files, {})


OURS = {"model.onnx": "graph", REPORT_JSON: json.dumps({"tool": "roformer-trt"}), REPORT_MD: "# roformer-trt report"}


@pytest.mark.parametrize("name", [REPORT_JSON, REPORT_MD, "model.onnx"])
def test_a_file_we_wrote_is_ours_until_it_is_edited(tmp_path, name):
    """The content of a report says nothing: an edited report (notes appended) is the user's."""
    out = tmp_path / "o"
    committed(out, OURS)
    assert Ownership(out).owns(name) and Ownership(out).owns(MANIFEST)
    with open(out / name, "a") as f:
        f.write("\nmy notes\n")
    assert not Ownership(out).owns(name) and Ownership(out).collisions([name]) == [name]
    with pytest.raises(UsageError, match=re.escape(f"holds '{name}'")), BuildFolder(out) as bf:
        bf.check_targets([name])


@pytest.mark.parametrize("name", [REPORT_JSON, REPORT_MD])
def test_a_report_of_roformer_trt_copied_in_is_not_ours(tmp_path, name):
    """A colleague's report.json (tool "roformer-trt" and all) or report.md in a folder with no record of ours."""
    out = tmp_path / "o"
    committed(tmp_path / "theirs", OURS)
    out.mkdir()
    shutil.copy(tmp_path / "theirs" / name, out / name)
    assert Ownership(out).collisions([name]) == [name]


def test_the_manifest_is_ours_only_with_its_own_digest(tmp_path):
    """A user's file of that name is the user's; so is our manifest once edited, and what it claims is nothing:
    a claim on notes.txt with notes.txt's true sha256 added by hand does not make notes.txt ours."""
    out = tmp_path / "o"
    committed(out, OURS)
    (out / "notes.txt").write_text("keep me")
    record = json.loads((out / MANIFEST).read_text())
    record["files"]["notes.txt"] = [sha256_file(out / "notes.txt")]
    (out / MANIFEST).write_text(json.dumps(record))
    owner = Ownership(out)
    assert not owner.owns(MANIFEST) and not owner.owns("notes.txt") and not owner.owns("model.onnx")
    assert owner.collisions([MANIFEST]) == [MANIFEST]
    (out / MANIFEST).write_text('{"mine": true}\n')
    assert Ownership(out).collisions([MANIFEST, "model.onnx"]) == [MANIFEST, "model.onnx"]


def test_a_report_not_ours_claims_nothing(tmp_path):
    """A report.json no record of ours holds is no record: its artifact hashes claim nothing, even true ones."""
    out = tmp_path / "o"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    report = {"tool": "roformer-trt", "artifacts_sha256": {"notes.txt": sha256_file(out / "notes.txt")}}
    (out / REPORT_JSON).write_text(json.dumps(report))
    assert not Ownership(out).owns("notes.txt") and not Ownership(out).owns(REPORT_JSON)
    write_manifest(out, {REPORT_JSON: sha256_file(out / REPORT_JSON)})  # now the report is ours: so is its record
    assert Ownership(out).owns(REPORT_JSON) and Ownership(out).owns("notes.txt")


def test_force_overwrites_an_edited_report_and_it_is_ours_again(tmp_path):
    out = tmp_path / "o"
    committed(out, OURS)
    (out / REPORT_MD).write_text("# roformer-trt report\nmy notes\n")
    with BuildFolder(out, force=True) as bf:
        bf.check_targets([REPORT_MD, REPORT_JSON])
        (bf.stage / REPORT_MD).write_text("new")
        (bf.stage / REPORT_JSON).write_text("{}")
        bf.commit([], {})
    assert (out / REPORT_MD).read_text() == "new" and Ownership(out).owns(REPORT_MD)


# ---- every path a run writes, checked before any work ----------------------------------------------------


def immutable(path: Path) -> str:
    """Make `path` a file this process cannot write: chattr +i where the sandbox allows it, else mode 0444."""
    if shutil.which("chattr") and subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0:
        return "immutable"
    path.chmod(0o444)
    if os.access(path, os.W_OK):
        pytest.skip("root without chattr: no file here is unwritable")
    return "read-only"


def writable_again(path: Path) -> None:
    if shutil.which("chattr"):
        subprocess.run(["chattr", "-i", str(path)], capture_output=True)
    path.chmod(0o644)


@pytest.mark.parametrize("name", NAMES)
def test_every_name_we_write_is_checked_before_work(tmp_path, name):
    """For each file name: a user's file is refused unless --force, a folder or a file we cannot write even with it."""
    out = tmp_path / "o"
    path = out / name
    path.parent.mkdir(parents=True)
    path.write_text("the user's")
    for force in (False, True):
        with BuildFolder(out, force=force) as bf:
            if force:
                bf.check_targets([name])
            else:
                with pytest.raises(UsageError, match=re.escape(f"holds '{name}', not written by roformer-trt")):
                    bf.check_targets([name])
    how = immutable(path)
    try:
        cannot = re.escape(f"holds '{name}', ") + ".*cannot write"
        with pytest.raises(UsageError, match=cannot), BuildFolder(out, force=True) as bf:
            bf.check_targets([name])
    finally:
        writable_again(path)
    assert how in ("immutable", "read-only")
    path.unlink()
    path.mkdir()
    with pytest.raises(UsageError, match=re.escape(f"holds a folder '{name}'")), BuildFolder(out, force=True) as bf:
        bf.check_targets([name])


@pytest.mark.parametrize("name", [n for n in NAMES if "/" in n])
def test_a_file_where_our_folder_goes_is_refused(tmp_path, name):
    out = tmp_path / "o"
    out.mkdir()
    folder = name.split("/")[0]
    (out / folder).write_text("a file of the user's")
    not_a_folder = re.escape(f"holds '{folder}', not a folder")
    with pytest.raises(UsageError, match=not_a_folder), BuildFolder(out, force=True) as bf:
        bf.check_targets([name])


def test_a_file_of_ours_that_cannot_be_removed_is_refused_before_work(tmp_path):
    """A stale file of ours the swap would remove, made immutable: refused now, not a failed swap later."""
    out = tmp_path / "o"
    committed(out, {**OURS, "model.rope-onnx.onnx": "old"})
    immutable(out / "model.rope-onnx.onnx")
    try:
        with pytest.raises(UsageError, match="'model.rope-onnx.onnx', which this build replaces or removes"):
            with BuildFolder(out) as bf:
                bf.check_targets(["model.onnx"])
    finally:
        writable_again(out / "model.rope-onnx.onnx")


@pytest.mark.parametrize("problem", ["folder", "immutable", "user-file"])
def test_the_manifest_path_is_refused_before_the_checkpoint_is_read(copy, monkeypatch, capsys, tiny_ckpt, problem):
    """Issue 27 failure 4: a folder or an immutable file at .roformer-trt-files.json failed after the whole build
    with exit 4; a user's own file there was overwritten."""
    out, _ = copy
    manifest = out / MANIFEST
    manifest.unlink()
    if problem == "folder":
        manifest.mkdir()
    else:
        manifest.write_text('{"mine": true}\n')
    if problem == "immutable":
        immutable(manifest)
    before = sorted(p.name for p in out.iterdir())
    no_checkpoint_reading(monkeypatch)
    try:
        assert build(build_args(tiny_ckpt, out)) == 2
        line = one_line(capsys)
    finally:
        if problem == "immutable":
            writable_again(manifest)
    assert MANIFEST in line and sorted(p.name for p in out.iterdir()) == before, line


@pytest.mark.parametrize("name", [REPORT_JSON, REPORT_MD])
def test_an_edited_report_stops_a_rebuild_naming_it(copy, monkeypatch, capsys, tiny_ckpt, name):
    """Issue 27 failure 2: `echo notes >> D/report.md` then the same build: exit 0 and the notes gone."""
    out, _ = copy
    with open(out / name, "a") as f:
        f.write("\nnotes\n" if name == REPORT_MD else " ")
    edited = (out / name).read_bytes()
    no_checkpoint_reading(monkeypatch)
    assert build(build_args(tiny_ckpt, out)) == 2
    line = one_line(capsys)
    assert f"'{name}'" in line and "--force" in line and (out / name).read_bytes() == edited


# ---- staging folders: ours only with our marker, naming the folder ---------------------------------------


def dead_staging(out: Path, name: str, lock: bytes | None) -> Path:
    d = out / name
    d.mkdir(parents=True)
    (d / "model.onnx").write_text("half-written")
    if lock is not None:
        (d / LOCK).write_bytes(lock)
    return d


@pytest.mark.parametrize(
    "lock",
    [b"", None, b"roformer-trt", marker(PREFIX + "another"), marker(PREFIX + "mybackup") + b"x"],
    ids=["empty-lock", "no-lock", "our-word-only", "another-folders-marker", "marker-and-more"],
)
def test_a_staging_named_folder_without_our_marker_is_never_removed(tmp_path, lock):
    out = tmp_path / "o"
    mine = dead_staging(out, PREFIX + "mybackup", lock)
    (mine / "thesis.tex").write_text("\\documentclass{article}")
    assert remove_dead_stagings(out) == []
    with BuildFolder(out):
        pass
    assert (mine / "thesis.tex").exists() and (mine / "model.onnx").exists()


def test_a_dead_staging_of_ours_is_removed_and_its_copy_is_not(tmp_path):
    out = tmp_path / "o"
    ours = dead_staging(out, PREFIX + "abc123", marker(PREFIX + "abc123"))
    copied = out / (PREFIX + "abc123-copy")
    shutil.copytree(ours, copied)
    assert remove_dead_stagings(out) == [ours.name] and not ours.exists() and copied.exists()


def test_a_live_staging_carries_our_marker(tmp_path):
    with BuildFolder(tmp_path / "o") as bf:
        assert bf.stage is not None and (bf.stage / LOCK).read_bytes() == marker(bf.stage.name)


def test_a_claimed_path_that_is_a_symlink_is_not_ours(tmp_path, tiny_ckpt, capsys):
    """A symlink is never a file we wrote, even when the manifest claims its name with the hash of the file it
    points to: the links stay inside the folder (so only the symlink rule can refuse them), and a build that would
    replace one refuses instead, leaving the link and its target as they were."""
    out = tmp_path / "o"
    (out / "mine").mkdir(parents=True)
    for rel, text in (("model.onnx", "ours"), (REPORT_MD, "# roformer-trt report\nmy notes")):
        (out / "mine" / rel).write_text(text)
        (out / rel).symlink_to(out / "mine" / rel)
    write_manifest(out, {rel: sha256_file(out / "mine" / rel) for rel in ("model.onnx", REPORT_MD)})
    owner = Ownership(out)
    assert {"model.onnx", REPORT_MD} <= set(owner.claims)  # claimed, with the targets' hashes
    assert not owner.owns("model.onnx") and not owner.owns(REPORT_MD) and owner.owns(MANIFEST)
    assert owner.collisions(["model.onnx", REPORT_MD]) == ["model.onnx", REPORT_MD]
    assert build(build_args(tiny_ckpt, out)) == 2
    assert "not written by roformer-trt" in capsys.readouterr().err
    assert (out / "model.onnx").is_symlink() and (out / "mine" / "model.onnx").read_text() == "ours"

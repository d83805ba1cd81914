"""export.folder.staging and export.folder.ownership: a run removes or replaces only what a run of ours wrote, decided
from the manifest and the previous report (with hashes), never from a name pattern; the swap's order is recorded.
Ownership of the reports, the manifest and staging folders, and the checks before work: test_ownership.py."""

from __future__ import annotations

import json

import pytest

from export.build import main as build
from export.errors import UsageError
from export.folder.digest import sha256_file
from export.folder.layout import MANIFEST
from export.folder.ownership import Ownership, write_manifest
from export.folder.staging import PREFIX, BuildFolder, move_rank, remove_dead_stagings
from export.report.schema import REPORT_JSON, REPORT_MD
from tests.fixtures.tiny_build import FAST

USER_FILES = {
    "bench/my_results.csv": "a,b\n1,2\n",
    "model_quantized.onnx": "mine",
    "model-final.plan": "mine",
    "model.v1.plan.json": "{}",
    "notes.txt": "keep me",
}


def put(folder, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text)


def tree(folder) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): p.read_text(errors="replace")
        for p in sorted(folder.rglob("*"))
        if p.is_file() and PREFIX not in p.as_posix()
    }


def stage(bf: BuildFolder, files: dict[str, str]) -> dict[str, str]:
    put(bf.stage, files)
    return {rel: sha256_file(bf.stage / rel) for rel in files if rel not in (REPORT_JSON, REPORT_MD)}


def test_the_users_files_survive_a_build_and_a_rebuild(tiny_ckpt, tmp_path):
    """The reliability issue's case: bench/my_results.csv, model_quantized.onnx, model-final.plan and
    model.v1.plan.json were deleted by the name-pattern swap. Also after a --bench build wrote bench/ files."""
    out = tmp_path / "out"
    out.mkdir()
    put(out, USER_FILES)
    assert (
        build(
            [
                "--model",
                str(tiny_ckpt),
                "--out",
                str(out),
                *FAST,
                "--bench",
                "--bench-iters",
                "1",
                "--bench-grid",
                "1x8",
            ]
        )
        == 0
    )
    assert (out / "bench" / "bench.json").exists()
    assert build(["--model", str(tiny_ckpt), "--out", str(out), *FAST]) == 0  # no bench: our bench files go
    after = tree(out)
    assert {k: after.get(k) for k in USER_FILES} == USER_FILES
    assert not (out / "bench" / "bench.json").exists() and (out / "bench").is_dir()
    manifest = json.loads((out / MANIFEST).read_text())
    assert "notes.txt" not in manifest["files"] and "model.onnx" in manifest["files"]


def test_a_users_file_under_a_planned_name_is_refused_before_work_unless_force(tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.onnx").write_text("the user's own graph")
    assert build(["--model", str(tiny_ckpt), "--out", str(out), *FAST]) == 2
    err = capsys.readouterr().err
    assert "'model.onnx'" in err and "--force" in err and err.count("\n") == 1
    assert tree(out) == {"model.onnx": "the user's own graph"}
    assert build(["--model", str(tiny_ckpt), "--out", str(out), *FAST, "--force"]) == 0
    assert (out / "model.onnx").read_bytes() != b"the user's own graph"


def test_a_file_of_ours_the_user_edited_is_theirs_again(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "model.onnx").write_text("ours")
    write_manifest(out, {"model.onnx": sha256_file(out / "model.onnx")})
    assert Ownership(out).owns("model.onnx")
    (out / "model.onnx").write_text("edited by the user")
    assert not Ownership(out).owns("model.onnx") and Ownership(out).collisions(["model.onnx"]) == ["model.onnx"]


def test_a_doctored_report_claims_nothing_whose_hash_differs(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    put(out, {"notes.txt": "keep"})
    (out / REPORT_JSON).write_text(
        json.dumps(
            {
                "tool": "roformer-trt",
                "artifacts": {"x": "notes.txt"},
                "artifacts_sha256": {"notes.txt": "0" * 64, "../up": "0" * 64},
            }
        )
    )
    write_manifest(out, {REPORT_JSON: sha256_file(out / REPORT_JSON)})  # the report is ours: its claims count
    owner = Ownership(out)
    assert owner.owns(REPORT_JSON) and not owner.owns("notes.txt") and "../up" not in owner.claims


def test_commit_moves_weights_then_graphs_then_reports_and_rewrites_the_manifest_last(tmp_path):
    out = tmp_path / "o"
    with BuildFolder(out) as bf:
        hashes = stage(
            bf,
            {
                "model.onnx": "g",
                "model.onnx.data": "w",
                "bench/bench.json": "{}",
                REPORT_MD: "# roformer-trt report",
                REPORT_JSON: json.dumps({"tool": "roformer-trt"}),
            },
        )
        moves = bf.commit(hashes, hashes)
    assert moves == ["model.onnx.data", "bench/bench.json", "model.onnx", REPORT_MD, REPORT_JSON]
    assert sorted(moves, key=move_rank) == moves
    manifest = json.loads((out / MANIFEST).read_text())["files"]
    assert set(manifest) == set(moves) and manifest[REPORT_JSON] == [sha256_file(out / REPORT_JSON)]


def test_commit_replaces_our_old_set_and_keeps_everything_else(tmp_path):
    out = tmp_path / "o"
    with BuildFolder(out) as bf:
        old = stage(
            bf,
            {
                "model.onnx": "old",
                "model.rope-onnx.onnx": "old",
                "timing.cache": "old",
                "bench/bench.json": "old",
                REPORT_JSON: json.dumps({"tool": "roformer-trt"}),
            },
        )
        bf.commit(old, old)
    put(out, USER_FILES)
    with BuildFolder(out) as bf:
        bf.reuse("timing.cache", "model.fp16.plan")  # what an engine stage may reuse; absent plan: skipped
        assert (bf.stage / "timing.cache").read_text() == "old"
        (bf.stage / "timing.cache").unlink()  # this run did not keep it: the old one stays
        new = stage(
            bf,
            {
                "model.onnx": "new",
                "model.fp16.plan": "new",
                REPORT_MD: "new",
                REPORT_JSON: json.dumps({"tool": "roformer-trt", "n": 2}),
            },
        )
        bf.commit({"model.onnx": new["model.onnx"]}, new)  # the plan is not described: not moved into place
    files = tree(out)
    files.pop(MANIFEST)
    assert files == {
        **USER_FILES,
        "model.onnx": "new",
        REPORT_MD: "new",
        "timing.cache": "old",
        REPORT_JSON: json.dumps({"tool": "roformer-trt", "n": 2}),
    }


def test_a_kill_during_the_swap_leaves_a_manifest_that_still_claims_both_sets(tmp_path, monkeypatch):
    """Killed after the old report is removed and before the new one lands: the next run still knows every
    file of ours there, so it removes them and nothing else."""
    out = tmp_path / "o"
    with BuildFolder(out) as bf:
        old = stage(bf, {"model.onnx": "old", "model.rope-plugin.onnx": "old", REPORT_JSON: '{"tool": "roformer-trt"}'})
        bf.commit(old, old)
    put(out, USER_FILES)
    import export.folder.staging as staging

    def killed(*args):
        raise KeyboardInterrupt  # stands for SIGKILL at the first move: nothing after it runs

    with BuildFolder(out) as bf:
        new = stage(bf, {"model.onnx": "new", "model.rope-onnx.onnx": "new", REPORT_JSON: '{"tool": "roformer-trt"}'})
        monkeypatch.setattr(staging, "_place", killed)
        with pytest.raises(KeyboardInterrupt):
            bf.commit(new, new)
    monkeypatch.undo()
    assert not (out / REPORT_JSON).exists()  # the old report went first
    claims = Ownership(out).files()
    assert "model.rope-plugin.onnx" not in tree(out) and not set(USER_FILES) & set(claims)
    with BuildFolder(out) as bf:
        again = stage(bf, {"model.onnx": "again", REPORT_JSON: '{"tool": "roformer-trt"}'})
        bf.commit(again, again)
    assert {k: v for k, v in tree(out).items() if k != MANIFEST} == {
        **USER_FILES,
        "model.onnx": "again",
        REPORT_JSON: '{"tool": "roformer-trt"}',
    }


def test_a_user_folder_where_a_file_goes_is_refused_even_with_force(tmp_path):
    out = tmp_path / "o"
    (out / "model.onnx").mkdir(parents=True)
    with pytest.raises(UsageError, match="holds a folder 'model.onnx'"), BuildFolder(out, force=True) as bf:
        bf.check_targets(["model.onnx"])


def test_live_staging_is_never_removed(tmp_path):
    out = tmp_path / "o"
    with BuildFolder(out) as live:
        (live.stage / "model.onnx").write_bytes(b"x")
        assert remove_dead_stagings(out) == [] and (live.stage / "model.onnx").exists()
    assert not out.exists()  # the run made the folder and committed nothing: it leaves no empty folder


def test_a_run_that_fails_removes_only_what_it_made(tmp_path):
    out = tmp_path / "o"
    with pytest.raises(RuntimeError):
        with BuildFolder(out) as bf:
            (bf.stage / "model.onnx").write_bytes(b"x")
            raise RuntimeError("stage failed")
    assert not out.exists()
    kept = tmp_path / "k"
    kept.mkdir()
    (kept / "mine.txt").write_text("user file")
    with pytest.raises(RuntimeError), BuildFolder(kept):
        raise RuntimeError("stage failed")
    assert [p.name for p in kept.iterdir()] == ["mine.txt"]


@pytest.mark.parametrize(
    "bad,why", [("file", "is a file"), ("long", "255"), ("under-file", "is a file"), ("read-only", "not writable")]
)
def test_out_problems_are_found_from_the_path(tmp_path, bad, why):
    import os

    target = {
        "file": tmp_path / "f",
        "long": tmp_path / ("x" * 300),
        "under-file": tmp_path / "f" / "sub",
        "read-only": tmp_path / "ro" / "out",
    }[bad]
    (tmp_path / "f").write_text("a file")
    (tmp_path / "ro").mkdir()
    os.chmod(tmp_path / "ro", 0o500)
    try:
        if bad == "read-only" and os.access(tmp_path / "ro", os.W_OK):
            pytest.skip("running as a user who can write anywhere (root): a read-only folder cannot be made")
        with pytest.raises(UsageError, match=why), BuildFolder(target):
            pass
    finally:
        os.chmod(tmp_path / "ro", 0o700)


def test_used_outside_its_with_block_the_error_names_the_class(tmp_path):
    with pytest.raises(RuntimeError, match=r"^BuildFolder is used outside its with-block$"):
        BuildFolder(tmp_path / "o").reuse("timing.cache")

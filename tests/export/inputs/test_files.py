"""export.inputs.files: every user-named file that is not what it claims to be is one UsageError line, at once.

FIFOs, devices, directories, oversize files, non-UTF-8, pathological JSON nesting, invalid JSON/TOML."""

from __future__ import annotations

import os
import resource
import socket
import threading

import pytest

from export.errors import UsageError
from export.inputs.files import MiB, load_json, load_toml, read_bytes, read_text, require_regular_file


def refused(fn, *args, **kw) -> str:
    with pytest.raises(UsageError) as e:
        fn(*args, **kw)
    msg = str(e.value)
    assert "\n" not in msg and "Traceback" not in msg, msg
    return msg


def test_missing_file(tmp_path):
    msg = refused(load_json, tmp_path / "nope.json", what="checkpoint config")
    assert "checkpoint config" in msg and "nope.json" in msg and "does not exist" in msg


def test_directory(tmp_path):
    msg = refused(read_text, tmp_path, what="vocab", max_bytes=MiB)
    assert "is a directory" in msg and str(tmp_path) in msg


@pytest.mark.timeout(20)
def test_fifo_is_refused_without_hanging(tmp_path):
    fifo = tmp_path / "config.json"
    os.mkfifo(fifo)
    result = {}

    def read():  # no writer ever opens the FIFO: a plain open() would block forever
        try:
            load_json(fifo, what="checkpoint config")
        except UsageError as e:
            result["msg"] = str(e)

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(5)
    assert not t.is_alive(), "reading a FIFO hung"
    assert "FIFO" in result["msg"] and "config.json" in result["msg"]


@pytest.mark.timeout(10)
def test_fifo_swapped_in_after_stat_does_not_hang(tmp_path, monkeypatch):
    """The race the O_NONBLOCK open + fstat guard is for: stat saw a file, open gets a FIFO."""
    import export.inputs.files as files

    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    monkeypatch.setattr(files, "require_regular_file", lambda p, what: p)
    msg = refused(files.read_bytes, fifo, what="vocab", max_bytes=10)
    assert "FIFO" in msg


def test_socket_and_device(tmp_path):
    sock_path = tmp_path / "s"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(sock_path))
        assert "socket" in refused(read_bytes, sock_path, what="vocab", max_bytes=10)
    assert "character device" in refused(read_bytes, "/dev/null", what="vocab", max_bytes=10)


def test_dev_zero_does_not_grow_memory():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    msg = refused(load_json, "/dev/zero", what="report")
    grew_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert "character device" in msg and grew_kib < 64 * 1024, grew_kib


def test_too_big_is_refused_before_reading(tmp_path):
    big = tmp_path / "big.json"
    with open(big, "wb") as f:
        f.truncate(64 * MiB)  # sparse: costs no disk, and reading it whole would cost 64 MiB
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    msg = refused(load_json, big, what="report", max_bytes=MiB)
    assert "over the 1048576-byte limit" in msg and "big.json" in msg
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 32 * 1024


def test_size_cap_is_exact(tmp_path):
    p = tmp_path / "x"
    p.write_bytes(b"a" * 10)
    assert read_bytes(p, what="vocab", max_bytes=10) == b"a" * 10
    refused(read_bytes, p, what="vocab", max_bytes=9)


def test_non_utf8(tmp_path):
    p = tmp_path / "vocab.txt"
    p.write_bytes(b"[PAD]\n\xff\xfe\n")
    msg = refused(read_text, p, what="vocab", max_bytes=MiB)
    assert "not UTF-8" in msg and "0xff" in msg and "vocab.txt" in msg


@pytest.mark.parametrize("closed", [False, True])
def test_deep_json_is_refused(tmp_path, closed):
    p = tmp_path / "config.json"
    p.write_text("[" * 100_000 + ("]" * 100_000 if closed else ""))
    assert "deeper than 64 levels" in refused(load_json, p, what="checkpoint config")


def test_depth_cap_is_exact(tmp_path):
    p = tmp_path / "a.json"
    p.write_text("[" * 64 + "]" * 64)
    assert load_json(p, what="report") is not None
    p.write_text("[" * 65 + "]" * 65)
    refused(load_json, p, what="report")


def test_invalid_json_and_toml(tmp_path):
    j = tmp_path / "config.json"
    j.write_text('{"hidden_size": 32,}')
    assert "not valid JSON (line 1" in refused(load_json, j, what="checkpoint config")
    t = tmp_path / "thresholds.toml"
    t.write_text("[a\nb = ")
    assert "not valid TOML" in refused(load_toml, t, what="thresholds")


def test_valid_files_load(tmp_path):
    j = tmp_path / "c.json"
    j.write_bytes('\ufeff{"a": [1, {"b": "é"}]}'.encode())
    assert load_json(j, what="report") == {"a": [1, {"b": "é"}]}
    t = tmp_path / "t.toml"
    t.write_text("[gate]\natol = 1e-3\n")
    assert load_toml(t, what="thresholds") == {"gate": {"atol": 1e-3}}
    assert require_regular_file(t, what="thresholds") == t

"""engines.serving without a server (main environment, ONNX Runtime only): request checks and the build's
files. A request is judged on its metadata before anything is copied; values that would be answered as
if valid are refused; the graph is opened only through export.folder.artifacts.verify_artifact."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from engines.serving.ort_model import OrtEncoder, RequestError
from export.errors import UsageError, VerificationError


@pytest.fixture(scope="module")
def build(served):
    return served.path  # read only; the tests that change it copy it first


@pytest.fixture(scope="module")
def encoder(build):
    return OrtEncoder.from_build(build, pooling="mean", threads=1)


def feeds(s=5):
    ids = np.full((1, s), 7, np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}


def test_oversize_request_is_judged_on_metadata_alone(encoder):
    meta = {n: ((1, 2_000_000), np.dtype(np.int64)) for n in ("input_ids", "attention_mask", "token_type_ids")}
    assert (
        encoder.shape_problem(meta) == "sequence length 2000000 exceeds the model's 64 positions; truncate to 64 tokens"
    )
    assert encoder.shape_problem({n: (a.shape, a.dtype) for n, a in feeds().items()}) is None


@pytest.mark.parametrize(
    "name,value,expected",
    [
        ("token_type_ids", 2, "token_type_ids outside [0, 2)"),
        ("token_type_ids", -1, "token_type_ids outside [0, 2)"),  # ORT's Gather would wrap -1 and answer
        ("attention_mask", 2, "attention_mask holds values other than 0 and 1"),
        ("attention_mask", -1, "attention_mask holds values other than 0 and 1"),
        ("input_ids", 99, "input_ids outside [0, 99)"),
    ],
)
def test_out_of_range_values_are_refused(encoder, name, value, expected):
    f = feeds()
    f[name][0, 1] = value
    with pytest.raises(RequestError, match=expected.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        encoder(f)
    assert encoder(feeds())["sentence_embedding"].shape == (1, 32)  # the valid request still runs


def test_type_vocab_comes_from_the_graph_when_the_report_lacks_it(tmp_path, build):
    import shutil

    b = tmp_path / "b"
    shutil.copytree(build, b)
    report = json.loads((b / "report.json").read_text())
    del report["model"]["type_vocab_size"]  # export.build's report.json does not record it (yet)
    (b / "report.json").write_text(json.dumps(report))
    assert OrtEncoder.from_build(b, threads=1).limits.type_vocab_size == 2


def test_graph_is_checked_against_the_report(tmp_path, build):
    import shutil

    b = tmp_path / "b"
    shutil.copytree(build, b)
    report = json.loads((b / "report.json").read_text())
    report["artifacts_sha256"]["model.onnx"] = hashlib.sha256(b"something else").hexdigest()
    (b / "report.json").write_text(json.dumps(report))
    with pytest.raises(VerificationError, match="model.onnx has sha256 .* rebuild it with python -m export.build"):
        OrtEncoder.from_build(b, threads=1)
    report["artifacts_sha256"] = {}
    report["artifacts"]["onnx"] = "../../etc/hostname"
    (b / "report.json").write_text(json.dumps(report))
    with pytest.raises(UsageError, match="is not a path inside the build folder"):  # refused with the schema
        OrtEncoder.from_build(b, threads=1)


def test_report_is_read_safely(tmp_path):
    (tmp_path / "report.json").write_text("[" * 100_000)
    with pytest.raises(UsageError, match="report .* deeper than 64 levels"):
        OrtEncoder.from_build(tmp_path)


@pytest.mark.timeout(60)
def test_client_vocab_is_read_safely(tmp_path, capsys):
    import os

    from engines.client import main

    os.mkfifo(tmp_path / "fifo.txt")
    (tmp_path / "latin1.txt").write_bytes("[PAD]\n[UNK]\n[CLS]\n[SEP]\ncaf\xe9\n".encode("latin-1"))
    for name, expected in [
        ("fifo.txt", "is a FIFO (named pipe), not a regular file"),
        ("latin1.txt", "is not UTF-8 text"),
    ]:
        code = main(["--vocab", str(tmp_path / name), "--model", "m", "hello"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and expected in err and len(err.splitlines()) == 1, err


def test_a_pooled_build_is_served_with_its_own_pooling(pooled):
    """export.build --pooling mean --normalize: the served graph (the plain export, pooled here) computes what
    the engine computes, normalisation included; another mode is refused, naming both."""
    from engines.serving.ort_model import load_build
    from export.passes.pooling import Pooling, declared_pooling

    model, _, _ = load_build(pooled, "mean")
    assert declared_pooling(model) == Pooling("mean", normalize=True)
    assert declared_pooling(load_build(pooled, "none")[0]) == Pooling("mean", normalize=True)
    with pytest.raises(UsageError, match="--pooling cls disagrees with the build.*mean, L2-normalised"):
        load_build(pooled, "cls")

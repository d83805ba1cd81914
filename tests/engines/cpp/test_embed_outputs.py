"""embed's output choice, shape check and host mean pooling (engines/cpp/embedOutputs.h), compiled with the host
C++ compiler and run: no TensorRT or GPU needed. An engine built with `--outputs sentence_embedding` has no
last_hidden_state at all, and embed must print its pooled rows; without sentence_embedding it pools
last_hidden_state itself by sentence-transformers' rule (export.reference.sentence_embedding_ref)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from export.reference import sentence_embedding_ref

CPP = Path(__file__).resolve().parents[3] / "engines" / "cpp"

pytestmark = pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler (c++) on PATH")


@pytest.fixture(scope="module")
def driver(tmp_path_factory) -> Path:
    exe = tmp_path_factory.mktemp("embed") / "embedOutputsTest"
    r = subprocess.run(
        [
            "c++",
            "-std=c++17",
            "-Wall",
            "-Wextra",
            "-Werror",
            str(CPP / "tests" / "embedOutputsTest.cpp"),
            "-o",
            str(exe),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0 and r.stderr == "", r.stderr
    return exe


def call(driver: Path, *args: str, stdin: str = "") -> str:
    r = subprocess.run([str(driver), *args], input=stdin, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


@pytest.mark.parametrize(
    "outputs, chosen",
    [
        (["sentence_embedding"], 0),  # --outputs sentence_embedding: the engine's only output
        (["last_hidden_state", "sentence_embedding"], 1),  # both: the pooled one
        (["last_hidden_state"], 0),  # no pooling in the engine: embed pools on the host
        (["logits"], -1),  # a task head: nothing to print
    ],
)
def test_output_choice(driver, outputs, chosen):
    assert call(driver, "choose", *outputs) == str(chosen)


@pytest.mark.parametrize(
    "kind, dims, ok",
    [
        ("pooled", [3, 32], True),
        ("pooled", [3, 16], True),  # a Dense layer or --truncate-dim: any width is the pooled output's
        ("pooled", [3, 0], False),
        ("pooled", [3, 5, 32], False),
        ("pooled", [2, 32], False),
        ("hidden", [3, 5, 32], True),
        ("hidden", [3, 32], False),
        ("hidden", [3, 4, 32], False),
    ],
)
def test_shape_check(driver, kind, dims, ok):
    out = call(driver, "shape", kind, "3", "5", *map(str, dims))
    assert (out == "ok") == ok, out
    if not ok:
        assert out.startswith("sentence_embedding" if kind == "pooled" else "last_hidden_state")


def test_host_mean_is_sentence_transformers_rule(driver):
    rng = np.random.default_rng(0)
    b, s, d = 4, 6, 5
    hidden = rng.normal(size=(b, s, d)).astype(np.float32)
    mask = np.ones((b, s), np.int64)
    mask[1, 2:] = 0
    mask[3, :] = 0  # all padding: zeros, not NaN
    data = f"{b} {s} {d}\n" + " ".join(map(str, mask.ravel())) + "\n" + " ".join(repr(float(x)) for x in hidden.ravel())
    got = np.array([[float(v) for v in line.split()] for line in call(driver, "mean", stdin=data).splitlines()])
    # both sum the same float32 values in double: equal up to the order of the additions
    np.testing.assert_allclose(got, sentence_embedding_ref(hidden, mask, "mean"), rtol=0, atol=1e-12)
    assert not got[3].any()

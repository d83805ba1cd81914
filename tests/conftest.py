"""Shared fixtures: tiny deterministic checkpoints and exported graphs, made once per session."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from tests.fixtures.tiny_build import build_args
from tests.plugins import builds

os.environ.setdefault("TERM", "dumb")  # rich progress stays quiet and line-based in CI logs


def pytest_configure(config):
    builds.start(config)  # the C++ builds of tests/plugins compile in the background while Python tests run


def pytest_unconfigure(config):
    builds.stop()


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    """Canonical {config, state_dict} checkpoint of a 2-layer RoFormerModel."""
    from tests.fixtures.checkpoints import write_demo

    return write_demo(tmp_path_factory.mktemp("tiny"), tiny=True)


@pytest.fixture(scope="session")
def make_ckpt(tmp_path_factory):
    """make_ckpt(task=..., dtype=..., **config overrides) -> (path, model): cached per argument set."""
    from tests.fixtures.checkpoints import make_model, save_canonical, tiny_config

    cache: dict = {}

    def make(task: str = "model", dtype: torch.dtype = torch.float32, **overrides):
        key = (task, dtype, tuple(sorted(overrides.items())))
        if key not in cache:
            model = make_model(tiny_config(**overrides), task, dtype=dtype)
            path = tmp_path_factory.mktemp("ckpt") / "ckpt.pt"
            save_canonical(model, path)
            cache[key] = (path, model)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """exported(exporter, opset, task=..., dtype=..., max_len=..., **overrides) -> (onnx path, model, config)."""
    from export.onnx_export import export_onnx
    from tests.fixtures.checkpoints import make_model, tiny_config

    cache: dict = {}

    def export(
        exporter: str,
        opset: int,
        task: str = "model",
        dtype: torch.dtype = torch.float32,
        max_len: int = 96,
        **overrides,
    ):
        key = (exporter, opset, task, dtype, max_len, tuple(sorted(overrides.items())))
        if key not in cache:
            config = tiny_config(**overrides)
            model = make_model(config, task, dtype=dtype)
            path = tmp_path_factory.mktemp("onnx") / "model.onnx"
            export_onnx(model, task, path, max_len, exporter, opset)
            cache[key] = (path, model, config)
        return cache[key]

    return export


@pytest.fixture(scope="session")
def built(tiny_ckpt, tmp_path_factory):
    """One real tiny build (export.build), shared by the tests that read or doctor a build folder."""
    from export.build import main as build

    out = tmp_path_factory.mktemp("rel") / "tiny"
    assert build(["--model", str(tiny_ckpt), "--out", str(out), "--exporter", "torchscript", "--max-len", "24"]) == 0
    return out


@pytest.fixture(scope="session")
def pooled(tiny_ckpt, tmp_path_factory):
    """A real tiny build with `--pooling mean --normalize --precision fp16`, shared by the pooling and Triton tests."""
    from export.build import main as build

    out = tmp_path_factory.mktemp("pooled") / "tiny"
    assert build(build_args(tiny_ckpt, out, "--pooling", "mean", "--normalize", "--precision", "fp16")) == 0
    return out


@pytest.fixture
def copy(built, tmp_path):
    """A fresh copy of the build and a function that rewrites its report.json."""
    out = tmp_path / "tiny"
    shutil.copytree(built, out)

    def doctor(change):
        r = json.loads((out / "report.json").read_text())
        change(r)
        (out / "report.json").write_text(json.dumps(r))
        return str(out / "report.json")

    return out, doctor

"""Shared fixtures: tiny deterministic checkpoints and exported graphs, made once per session."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from tests.fixtures.tiny_build import build_args

os.environ.setdefault("TERM", "dumb")  # rich progress stays quiet and line-based in CI logs


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
def int8_built(tiny_ckpt, tmp_path_factory):
    """A real tiny build with `--precision int8` (its Q/DQ graph and INT8 CPU twin), shared by the quantization and
    diagnosis tests."""
    from export.build import main as build

    out = tmp_path_factory.mktemp("q") / "int8"
    assert build(build_args(tiny_ckpt, out, "--precision", "int8")) == 0
    return out


@pytest.fixture(scope="session")
def pooled(tiny_ckpt, tmp_path_factory):
    """A real tiny build with `--pooling mean --normalize --precision fp16`, shared by the pooling and Triton tests."""
    from export.build import main as build

    out = tmp_path_factory.mktemp("pooled") / "tiny"
    assert build(build_args(tiny_ckpt, out, "--pooling", "mean", "--normalize", "--precision", "fp16")) == 0
    return out


@pytest.fixture(scope="session")
def st_built(tmp_path_factory):
    """A real tiny build of a sentence-transformers folder (RoFormer weights at the folder itself; modules.json:
    lasttoken Pooling, a Tanh Dense 32 -> 24, Normalize; config.json declares Matryoshka widths 8, 16, 24) with
    `--truncate-dim 16`: (StFolder, build folder, torch model), shared by the pooling, Triton and serving tests."""
    from export.build import main as build
    from tests.fixtures.checkpoints import make_model, tiny_config
    from tests.fixtures.st_folder import write_st_folder

    root = tmp_path_factory.mktemp("st")
    model = make_model(tiny_config(), "model")
    hidden = model.config.hidden_size
    pooling = {"embedding_dimension": hidden, "pooling_mode": "lasttoken"}
    config = {"matryoshka_dimensions": [8, 16, 24]}
    st = write_st_folder(root / "ckpt", hidden, pooling, ({"out": 24},), model=model, config=config)
    out = root / "build"
    assert build(build_args(st.folder, out, "--truncate-dim", "16")) == 0
    return st, out, model


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

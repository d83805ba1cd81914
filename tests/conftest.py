"""Shared fixtures: tiny deterministic checkpoints and exported graphs, made once per session."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.fixtures.once import locked, session_root, shared_folder
from tests.fixtures.tiny_build import build_args
from tests.plugins import builds

os.environ.setdefault("TERM", "dumb")  # rich progress stays quiet and line-based in CI logs
WHOLE_SUITE_WORKERS = 2


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config):
    """The whole suite (README's `python -m pytest`: no paths, -k or -m given) runs on two pytest-xdist workers, a
    module per worker at a time (--dist loadscope: a module's fixtures are made once); a run of chosen tests, or
    one given -n, stays as asked. Measured: scripts/results/ci/README.md."""
    if hasattr(config, "workerinput") or os.environ.get("PYTEST_XDIST_WORKER"):
        return  # a worker: it runs what the controller sends it
    whole = not config.args or [str(a) for a in config.args] == [str(a) for a in config.getini("testpaths")]
    whole = whole and not config.option.keyword and not config.option.markexpr  # -k/-m: a chosen few
    if whole and config.pluginmanager.hasplugin("xdist") and config.option.numprocesses is None:
        config.option.numprocesses, config.option.dist = WHOLE_SUITE_WORKERS, "loadscope"


def pytest_configure(config):
    builds.start(config)  # the C++ builds of tests/plugins compile in the background while Python tests run


def pytest_unconfigure(config):
    builds.stop()


def overrides_key(overrides: dict) -> str:
    """A cache key for config overrides, nested dicts (rope_parameters) included."""
    return json.dumps(overrides, sort_keys=True, default=repr)


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    """Canonical {config, state_dict} checkpoint of a 2-layer RoFormerModel."""
    from tests.fixtures.checkpoints import write_demo

    return shared_folder(tmp_path_factory, "tiny-ckpt", lambda d: write_demo(d, tiny=True)) / "ckpt.pt"


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
    """exported(exporter, opset, task=..., dtype=..., max_len=..., **overrides) -> (onnx path, model, config).
    Each graph is exported once per session (and shared by pytest-xdist workers); the model is the same
    deterministic one in every process."""
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
            name = "-".join(str(k) for k in key[:5]) + "".join(f"-{k}={v}" for k, v in key[5])
            folder = shared_folder(
                tmp_path_factory,
                f"onnx-{name}",
                lambda d: export_onnx(model, task, d / "model.onnx", max_len, exporter, opset),
            )
            cache[key] = (folder / "model.onnx", model, config)
        return cache[key]

    return export


@pytest.fixture(scope="session")
def built(tiny_ckpt, tmp_path_factory):
    """One real tiny build (export.build), shared by the tests that read or doctor a build folder."""
    from export.build import main as build

    def make(d: Path):
        assert build(build_args(tiny_ckpt, d / "tiny")) == 0

    return shared_folder(tmp_path_factory, "built", make) / "tiny"


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

    def make(d: Path):
        assert build(build_args(tiny_ckpt, d / "tiny", "--pooling", "mean", "--normalize", "--precision", "fp16")) == 0

    return shared_folder(tmp_path_factory, "pooled", make) / "tiny"


RELEASE_FLAGS = ("--max-len", "128", "--profiles", "64,128")  # past the tiny table's 64 rows: the table is extended
KEEP_ENV = "ROFORMER_TRT_KEEP_BUILDS"  # a folder to copy the release builds into (.ci/run gates them there)


@pytest.fixture(scope="session")
def release_builds(tiny_ckpt, tmp_path_factory) -> dict[str, Path]:
    """{"fp16": folder, "int8": folder}: the tiny checkpoint built as a user builds it (the default exporter and
    rotary mode, the fallback on), --max-len 128 and two profiles. With $ROFORMER_TRT_KEEP_BUILDS=<folder>, also
    copied to <folder>/fp16 and <folder>/int8 (which must not exist yet), where .ci/run gates them for real."""
    from export.build import main as build

    def make(d: Path):
        for precision in ("fp16", "int8"):
            argv = ["--model", str(tiny_ckpt), "--out", str(d / precision), "--precision", precision, *RELEASE_FLAGS]
            assert build(argv) == 0, precision

    folder = shared_folder(tmp_path_factory, "release", make)
    keep = os.environ.get(KEEP_ENV)
    if keep:
        with locked(session_root(tmp_path_factory) / "once" / "keep.lock"):
            if not (Path(keep) / "int8").exists():
                Path(keep).mkdir(parents=True, exist_ok=True)
                for precision in ("fp16", "int8"):
                    shutil.copytree(folder / precision, Path(keep) / precision)
    return {p: folder / p for p in ("fp16", "int8")}


@dataclass(frozen=True)
class Served:
    path: Path  # the build folder (read only: copy it to change it)
    model: torch.nn.Module  # the fp32 model it was built from


@pytest.fixture(scope="session")
def served(tmp_path_factory) -> Served:
    """The tiny build the serving and Triton tests serve (tests.fixtures.tiny_build.write_tiny_build, seed 0)."""
    from tests.fixtures.tiny_build import tiny_model, write_tiny_build

    folder = shared_folder(tmp_path_factory, "served", lambda d: write_tiny_build(d / "tiny"))
    return Served(folder / "tiny", tiny_model())


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


@pytest.fixture(scope="session")
def hf_ckpt(tmp_path_factory):
    """hf_ckpt(family, task="model", **config overrides) -> (HF folder with tokenizer.json, model): cached per
    argument set, so each tiny variant of a family is written once per session."""
    from tests.fixtures.hf_checkpoints import write_hf

    cache: dict = {}

    def make(family: str, task: str = "model", **overrides):
        key = (family, task, overrides_key(overrides))
        if key not in cache:
            cache[key] = write_hf(tmp_path_factory.mktemp(f"{family}-{task}") / "ckpt", family, task, **overrides)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def family_build(hf_ckpt, tmp_path_factory):
    """family_build(family, task, *export.build flags, **config overrides) -> (build folder, model): one real
    export.build of the tiny HF checkpoint per argument set (exit 0 asserted), shared by every test that reads it."""
    from export.build import main as build

    cache: dict = {}

    def make(family: str, task: str = "model", *flags: str, **overrides):
        key = (family, task, flags, overrides_key(overrides))
        if key not in cache:
            ckpt, model = hf_ckpt(family, task, **overrides)
            out = tmp_path_factory.mktemp(f"build-{family}-{task}") / "tiny"
            code = build(["--model", str(ckpt), "--out", str(out), *flags])
            assert code == 0, f"export.build of the tiny {family} {task} checkpoint {flags} exited {code}"
            cache[key] = (out, model)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def jina_original(tmp_path_factory):
    """jina_original(**config overrides) -> (folder, base model, {module: (lora_A, lora_B)}): a tiny jina-embeddings-v3
    checkpoint in the original layout with its five task LoRA adapters (tests/fixtures/jina_original.py), written
    once per argument set."""
    from tests.fixtures.jina_original import write_original

    cache: dict = {}

    def make(**overrides):
        key = tuple(sorted(overrides.items()))
        if key not in cache:
            cache[key] = write_original(tmp_path_factory.mktemp("jina-original") / "ckpt", **overrides)
        return cache[key]

    return make

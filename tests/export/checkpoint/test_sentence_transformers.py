"""A sentence-transformers folder read as data (export.checkpoint.sentence_transformers) and the pooling flags
resolved against it (export.passes.pooling.request): what is built, what is refused with one line, the
Matryoshka widths, and the files recorded with their sha256. No model is built here: JSON and Dense weights."""

from __future__ import annotations

import datetime
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from export.checkpoint.sentence_transformers import read_pipeline
from export.errors import UsageError
from export.passes.pooling import Pooling
from export.passes.pooling.request import PoolingRequest, resolve
from tests.export.passes import st_rules
from tests.fixtures.st_folder import write_st_folder

H = 8
MEAN = {"word_embedding_dimension": H, "pooling_mode_mean_tokens": True}


def request(mode="auto", normalize=False, outputs=None, truncate=None, model="."):
    return PoolingRequest.check(mode, normalize, outputs, truncate, model)


@pytest.mark.parametrize(
    "config",
    [
        {"word_embedding_dimension": H, "pooling_mode_lasttoken": True, "pooling_mode_cls_token": True},
        {"word_embedding_dimension": H, "pooling_mode_mean_tokens": False},  # none set: mean
        {"embedding_dimension": H, "pooling_mode": ["weightedmean", "max"]},
        {"embedding_dimension": H, "pooling_mode": "mean_sqrt_len_tokens", "include_prompt": True},
    ],
)
def test_pooling_modes_as_the_library_reads_them(tmp_path, config):
    got = read_pipeline(write_st_folder(tmp_path, H, config, normalize=False).folder, H).pooling
    assert got.modes == st_rules.legacy_modes(config)
    assert got == Pooling(got.mode)


def test_dense_layers_and_normalize(tmp_path):
    denses = ({"out": 6}, {"out": 5, "bias": False, "activation": "torch.nn.modules.activation.GELU", "bin": True})
    st = write_st_folder(tmp_path, H, MEAN, denses, st_config={"truncate_dim": 4})
    p = read_pipeline(st.folder, H)
    assert [d.activation for d in p.pooling.dense] == ["tanh", "gelu"]  # no activation_function: Tanh
    assert p.pooling.normalize and p.pooling.truncate_dim == 4 and p.pooling.width(H) == 4
    np.testing.assert_array_equal(p.pooling.dense[0].weight, st.denses[0][0])
    assert p.pooling.dense[1].bias is None
    for name, sha in p.files.items():  # every file read, with its sha256
        assert sha == hashlib.sha256((st.folder / name).read_bytes()).hexdigest(), name
    assert {"modules.json", "1_Pooling/config.json", "2_Dense/model.safetensors", "3_Dense/pytorch_model.bin"} <= set(
        p.files
    )
    assert "config_sentence_transformers.json" in p.files


def edit(path: Path, change) -> None:
    obj = json.loads(path.read_text())
    path.write_text(json.dumps(change(obj) or obj))


REFUSALS = {
    "include_prompt": (
        lambda f: edit(f / "1_Pooling/config.json", lambda c: c.update(include_prompt=False)),
        "include_prompt",
    ),
    "width": (
        lambda f: edit(f / "1_Pooling/config.json", lambda c: c.update(word_embedding_dimension=H + 1)),
        "pools 9",
    ),
    "mode": (lambda f: edit(f / "1_Pooling/config.json", lambda c: c.update(pooling_mode="attention")), "attention"),
    "module": (
        lambda f: edit(
            f / "modules.json",
            lambda m: m.insert(2, {"idx": 2, "path": "x", "type": "sentence_transformers.models.LayerNorm"}),
        ),
        "LayerNorm",
    ),
    "order": (lambda f: edit(f / "modules.json", lambda m: [m[0], m[1], m[3], m[2]]), "Normalize -> Dense"),
    "subfolder": (
        lambda f: edit(f / "modules.json", lambda m: m[0].update(path="0_Transformer")),
        "puts the Transformer in '0_Transformer'",
    ),
    "foreign": (lambda f: edit(f / "modules.json", lambda m: m[2].update(type="my_pkg.Dense")), "my_pkg.Dense"),
    "traversal": (lambda f: edit(f / "modules.json", lambda m: m[2].update(path="../2_Dense")), "leaves"),
    "activation": (
        lambda f: edit(f / "2_Dense/config.json", lambda c: c.update(activation_function="my_pkg.Swish")),
        "my_pkg.Swish",
    ),
    "residual": (lambda f: edit(f / "2_Dense/config.json", lambda c: c.update(use_residual=True)), "use_residual"),
    "shape": (lambda f: edit(f / "2_Dense/config.json", lambda c: c.update(out_features=7)), "linear.weight is [6, 8]"),
    "weights": (lambda f: (f / "2_Dense/model.safetensors").unlink(), "has no model.safetensors"),
    "pickle": (
        lambda f: (
            (f / "2_Dense/model.safetensors").unlink(),
            torch.save({"when": datetime.date(2026, 1, 1)}, f / "2_Dense/pytorch_model.bin"),
        ),
        "weights_only=True",
    ),
    "truncate": (lambda f: (f / "config_sentence_transformers.json").write_text('{"truncate_dim": 0}'), "truncate_dim"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_what_is_not_implemented_is_refused_with_its_name(tmp_path, case):
    st = write_st_folder(tmp_path, H, MEAN, ({"out": 6},), st_config={})
    change, fragment = REFUSALS[case]
    change(st.folder)
    with pytest.raises(UsageError, match=None) as e:
        resolve(request(model=st.folder), st.folder, H, "model")
    assert fragment in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_auto_builds_the_folders_pipeline_with_the_flags_on_top(tmp_path):
    st = write_st_folder(tmp_path, H, MEAN, ({"out": 6},), normalize=False, config={"matryoshka_dimensions": [2, 4, 6]})
    plain = resolve(request(model=st.folder), st.folder, H, "model")
    assert plain.pooling is not None and not plain.pooling.normalize and plain.pooling.width(H) == 6
    assert plain.source["kind"] == "sentence-transformers" and plain.source["flags"] == []
    assert plain.matryoshka == (2, 4, 6) and "config.json" in plain.source["files"]
    r = request(normalize=True, outputs="sentence_embedding", truncate=4, model=st.folder)
    flagged = resolve(r, st.folder, H, "model")
    assert flagged.pooling == Pooling("mean", True, keep_hidden=False, dense=plain.pooling.dense, truncate_dim=4)
    assert flagged.source["flags"] == ["--normalize", "--outputs", "sentence_embedding", "--truncate-dim", "4"]
    assert resolve(request("cls", model=st.folder), st.folder, H, "model").pooling == Pooling("cls")  # a mode: alone


@pytest.mark.parametrize(
    "truncate, config, fragment",
    [
        (3, {"matryoshka_dimensions": [2, 4, 6]}, "--truncate-dim 3 is not one of the widths"),
        (8, {"matryoshka_dimensions": [2, 4, 8]}, "--truncate-dim 8 exceeds the embedding's 6 channels"),
        (7, {}, "--truncate-dim 7 exceeds the embedding's 6 channels"),
    ],
)
def test_truncate_dim_refusals(tmp_path, truncate, config, fragment):
    st = write_st_folder(tmp_path, H, MEAN, ({"out": 6},), config=config)
    with pytest.raises(UsageError, match=fragment):
        resolve(request(truncate=truncate, model=st.folder), st.folder, H, "model")


def test_truncate_dim_within_declared_or_undeclared_widths(tmp_path):
    any_width = write_st_folder(tmp_path / "any", H, MEAN, config={"is_matryoshka": True}).folder
    assert resolve(request(truncate=3, model=any_width), any_width, H, "model").pooling.truncate_dim == 3
    folder = write_st_folder(
        tmp_path / "default", H, MEAN, config={"matryoshka_dimensions": [4]}, st_config={"truncate_dim": 2}
    ).folder
    with pytest.raises(UsageError, match="config_sentence_transformers.json truncate_dim 2 is not one of"):
        resolve(request(model=folder), folder, H, "model")
    assert resolve(request(truncate=4, model=folder), folder, H, "model").pooling.truncate_dim == 4  # the flag wins


def test_explicit_mode_checks_declared_widths_of_a_plain_folder(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": H, "matryoshka_dimensions": [4]}))
    with pytest.raises(UsageError, match="not one of the widths"):
        resolve(request("mean", truncate=2, model=tmp_path), tmp_path, H, "model")
    r = resolve(request("mean", truncate=4, model=tmp_path), tmp_path, H, "model")
    assert r.pooling == Pooling("mean", truncate_dim=4) and r.source["kind"] == "flags"


def test_auto_without_a_pipeline_is_none_and_refuses_pooling_flags(tmp_path):
    assert resolve(request(model=tmp_path), tmp_path, H, "model").pooling is None
    for flags in ({"normalize": True}, {"truncate": 4}, {"outputs": "sentence_embedding"}):
        with pytest.raises(UsageError, match="has no sentence-transformers pipeline"):
            request(model=tmp_path, **flags)


def test_a_pipeline_on_a_head_without_hidden_states_is_refused(tmp_path):
    st = write_st_folder(tmp_path, H, MEAN)
    with pytest.raises(UsageError, match="a masked-lm checkpoint"):
        resolve(request(model=st.folder), st.folder, H, "masked-lm")

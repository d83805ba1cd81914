"""plugins/identity.py against its one source, RoformerRotary_PluginConfig.yaml, and the contract README.

The YAML is what the C++ side is checked against too (tests/plugins/test_contract.py drives the built
adapter and compares its creator and field list with the same file), so Python and C++ meet here.
"""

from __future__ import annotations

import re

import pytest
import yaml

from export import reference
from plugins import identity


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(identity.CONFIG_YAML.read_text())


@pytest.fixture(scope="module")
def readme_rows() -> dict[str, dict[str, str]]:
    """The contract README's Parameters table: name -> {type, allowed, default}."""
    text = identity.CONTRACT_README.read_text()
    section = text.split("## Parameters", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[1].startswith("`"):
            rows[cells[1].strip("`")] = {"type": cells[0], "allowed": cells[3], "default": cells[4]}
    return rows


def test_creator_identity_matches_yaml(config):
    assert (config["name"], config["version"], config["namespace"]) == (
        identity.PLUGIN_OP,
        identity.PLUGIN_VERSION,
        identity.PLUGIN_NAMESPACE,
    )
    assert config["interface"] == "IPluginV3"
    assert config["roformer_trt"]["onnx_domain"] == identity.PLUGIN_DOMAIN
    assert config["roformer_trt"]["sincos_initializer"] == identity.SINCOS_INITIALIZER


def test_fields_types_and_options_match_yaml(config):
    v = config["versions"][identity.PLUGIN_VERSION]
    assert tuple(v["attributes"]) == identity.FIELDS
    assert all(v["attribute_types"][f] == "int32" and v["attribute_length"][f] == 1 for f in identity.FIELDS)
    assert tuple(v["attribute_options"][identity.ATTR_INTERLEAVED]) == identity.INTERLEAVED_ALLOWED
    k = v["attribute_options"][identity.ATTR_NUM_TENSORS]
    assert (k["min"], k["max"]) == (identity.MIN_TENSORS, identity.MAX_TENSORS)
    assert v["attribute_defaults"][identity.ATTR_NUM_TENSORS] == identity.DEFAULT_NUM_TENSORS
    assert v["attributes_required"] == [identity.ATTR_ROTARY_DIM]
    assert config["roformer_trt"]["max_tensors"] == identity.MAX_TENSORS


def test_dtype_codes_and_libraries_match_yaml(config):
    assert config["roformer_trt"]["dtype_codes"] == identity.DTYPE_CODES
    assert config["roformer_trt"]["libraries"] == identity.LIBRARIES


def test_dtype_and_layout_codes_match_the_cpp_enums():
    header = (identity.CONFIG_YAML.parent / "roformerRotaryShape.h").read_text()
    enum = {k: int(v) for k, v in re.findall(r"kROTARY_(\w+)\s*=\s*(\d+)", header)}
    assert {"F32": 0, "F16": 1, "BF16": 2, "SPLIT_HALVES": 0, "INTERLEAVED": 1} == enum
    assert [identity.DTYPE_CODES[d] for d in ("float32", "float16", "bfloat16")] == [0, 1, 2]
    assert (identity.LAYOUT_SPLIT_HALVES, identity.LAYOUT_INTERLEAVED) == (enum["SPLIT_HALVES"], enum["INTERLEAVED"])
    # the numpy reference is a leaf too, so it spells the values again
    assert (reference.LAYOUT_SPLIT_HALVES, reference.LAYOUT_INTERLEAVED) == (enum["SPLIT_HALVES"], enum["INTERLEAVED"])


def test_readme_parameter_table_matches(readme_rows):
    assert set(readme_rows) == set(identity.FIELDS) | {identity.ATTR_PLUGIN_VERSION, identity.ATTR_PLUGIN_NAMESPACE}
    assert all(readme_rows[f]["type"] == "INT" for f in identity.FIELDS)
    assert readme_rows[identity.ATTR_INTERLEAVED]["allowed"] == ", ".join(
        f"`{v}`" for v in identity.INTERLEAVED_ALLOWED
    )
    assert readme_rows[identity.ATTR_INTERLEAVED]["default"] == f"`{identity.LAYOUT_INTERLEAVED}`"
    assert readme_rows[identity.ATTR_NUM_TENSORS]["allowed"].startswith(
        f"`{identity.MIN_TENSORS} … {identity.MAX_TENSORS}`"
    )
    assert readme_rows[identity.ATTR_NUM_TENSORS]["default"] == f"`{identity.DEFAULT_NUM_TENSORS}`"
    assert readme_rows[identity.ATTR_PLUGIN_VERSION]["allowed"] == f'`"{identity.PLUGIN_VERSION}"`'
    assert readme_rows[identity.ATTR_PLUGIN_NAMESPACE]["allowed"] == f'`"{identity.PLUGIN_NAMESPACE}"`'


@pytest.mark.parametrize(
    "attrs,n_inputs,why",
    [
        ({"interleaved": -1, "rotary_dim": 64, "num_tensors": 2}, 3, "interleaved=-1"),
        ({"interleaved": 2, "rotary_dim": 64, "num_tensors": 2}, 3, "interleaved=2"),
        ({"interleaved": 0, "rotary_dim": 64, "num_tensors": 2}, 3, None),  # split halves
        ({"rotary_dim": 64, "num_tensors": 2}, 3, None),  # interleaved absent: 1
        ({"interleaved": 1, "num_tensors": 2}, 3, "missing required attribute 'rotary_dim'"),
        ({"interleaved": 1, "rotary_dim": 63, "num_tensors": 2}, 3, "rotary_dim=63"),
        ({"interleaved": 1, "rotary_dim": 0, "num_tensors": 2}, 3, "rotary_dim=0"),
        ({"interleaved": 1, "rotary_dim": 64, "num_tensors": 5}, 6, "num_tensors=5"),
        ({"interleaved": 1, "rotary_dim": 64, "num_tensors": 0}, 1, "num_tensors=0"),
        ({"interleaved": 1, "rotary_dim": 64, "num_tensors": 2}, 4, "4 inputs but num_tensors=2"),
        ({"interleaved": 1, "rotary_dim": 64}, 4, "4 inputs but num_tensors=2"),  # the default k is 2
        ({"interleaved": 1, "rotary_dim": 32, "num_tensors": 2}, 3, "the sincos table is 64 wide"),
        ({"interleaved": 1, "rotary_dim": 64, "num_tensors": 2}, 3, None),
    ],
)
def test_plugin_node_problem_refuses_what_the_plugin_refuses(attrs, n_inputs, why):
    got = identity.plugin_node_problem(attrs, n_inputs, table_width=64, head_dim=64)
    assert (got is None) if why is None else (why in got), got


def test_cpp_strings_match_yaml(config):
    """The adapter's spellings (creator identity, field names) are the YAML's; the contract test
    (tests/plugins/test_contract.py) then checks the built library answers with them."""
    src = (identity.CONFIG_YAML.parent / "roformerRotaryPlugin.cpp").read_text()
    consts = dict(re.findall(r'char const\* const (k[A-Z_]+)\{"([^"]*)"\}', src))
    assert (consts["kNAME"], consts["kVERSION"], consts["kNAMESPACE"]) == (
        config["name"],
        config["version"],
        config["namespace"],
    )
    fields = [consts[k] for k in ("kINTERLEAVED", "kROTARY_DIM", "kNUM_TENSORS")]
    assert fields == config["versions"][identity.PLUGIN_VERSION]["attributes"]
    # the creator's field list and the serialized fields name them in the YAML's order
    for block in (
        "RoformerRotaryPluginCreator::RoformerRotaryPluginCreator()",
        "void RoformerRotaryPlugin::initFields()",
    ):
        body = src.split(block, 1)[1].split("}\n", 1)[0]
        assert re.findall(r"PluginField\{(k[A-Z_]+)", body) == ["kINTERLEAVED", "kROTARY_DIM", "kNUM_TENSORS"]
    version_src = (identity.CONFIG_YAML.parents[1] / "common" / "runtimeVersion.cpp").read_text()
    assert f"int32_t {identity.TENSORRT_MAJOR_SYMBOL}()" in version_src
    assert (
        "not in the contract" not in src.lower()
        and "not in the contract" not in identity.CONFIG_YAML.read_text().lower()
    )


def test_docs_name_the_self_registering_library_for_dlopen_loaders():
    """Triton's plugins=, LD_PRELOAD and --staticPlugins only dlopen: they need the library that registers at load."""
    root = identity.CONFIG_YAML.parents[2]
    docs = [root / "README.md", identity.CONTRACT_README, *sorted(root.glob("engines/**/README.md"))]
    texts = {p: p.read_text() for p in [*docs, *sorted((root / "engines" / "triton").glob("*.py"))]}
    for path, text in texts.items():
        for lib in re.findall(r"(?:plugins=|LD_PRELOAD=|--staticPlugins[= ]|--plugins )(\S*?\.so)", text):
            assert lib.endswith(identity.STATIC_PLUGIN_LIB), (path, lib)
    triton = texts[root / "engines" / "triton" / "README.md"]  # where the repository's server command is shown
    assert (
        f"plugins=/path/{identity.STATIC_PLUGIN_LIB}" in triton
        and f"LD_PRELOAD=/path/{identity.STATIC_PLUGIN_LIB}" in triton
        and f"plugins=/path/{identity.STATIC_PLUGIN_LIB}" in texts[root / "README.md"]
    )

"""The registry finds a checkpoint's family or refuses with one line; every family file is self-consistent; and
nothing outside export/families/ tests a model_type or names a family (the product stays family-blind)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch

from export.errors import UsageError
from export.families.family import Tap
from export.families.registry import FAMILIES, by_name, family_of, names, supported
from export.spec import TASKS

ROOT = Path(__file__).resolve().parents[3]
FAMILY_DIR = ROOT / "export" / "families"


def test_model_type_finds_the_family_and_an_unknown_one_names_the_supported():
    for f in FAMILIES:
        for t in f.model_types:
            assert family_of({"model_type": t}, set(), "c.json") is f
    with pytest.raises(UsageError, match=r"model_type='bert', which roformer-trt does not support \(supported: "):
        family_of({"model_type": "bert"}, set(), "c.json")
    assert supported() == ", ".join(sorted(t for f in FAMILIES for t in f.model_types))
    assert {"modernbert", "roformer"} <= set(names()) and names() == tuple(sorted(names()))
    assert by_name("modernbert").inputs == ("input_ids", "attention_mask")


@pytest.mark.parametrize(
    "config,fragment",
    [
        (
            {"model_type": "modernbert", "trust_remote_code": True},
            "config has trust_remote_code: it asks for model code",
        ),
        (
            {"auto_map": {"AutoModel": "modeling_x.XModel"}},
            r"auto_map \(code in the checkpoint's own folder\): it asks",
        ),
        (
            {"model_type": "x", "auto_map": {"AutoModel": "o/r--m.X"}},
            r"auto_map \(code in o/r\): it asks for model code",
        ),
        ({"model_type": "new", "auto_map": {"AutoModel": "a/b--m.X"}}, r"model_type 'new': Alibaba-NLP/new-impl's own"),
    ],
    ids=["trust_remote_code", "no-model-type", "unknown-model-type", "foreign-model-type"],
)
def test_a_config_asking_for_remote_code_is_refused_with_the_reason(config, fragment):
    with pytest.raises(UsageError, match=fragment):
        family_of(config, set(), "c.json")


def test_an_auto_map_beside_a_model_type_a_family_builds_is_ignored_as_transformers_does():
    """transformers 5.25 loads such a config with its own class unless asked to trust remote code
    (configuration_auto.py, has_local_code); the family is the model_type's, the auto_map is what loading ignores."""
    from export.families.registry import ignored_auto_map

    auto = {"AutoModel": "someone/code--modeling.M"}
    for f in FAMILIES:
        for t in f.model_types:
            config = {"model_type": t, "auto_map": auto}
            assert family_of(config, set(), "c.json") is f and ignored_auto_map(config, f) == auto
            assert ignored_auto_map({"model_type": t}, f) is None


def test_a_config_without_model_type_is_recognised_or_refused():
    assert family_of({"local_attention": 128}, set(), "c") is by_name("modernbert")
    assert family_of({}, {"layers.0.attn.Wqkv.weight"}, "c") is by_name("modernbert")
    assert family_of({"rotary_value": False}, set(), "c") is by_name("roformer")
    assert family_of({}, {"roformer.encoder.embed_positions.weight"}, "c") is by_name("roformer")
    with pytest.raises(UsageError, match="no model_type and matches none of the supported families"):
        family_of({"hidden_size": 8}, {"w"}, "c")
    with pytest.raises(UsageError, match="matches roformer and modernbert"):
        family_of({"rotary_value": True, "local_attention": 8}, set(), "c")


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_each_family_file_is_consistent(family):
    """Its tiny and demo configs pass its own check; it declares a spec per layer; its heads are transformers
    classes of known tasks; every module its layer map names exists in each head's model (built on meta)."""
    for make in (family.tiny, family.demo):
        cfg = family.make_config(make().to_dict(), Path("cfg"))
        facts = family.facts(cfg)
        assert len(family.rotaries(cfg)) == len(family.attentions(cfg)) == facts.layers
        assert all(r.head_dim == facts.head_dim for r in family.rotaries(cfg))
        assert (facts.type_vocab_size is None) == ("token_type_ids" not in family.inputs)
    assert set(family.heads) <= set(TASKS) and "model" in family.heads
    for make in (family.tiny, family.demo):  # the demo's own tokenizer too: jina's 250002 pieces crossed U+D800
        cfg = make()
        tok = family.tokenizer(cfg) if family.tokenizer is not None else None
        assert tok is None or tok.get_vocab_size() == cfg.vocab_size
    lm = family.layer_map
    for task in family.heads:
        with torch.device("meta"):
            model = family.model_class(task)(family.tiny())
        base = family.base(model)
        layer = base.get_submodule(lm.layers)[0]
        base.get_submodule(lm.embeddings.module)
        for tap in (*lm.attention_input, lm.attention_output, lm.ffn_output, lm.layer_output):
            assert isinstance(tap, Tap) and tap.port in ("input", "output")
            layer.get_submodule(tap.module)


def test_a_flag_for_attention_the_family_lacks_is_refused():
    from export.checkpoint.rebuild import attn_implementation

    assert attn_implementation(by_name("modernbert"), None) == "eager"
    assert attn_implementation(by_name("modernbert"), "sdpa") == "sdpa"
    with pytest.raises(UsageError, match="--attention sdpa: roformer exports with eager attention"):
        attn_implementation(by_name("roformer"), "sdpa")


# ---- family-blind: the product never names a family outside export/families/ --------------------------------

# The project's and the plugin's own names contain "roformer"; they name no model family.
PROJECT_NAMES = re.compile(r"roformer[-_]?trt|roformer_?rotary|ROFORMER_(TRT|CUDA)\w*", re.IGNORECASE)


def family_words() -> re.Pattern:
    words = {w for f in FAMILIES for w in (f.name, *f.model_types)} | {"model_type"}
    return re.compile(r"(?<![A-Za-z])(" + "|".join(sorted(map(re.escape, words))) + r")", re.IGNORECASE)


def code_words(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every identifier and string literal of a module, docstrings and comments left out."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(n.body[0].value)
        for n in ast.walk(tree)
        if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and n.body
        and isinstance(n.body[0], ast.Expr)
        and isinstance(n.body[0].value, ast.Constant)
    }
    out = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings:
            out.append((n.lineno, n.value))
        elif isinstance(n, ast.Name):
            out.append((n.lineno, n.id))
        elif isinstance(n, ast.Attribute):
            out.append((n.lineno, n.attr))
        elif isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
            out.append((n.lineno, n.name))
        elif isinstance(n, ast.alias):
            out.append((getattr(n, "lineno", 0), n.asname or n.name))
    return out


# The rotary pass's interleaved-pairs rule is named after the code it matches (HF RoFormer's) and cites that code
# as its source (the style guide asks every rule to); one of its messages says so. These phrases, in these files,
# are the only exemptions (each must still occur: test_the_exemptions_are_in_use), so any new mention fails.
EXEMPT = {
    "export/passes/rotary/rules.py": {
        "ROFORMER_INTERLEAVED",
        "roformer-interleaved",
        "transformers models/roformer/modeling_roformer.py RoFormerSelfAttention",
    },
    "export/passes/rotary/results.py": {"the graph has no RoFormer (interleaved) rotary embedding"},
}


def family_mentions(paths: list[Path]) -> list[str]:
    pattern = family_words()
    found = []
    for path in paths:
        exempt = EXEMPT.get(str(path.relative_to(ROOT)) if ROOT in path.parents else "", set())
        for line, text in code_words(path):
            if not any(e in text for e in exempt) and pattern.search(PROJECT_NAMES.sub("", text)):
                where = path.relative_to(ROOT) if ROOT in path.parents else path.name
                found.append(f"{where}:{line}: {text[:80]!r}")
    return found


def product_modules() -> list[Path]:
    return sorted(
        p
        for pkg in ("export", "engines", "plugins")
        for p in (ROOT / pkg).rglob("*.py")
        if FAMILY_DIR not in p.parents and "build" not in p.relative_to(ROOT).parts[1:-1]
    )


def test_nothing_outside_the_family_files_names_a_family_or_tests_model_type():
    assert not family_mentions(product_modules()), "\n".join(family_mentions(product_modules()))


def test_the_exemptions_are_in_use():
    """An exemption whose phrase no longer occurs in its file is removed, not left to excuse a later mention."""
    for rel, phrases in EXEMPT.items():
        words = [text for _, text in code_words(ROOT / rel)]
        assert all(any(p in w for w in words) for p in phrases), (rel, phrases)


def test_the_family_blind_check_can_fail(tmp_path):
    """It sees model_type and family names in code and strings, not in docstrings or comments, and not in the
    project's own names."""
    src = tmp_path / "m.py"
    src.write_text(
        '"""Docstrings may cite RoFormer and ModernBERT."""\n'
        "# so may comments: modernbert\n"
        "from export.errors import RoformerTrtError\n"
        "def f(cfg):\n"
        '    """Nor here: model_type."""\n'
        "    ok = 'roformer-trt', 'RoformerRotary', RoformerTrtError\n"
        "    return cfg.model_type == 'x' or is_ModernBert(cfg)\n"
    )
    assert [m.split(": ", 1)[1] for m in family_mentions([src])] == ["'model_type'", "'is_ModernBert'"]

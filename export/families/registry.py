"""Which family a checkpoint belongs to: its config's `model_type`, else the family that recognises it.

`family_of(config, keys, path)` refuses (UsageError, exit 2, one line) a config that asks for remote code (unless a
family adopts it: reads that checkpoint's layout as data, never its code; jina-embeddings-v3's original), a
model_type no family file declares (naming the supported ones), and a config without model_type that no
family, or more than one, recognises. `by_name` finds a family by its name (the graph's metadata, a CLI flag).

An `auto_map` beside a model_type a family declares is not a request this toolchain has to refuse: every family's
model_types are transformers' own, and transformers 5.25 itself loads such a config with its own class unless the
caller passes trust_remote_code=True (models/auto/configuration_auto.py: `has_local_code` makes
resolve_trust_remote_code answer False). Real checkpoints are published that way (nomic-embed-text-v1.5: model_type
nomic_bert, auto_map into nomic-ai/nomic-bert-2048; EuroBERT-210m; Snowflake arctic-embed-m-v2.0: model_type gte).
So the family is found by its model_type, `ignored_auto_map` gives what loading leaves aside (report.json
`checkpoint.auto_map_ignored`), and the code it names is never imported. `trust_remote_code` in a config, an
auto_map without a model_type or beside one no family declares, stay refused; a family may say in `foreign` what
another implementation's model_type of its checkpoints is (GTE: "new").
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from export.errors import UsageError
from export.families import esm, eurobert, gte, jina_embeddings_v3, modernbert, nomic_bert, roformer
from export.families.config_check import refuse_remote_code
from export.families.family import Family

if TYPE_CHECKING:  # imported where a family makes its tokenizer
    from transformers import PreTrainedTokenizerBase

FAMILIES: tuple[Family, ...] = (
    roformer.FAMILY,
    modernbert.FAMILY,
    gte.FAMILY,
    nomic_bert.FAMILY,
    eurobert.FAMILY,
    esm.FAMILY,
    jina_embeddings_v3.FAMILY,
)


def names() -> tuple[str, ...]:
    return tuple(sorted(f.name for f in FAMILIES))


def supported() -> str:
    """The model_types the families take, e.g. "modernbert, roformer"."""
    return ", ".join(sorted(t for f in FAMILIES for t in f.model_types))


def by_name(name: str) -> Family:
    for f in FAMILIES:
        if f.name == name:
            return f
    raise UsageError(f"family {name!r} is not one of {', '.join(names())}")


def family_of(config: dict, keys: set[str], path: Path | str) -> Family:
    for f in FAMILIES:  # a checkpoint written for remote code whose layout a family reads as data (never run)
        if f.adopts is not None and f.adopts(config, keys):
            return f
    model_type = config.get("model_type")
    native = next((f for f in FAMILIES if model_type in f.model_types), None)
    if native is None or config.get("trust_remote_code"):
        refuse_remote_code(config, Path(path), foreign(model_type))
    if native is not None:
        return native
    if model_type is not None:
        raise UsageError(
            f"{path}: config says model_type={model_type!r}, which roformer-trt does not support "
            f"(supported: {supported()}); pass a checkpoint of a supported family"
        )
    found = [f for f in FAMILIES if f.recognise(config, keys)]
    if len(found) != 1:
        why = "matches none" if not found else f"matches {' and '.join(f.name for f in found)}"
        raise UsageError(
            f"{path}: config has no model_type and {why} of the supported families; add model_type "
            f"(supported: {supported()})"
        )
    return found[0]


def ignored_auto_map(config: dict, family: Family) -> dict | None:
    """The auto_map of a config `family` builds with transformers' own class (its model_type is the family's; a
    config the family adopts as data is not): what loading ignores. None when there is none."""
    auto = config.get("auto_map")
    if not auto or config.get("model_type") not in family.model_types:
        return None
    return dict(auto) if isinstance(auto, dict) else {"auto_map": repr(auto)}


def foreign(model_type) -> str:
    """What a family says of another implementation's model_type of its checkpoints ("; ..." or "")."""
    said = [why for f in FAMILIES for t, why in f.foreign if t == model_type]
    return f"; model_type {model_type!r}: {said[0]}" if said else ""


def vocab_tokenizer(table: dict) -> tuple[PreTrainedTokenizerBase, str]:
    """The vocab.txt tokenizer of the family that ships one (ImportError when its segmenter is missing, or when no
    family has one: export.inputs.text then uses WordPiece alone)."""
    for f in FAMILIES:
        if f.vocab_tokenizer is not None:
            return f.vocab_tokenizer(table)
    raise ImportError("no family tokenizes a vocab.txt its own way", name="a family vocab tokenizer")


def family_of_config(config) -> Family:
    """The family of a transformers config object (its model_type)."""
    return family_of(config.to_dict(), set(), type(config).__name__)


def family_of_model(model) -> Family:
    """The family of a built transformers model (from its config's model_type)."""
    return family_of_config(model.config)

"""A checkpoint's weight names as its transformers class names them: transformers' own conversion mapping, applied.

transformers 5 loads some model types from checkpoints whose keys are the original code's (GTE's
`new.encoder.layer.N.attention.qkv_proj`, NomicBERT's `encoder.layers.N.attn.Wqkv`, ...): `from_pretrained`
renames and splits them with the model type's `conversion_mapping` (WeightRenaming, PrefixChange, WeightConverter
with e.g. a Chunk of a fused QKV matrix; transformers/conversion_mapping.py and core_model_loading.py), and
`save_pretrained` writes them back that way (`revert_weight_conversion`). So a real checkpoint, and any folder
transformers 5.25 saves, holds the original names.

`convert_keys(model, state, path)` applies the same transforms in the same order as transformers' loader does
(every WeightRenaming, then at most one WeightConverter per key: core_model_loading.rename_source_key), taken
from `get_model_conversion_mapping(model)` of a model built on the meta device; the tensors stay the file's
(a Chunk gives views). Keys no transform matches are kept; keys already in the class's names are left as
they are (the transforms match the original names only). A conversion that fails is refused with one line.
"""

from __future__ import annotations

from copy import deepcopy
from typing import TYPE_CHECKING

from export.checkpoint.formats import short
from export.errors import UsageError

if TYPE_CHECKING:  # imported in convert_keys, like the rest of transformers here
    from transformers import PreTrainedModel


def convert_keys(model: PreTrainedModel, state: dict, path) -> dict:
    """state with transformers' names for `model`'s class (built on meta); unchanged when the type has no mapping."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

    transforms = get_model_conversion_mapping(model)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    if not renamings and not converters:
        return state
    by_pattern = {p: c for c in converters for p in c.source_patterns}
    out: dict = {}
    pending: dict = {}  # first target key -> its own converter instance, collecting the sources
    for key in sorted(state):
        renamed, pattern = rename_source_key(key, renamings, converters)
        if pattern is None:
            out[renamed] = state[key]
            continue
        conv = pending.setdefault(renamed, deepcopy(by_pattern[pattern]))
        conv.add_tensor(renamed, key, pattern, state[key])
    for first, conv in pending.items():
        try:
            made = conv.convert(first, model=model, config=model.config)
        except Exception as e:  # transformers' ops raise on shapes they cannot split; the file's problem
            why = f"{path}: weights for {first} do not convert to {type(model).__name__}'s ({short(e)})"
            raise UsageError(why) from None
        out.update({k: v[0] if isinstance(v, list) else v for k, v in made.items()})
    return out

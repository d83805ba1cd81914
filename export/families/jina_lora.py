"""jina-embeddings-v3's original checkpoint, read as data: its config, its weight layout and its task LoRA adapters.

Part of the jina-embeddings-v3 family (export/families/jina_embeddings_v3.py; split out for length). The original
checkpoint (`jinaai/jina-embeddings-v3`) is written for remote code (`jinaai/xlm-roberta-flash-implementation`,
named in its config's auto_map) that roformer-trt never runs: transformers 5.25's JinaEmbeddingsV3Model computes
the same encoder, and everything else is read here from the files.

Its config (model_type "xlm-roberta", `rotary_emb_base`, `lora_adaptations`, `task_instructions`, `lora_rank`,
`lora_alpha`) is translated to JinaEmbeddingsV3Config's fields (`hf_config`). Its weights sit under `roberta.`
(the XLMRobertaLoRA wrapper); every nn.Linear and nn.Embedding carries a torch parametrization, so its weight is
`<module>.parametrizations.weight.original` and its adapters `<module>.parametrizations.weight.0.lora_A` / `lora_B`.

The adapters, as `modeling_lora.py` (`LoRAParametrization`, `XLMRobertaLoRA._register_lora`) defines them:
- `XLMRobertaLoRA` registers one on every nn.Linear and nn.Embedding of the model (`self.apply(add_to_layer)`):
  the word and token-type embeddings, each layer's `mixer.Wqkv` and `mixer.out_proj`, `mlp.fc1`, `mlp.fc2`, and the
  pooler's dense layer; each forward that is given a task applies it (embedding.py, mlp.py, the pooler in
  modeling_xlm_roberta.py, read; mha.py's Wqkv / out_proj take the same `adapter_mask` through the layer's
  mixer_kwargs, mha.py itself not read);
- the tasks are stacked on dim 0, in the order of `config.lora_adaptations` (`_adaptation_map`: name -> index);
- linear layers: lora_A [tasks, rank, fan_in], lora_B [tasks, fan_out, rank], W' = W + (B[t] @ A[t]) * scaling;
- embeddings (fan_in_fan_out: the pair swapped): lora_A [tasks, num_embeddings, rank], lora_B [tasks, rank,
  embedding_dim], W' = W + (A[t] @ B[t]) * scaling;
- scaling = lora_alpha / rank (config lora_alpha 1, lora_rank 4 in the published config: 0.25); dropout (p 0.0
  there) does not act at inference.
Read from copies of modeling_lora.py, embedding.py, mlp.py and modeling_xlm_roberta.py of
huggingface.co/jinaai/xlm-roberta-flash-implementation in the public code index (third-party deployments pin its
revision bd55a5ec8e6c0fb1d6c26efb4b6a4a74ce8a88d3 with jina-embeddings-v3 ab036b0); the Hub itself was not
reachable here. The merge runs on the checkpoint's own layout, before its names are converted, exactly where
modeling_lora.py applies it (to the parametrized weight); the fused Wqkv is split into q/k/v afterwards.

Once the wrapper prefix and the parametrization names are gone, the names are those transformers 5.25's own
conversion mapping reads (conversion_mapping.py "jina_embeddings_v3": emb_ln, encoder.layers, mixer.out_proj,
norm1, norm2 renamed, the fused mixer.Wqkv chunked into q/k/v along dim 0; its save_pretrained writes that layout
too): export/checkpoint/conversion.py applies it, after the adapter is merged.
"""

from __future__ import annotations

from pathlib import Path

import torch

from export.errors import UsageError
from export.families.adapters import TaskAdapters

WRAPPER = "roberta."  # XLMRobertaLoRA's attribute: every key of the original checkpoint starts with it
ORIGINAL = ".parametrizations.weight.original"
LORA_A, LORA_B = ".parametrizations.weight.0.lora_A", ".parametrizations.weight.0.lora_B"
EMBEDDINGS = ("embeddings.word_embeddings", "embeddings.token_type_embeddings")  # nn.Embedding: the pair swapped
IMPLEMENTATION = "xlm-roberta-flash-implementation"  # what the original config's auto_map names
# the published config's lora_adaptations and task_instructions (huggingface.co/jinaai/jina-embeddings-v3
# config.json; also its config_sentence_transformers.json prompts)
TASKS = ("retrieval.query", "retrieval.passage", "separation", "classification", "text-matching")
PREFIXES = {
    "retrieval.query": "Represent the query for retrieving evidence documents: ",
    "retrieval.passage": "Represent the document for retrieval: ",
    "separation": "",
    "classification": "",
    "text-matching": "",
}
SOURCE = "jina-embeddings-v3 LoRA (jinaai/xlm-roberta-flash-implementation modeling_lora.py), merged W + scaling*B@A"
COPIED = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
          "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings",
          "type_vocab_size", "initializer_range", "layer_norm_eps", "pad_token_id", "bos_token_id", "eos_token_id",
          "classifier_dropout", "tie_word_embeddings")  # fmt: skip


def adopts(config: dict, keys: set[str]) -> bool:
    """The original jina-embeddings-v3 config: model_type xlm-roberta with task adapters, its auto_map (if any)
    naming only the flash implementation. Read as data; the code it names is never run."""
    auto = config.get("auto_map") or {}
    return (
        config.get("model_type") == "xlm-roberta"
        and "lora_adaptations" in config
        and all(IMPLEMENTATION in str(v) for v in auto.values())
        and not config.get("trust_remote_code")
    )


def hf_config(config: dict, path: Path) -> dict:
    """JinaEmbeddingsV3Config's fields for the original config (rotary_emb_base -> rope_parameters); what this family
    does not implement is refused with the reason."""
    kind = config.get("position_embedding_type", "rotary")
    if kind != "rotary":
        raise UsageError(
            f"{path}: config position_embedding_type is {kind!r}; jina-embeddings-v3 is a rotary model and "
            "transformers' JinaEmbeddingsV3Model has no absolute positions"
        )
    if config.get("pad_vocab_size_multiple", 1) != 1:
        raise UsageError(f"{path}: config pad_vocab_size_multiple is set; a padded vocabulary is not implemented")
    out = {k: config[k] for k in COPIED if k in config}
    theta = config.get("rotary_emb_base", 20000.0)
    out["rope_parameters"] = {"rope_type": "default", "rope_theta": theta}
    out["architectures"] = ["JinaEmbeddingsV3Model"]
    keep = ("lora_adaptations", "task_instructions", "lora_rank", "lora_alpha", "matryoshka_dimensions")
    return {**out, **{k: config[k] for k in keep if k in config}}


def read_adapters(state: dict, config: dict, path: Path) -> tuple[dict, TaskAdapters | None]:
    """The state in plain names (wrapper prefix and parametrization names gone) without its adapter tensors, and the
    adapters they define (None when the checkpoint has none)."""
    if state and all(k.startswith(WRAPPER) for k in state):
        state = {k.removeprefix(WRAPPER): v for k, v in state.items()}
    lora: dict[str, dict[str, torch.Tensor]] = {}  # module -> {"lora_A": [tasks, ...], "lora_B": ...}
    plain = {}
    for k, v in state.items():
        if k.endswith((LORA_A, LORA_B)):
            module, which = k.rsplit(".parametrizations.weight.0.", 1)
            lora.setdefault(module, {})[which] = v
        else:
            plain[k.removesuffix(ORIGINAL) + ".weight" if k.endswith(ORIGINAL) else k] = v
    if not lora:
        return plain, None
    tasks = _tasks(config, path)
    rank, alpha = _rank_alpha(config, lora, path)
    for module, pair in sorted(lora.items()):
        _check_pair(module, pair, plain.get(module + ".weight"), len(tasks), rank, path)
    scaling = alpha / rank

    def delta(key: str, task: str) -> torch.Tensor:
        module = key.removesuffix(".weight")
        a, b = (lora[module][n][tasks.index(task)].double() for n in ("lora_A", "lora_B"))
        return ((a @ b) if _is_embedding(module) else (b @ a)) * scaling

    prefixes = {t: (config.get("task_instructions") or {}).get(t, "") for t in tasks}
    details = {"rank": rank, "alpha": alpha, "scaling": scaling, "source": SOURCE}
    keys = tuple(sorted(m + ".weight" for m in lora))
    return plain, TaskAdapters("LoRA", tuple(tasks), prefixes, keys, delta, details)


def _is_embedding(module: str) -> bool:
    return module.endswith(EMBEDDINGS)


def _tasks(config: dict, path: Path) -> list[str]:
    tasks = config.get("lora_adaptations")
    if not isinstance(tasks, list) or not tasks or not all(isinstance(t, str) and t for t in tasks):
        raise UsageError(
            f"{path}: the weights hold LoRA adapter tensors but config lora_adaptations is {tasks!r}; it must list "
            "the task of each adapter slice, in order (the published config: " + ", ".join(TASKS) + ")"
        )
    if len(set(tasks)) != len(tasks) or any(t in ("none", "all") for t in tasks):
        raise UsageError(f"{path}: config lora_adaptations {tasks} repeats a task or uses the reserved none / all")
    return tasks


def _rank_alpha(config: dict, lora: dict, path: Path) -> tuple[int, float]:
    a, b = config.get("lora_rank"), config.get("lora_alpha")
    if not (isinstance(a, int) and not isinstance(a, bool) and a >= 1 and isinstance(b, (int, float)) and b > 0):
        raise UsageError(
            f"{path}: config lora_rank {a!r} / lora_alpha {b!r}: the adapters' scaling is lora_alpha / lora_rank, "
            "both must be set (the published config: 4 and 1)"
        )
    return a, float(b)


def _check_pair(module: str, pair: dict, weight, tasks: int, rank: int, path: Path) -> None:
    if set(pair) != {"lora_A", "lora_B"} or weight is None:
        raise UsageError(f"{path}: adapter of {module} is incomplete (needs lora_A, lora_B and the weight)")
    out_dim, in_dim = weight.shape
    a, b = tuple(pair["lora_A"].shape), tuple(pair["lora_B"].shape)
    want = ((tasks, out_dim, rank), (tasks, rank, in_dim)) if _is_embedding(module) else (
        (tasks, rank, in_dim), (tasks, out_dim, rank))  # fmt: skip
    if (a, b) != want:
        raise UsageError(
            f"{path}: adapter of {module} has lora_A {a}, lora_B {b}; expected {want[0]}, {want[1]} for "
            f"{tasks} task(s) of rank {rank} on a weight of shape {(out_dim, in_dim)}"
        )

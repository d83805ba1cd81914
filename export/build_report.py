"""The `model` and `checkpoint` sections of report.json, from a loaded checkpoint (export.build assembles the rest).

`model`: the family's facts (export.families.facts.ModelFacts), the head, the inputs, the attention kernel, per
layer the rotary and the attention kind the family declares, and the text prefixes by prompt name (`prompts`:
the family's, or a task adapter build's own task prefix). `checkpoint`: path, format, sha256, config source, the
weights' stored dtype.
"""

from __future__ import annotations

from argparse import Namespace

from export.checkpoint.rebuild import LoadedCheckpoint
from export.folder.digest import sha256_tree
from export.report.schema import CheckpointSection, ModelSection


def model_facts(ckpt: LoadedCheckpoint) -> ModelSection:
    """report.json `model`: the family's facts, the task, the inputs, the attention kernel, per layer the rotary
    (its table's rope type and parameters, the heads of each rotated tensor) and the attention kind the family
    declares, and the text prefixes by prompt name (`prompts`): the family's, or for a task adapter build
    (--task NAME) that task's own prefix under its name (the graph holds that task only)."""
    return {
        **ckpt.facts.to_report(),
        "task": ckpt.task,
        "inputs": list(ckpt.family.inputs),
        "attn_implementation": ckpt.attn_implementation,
        "params": sum(p.numel() for p in ckpt.model.parameters()),
        "table": ckpt.table,
        "rotary": [
            {
                "layout": r.layout,
                "dim": r.dim,
                "table": r.table.name,
                "theta": r.table.theta,
                "rope_type": r.table.rope_type,
                "rope_parameters": dict(r.table.parameters),
                "sites": list(r.sites),
                "heads": [h for _, h in r.heads],
            }
            for r in ckpt.rotary
        ],
        "attention": [a.describe() for a in ckpt.attention],
        "prompts": prompts(ckpt),  # text prefixes by prompt name (engines.client --prompt)
    }


def prompts(ckpt: LoadedCheckpoint) -> dict[str, str]:
    adapter = ckpt.adapter or {}
    task = adapter.get("task")
    return {task: adapter["prefix"]} if task else dict(ckpt.family.prompts)


def checkpoint_facts(args: Namespace, ckpt: LoadedCheckpoint) -> CheckpointSection:
    return {
        "path": str(args.model),
        "format": ckpt.source_format,
        "sha256": sha256_tree(args.model),
        "config_source": ckpt.config_source,
        "auto_map_ignored": ckpt.auto_map_ignored,
        "weights_dtype": ckpt.weights_dtype,
    }

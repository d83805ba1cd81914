"""Task adapters a checkpoint holds as weights, merged into the base weights before export (`--task NAME`).

A family whose checkpoints carry per-task weight updates (jina-embeddings-v3's LoRA adapters) returns a
`TaskAdapters` from `Family.adapters(state, config dict, path)`: the task names in the checkpoint's own order, the
text prefix each task expects, and `delta(key, task)`: the update of one weight for one task, computed in float64
from the adapter tensors (read as data: no code of the checkpoint's runs). `merged(state, task)` returns the state
with W + delta for every adapted weight, rounded once to fp32: one graph per task, no adapter at run time.
The choice of task is the build's (`choose`): a checkpoint without adapters refuses a task; one with adapters
refuses to build without one, naming its tasks, unless told `--task none` (the base weights, as the checkpoint's
own code computes without a task).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from export.errors import UsageError

NONE, ALL = "none", "all"  # --task none: the base weights; --task all: one build per task


@dataclass(frozen=True)
class TaskAdapters:
    kind: str  # what they are and where their layout is from, for the report
    tasks: tuple[str, ...]  # in the checkpoint's order (the index of each task's slice in the stacked tensors)
    prefixes: Mapping[str, str]  # task -> the text its inputs start with ("" for none)
    keys: tuple[str, ...]  # the weights they update, in the state's names
    delta: Callable[[str, str], torch.Tensor]  # (key, task) -> float64 update, the weight's shape
    details: Mapping[str, object] = field(default_factory=dict)  # rank, alpha, scaling... for the report

    def merged(self, state: dict, task: str) -> dict:
        """The state with every adapted weight W replaced by W + delta(task), added in float64, rounded once."""
        out = dict(state)
        for key in self.keys:
            w = state[key]
            out[key] = (w.double() + self.delta(key, task)).to(torch.float32)
        return out

    def describe(self, task: str) -> dict:
        """report.json `adapter`: the task built, the tasks the checkpoint holds, how they were merged."""
        return {
            "task": task,
            "index": self.tasks.index(task),
            "tasks": list(self.tasks),
            "prefix": self.prefixes.get(task, ""),
            "kind": self.kind,
            "weights_merged": len(self.keys),
            **dict(self.details),
        }


def choose(adapters: TaskAdapters | None, task: str | None, path) -> str | None:
    """The task to merge (None: the base weights), or one UsageError line."""
    if adapters is None:
        if task not in (None, NONE):
            raise UsageError(
                f"--task {task}: {path} holds no task adapters (no adapter tensors in its weights); build it "
                "without --task"
            )
        return None
    listed = ", ".join(adapters.tasks)
    if task is None:
        raise UsageError(
            f"{path} holds {len(adapters.tasks)} task adapters ({listed}); pass --task NAME to build one, --task all "
            f"for one sub-folder each, or --task {NONE} for the base weights without any adapter"
        )
    if task == NONE:
        return None
    if task not in adapters.tasks:
        raise UsageError(f"--task {task}: {path} holds the task adapters {listed} (or pass --task {NONE} / {ALL})")
    return task

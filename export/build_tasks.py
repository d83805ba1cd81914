"""`export.build --task all`: one build per task adapter of the checkpoint, each in its own sub-folder of --out.

A checkpoint with task adapters (export/families/adapters.py: jina-embeddings-v3's five LoRA adapters) gives one
graph per task, the adapter merged into the weights. `--task all` builds every task into `<out>/<task>/` (a whole
build folder each: graphs, report.json, report.md, the engine where TensorRT exists) and writes `<out>/tasks.json`,
the index; the whole set is staged together and moved into place by one swap, every file recorded in `<out>`'s
manifest (export/folder/README.md): nothing of a task is in place before every task is done.

Validation: the first task at every shape of export.build; each other task at one shape (batch 3 at the prime
length, two rows padded), after checking that its graphs are the first task's in structure (the same nodes,
attributes, inputs, outputs and initializer names, types and shapes: only weight values differ). Shape-dependent
defects of the graph are therefore checked once, on the first task; what differs between tasks (the merged
weights) shows at any shape, and the one-shape check is what catches a wrong adapter (tests/export/families/
test_jina_adapters.py). This keeps --task all near the cost of one full build plus one export per task; build a
task alone (`--task NAME`) to validate it at every shape.
"""

from __future__ import annotations

import json
from pathlib import Path

import onnx
from onnx.external_data_helper import uses_external_data

from export.checkpoint.rebuild import inspect_checkpoint
from export.errors import UsageError
from export.families.adapters import ALL, NONE
from export.folder.layout import TASKS_INDEX
from export.progress import info, status
from export.report.schema import REPORT_JSON, REPORT_MD
from export.validate import Shape, largest_prime_in

ONE_SHAPE_ROWS, ONE_SHAPE_PADDED = 3, 2


def held_tasks(model, config, trust_pickle: bool, attention) -> list[str]:
    """The tasks the checkpoint's adapters hold (read before anything is written); refused without adapters."""
    with status("reading checkpoint"):
        adapter = inspect_checkpoint(model, config, trust_pickle, attention=attention, adapter_task=NONE).adapter
    if not adapter:
        raise UsageError(f"--task {ALL}: {model} holds no task adapters; build it without --task")
    return list(adapter["tasks"])


def build_all(new_run, stage: Path, tasks: list[str], disk_need: list[int]):
    """Every task's build into its sub-folder of the staging folder: the first validated at every shape, the others
    at one shape once their graphs are found to be the first's in structure. new_run(): a fresh export.build Run.
    Returns (the first task's report, the first error, the files to commit, their known hashes)."""
    reports, validated, first_error = {}, {}, None
    for i, task in enumerate(tasks):
        info(f"task {task} ({i + 1}/{len(tasks)})")
        run = new_run()
        ckpt, plan = run.load(adapter_task=task)
        disk_need[0] += run.disk_need
        work = stage / task
        work.mkdir()
        shapes = None if i == 0 else one_shape(plan.max_len, ckpt.task)
        check = None if i == 0 else (lambda arts, w=work: _check_structure(stage / tasks[0], w, arts))
        validated[task] = (
            "every shape" if shapes is None else f"one shape ({shapes[0].label()}), same graph as {tasks[0]}"
        )
        report, error = run.stages(ckpt, plan, work, shapes=shapes, before_validation=check)
        reports[task] = report
        first_error = first_error or error
    write_index(stage, tasks, reports, validated)
    files, hashes = committed(reports)
    return reports[tasks[0]], first_error, [*files, TASKS_INDEX], hashes


def _check_structure(first: Path, work: Path, artifacts: dict[str, str]) -> None:
    problem = same_structure(first, work, [p for p in artifacts.values() if p.endswith(".onnx")])
    if problem:
        raise RuntimeError(f"--task all: {problem}; the one-shape validation of a task assumes the first task's graph")


def task_files(names: list[str], tasks: list[str]) -> list[str]:
    """Every path a --task all run may write: each build's names inside its task's folder, and the index."""
    return [f"{t}/{n}" for t in tasks for n in names] + [TASKS_INDEX]


def one_shape(max_len: int, task: str) -> list[Shape]:
    """The single validation shape of the tasks after the first: batch 3 at the prime length, 2 rows padded."""
    choices = 2 if task == "multiple-choice" else None
    return [Shape(ONE_SHAPE_ROWS, largest_prime_in(2, min(61, max_len)) or 1, ONE_SHAPE_PADDED, choices)]


def structure(path: Path) -> list[bytes]:
    """A graph without its weight values: nodes, inputs, outputs, initializer names / types / shapes, metadata."""
    m = onnx.load(str(path), load_external_data=False)
    g = m.graph
    inits = []
    for t in g.initializer:
        shell = onnx.TensorProto(name=t.name, data_type=t.data_type, dims=t.dims)
        inits.append(shell.SerializeToString() + (b"@external" if uses_external_data(t) else b""))
    return (
        [n.SerializeToString() for n in g.node]
        + [v.SerializeToString() for v in (*g.input, *g.output)]
        + sorted(inits)
        + [p.SerializeToString() for p in m.metadata_props]
    )


def same_structure(first: Path, other: Path, graphs: list[str]) -> str | None:
    """None when every graph of `other`'s build has the structure of `first`'s; else what differs."""
    for name in graphs:
        if structure(first / name) != structure(other / name):
            return f"{other.name}/{name} differs in structure from {first.name}/{name}"
    return None


def write_index(stage: Path, tasks: list[str], reports: dict, validated: dict[str, str]) -> str:
    """<out>/tasks.json: per task its folder, report, verdict, prefix and how it was validated."""
    index = {
        "tasks": [
            {
                "task": t,
                "folder": t,
                "report": f"{t}/{REPORT_JSON}",
                "passed": bool(reports[t].passed),
                "prefix": (reports[t].adapter or {}).get("prefix", ""),
                "validated": validated[t],
            }
            for t in tasks
        ]
    }
    (stage / TASKS_INDEX).write_text(json.dumps(index, indent=2) + "\n")
    return TASKS_INDEX


def committed(reports: dict) -> tuple[list[str], dict[str, str]]:
    """The files of every task's build, as paths in --out, and the hashes the reports already hold."""
    files = [f"{t}/{p}" for t, r in reports.items() for p in (*r.artifacts_sha256, REPORT_JSON, REPORT_MD)]
    hashes = {f"{t}/{p}": h for t, r in reports.items() for p, h in r.artifacts_sha256.items()}
    return files, hashes

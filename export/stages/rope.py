"""The rotary stage of export.build: model.onnx -> model.rope-<mode>.onnx, plus its validation graph.

In: the plain export on disk (graph + `model.onnx.data`), the mode, the loaded checkpoint (for the
expected site count and the probe's shapes). Out (a StageResult): the rewritten graph (atomically
written, checker-validated) beside it, referencing the same `model.onnx.data`: the pass reads the
graph's structure, never the weights, and writes no copy of them. Also the `rewrite` section, the
artifact entry, the graph to validate (an `OnnxFile`; for `plugin` ORT gets the ONNX function that
runs RoformerRotary attached in memory only) and a coverage failure line or None.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import onnx

from export.errors import VerificationError
from export.families.registry import family_of_config
from export.folder.layout import ONNX_FILE, rope_file
from export.onnx_io import write_model
from export.passes.lowering import with_rotary_function
from export.passes.rotary import fuse_rotary
from export.progress import info, status
from export.report.schema import RewriteSection, rope_key
from export.spec import DEFAULT_CHOICES
from export.stages.result import StageResult
from export.validate import OnnxFile, Shape, make_inputs


def expected_sites(config) -> int:
    """The rotated tensors of every layer, as the family declares them (query and key; RoFormer's value too with
    rotary_value)."""
    return sum(len(r.sites) for r in family_of_config(config).rotaries(config))


def rewrite_file(src: Path, dst: Path, mode: str, config, max_len: int, task: str, choices: int | None = None) -> dict:
    """Run the pass on `src`'s structure, check the result and write it atomically to `dst`, pointing at
    `src`'s external data (same folder; elsewhere the weights are loaded and written with `dst`). The probe's
    inputs have `choices` choices for a multiple-choice head (default DEFAULT_CHOICES). Returns the report dict."""
    src, dst = Path(src), Path(dst)
    same_folder = src.resolve().parent == dst.resolve().parent
    model = onnx.load(str(src), load_external_data=not same_folder)
    choices = (choices or DEFAULT_CHOICES) if task == "multiple-choice" else None
    family = family_of_config(config)
    facts = family.facts(config)
    feeds = make_inputs(Shape(2, min(37, max_len), 1, choices), facts.vocab_size, facts.type_vocab_size)
    new, report = fuse_rotary(
        model,
        mode=mode,
        expected=expected_sites(config),
        expected_nodes=facts.layers,
        max_len=max_len,
        feeds=feeds,
        head_dim=facts.head_dim,
        base_dir=src.parent,
        rotary=family.rotaries(config),  # each layer's layout and table, as the family declares them
    )
    del model
    write_model(new, dst, check=True)
    return report.to_dict() | {"coverage_error": report.coverage_error()}


def run_rope_stage(mode: str, ckpt, out: Path, max_len: int, choices: int | None = None) -> StageResult[RewriteSection]:
    """out/model.onnx -> out/model.rope-<mode>.onnx; the section, the artifact and the graph to validate."""
    name = rope_file(mode)
    with status(f"rotary pass ({mode})"):
        rewrite = rewrite_file(out / ONNX_FILE, out / name, mode, ckpt.config, max_len, ckpt.task, choices)
    failure = rewrite.pop("coverage_error")
    info(f"rotary pass ({mode}): {rewrite['rewritten']}/{rewrite['expected']} sites into {rewrite['nodes']} nodes")
    if mode == "plugin" and failure is None:  # the plugin's node checks, now, not when validation starts
        try:
            with_rotary_function(onnx.load(str(out / name), load_external_data=False))
        except VerificationError as e:  # a node TensorRT would refuse: a failed rewrite, artifacts kept
            failure = f"rotary rewrite: {e}"
    key = rope_key(mode)
    return StageResult(
        cast(RewriteSection, rewrite),
        artifacts={key: name},
        failure=failure,
        graphs={key: (OnnxFile(out / name, rotary_function=mode == "plugin"), "fp32")},
    )

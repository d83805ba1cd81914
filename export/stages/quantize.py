"""The quantization stage of export.build (`--precision int8 | fp8`): the TensorRT-bound fp32 graph -> its Q/DQ twin.

In: the fp32 graph the rotary stage left (`model.rope-plugin.onnx` or `model.rope-onnx.onnx`), its artifact key, the
checked QuantOptions, the loaded checkpoint (config, and its model for the fallback's PyTorch reference), the
build's validation shapes (export.build_plan) and thresholds. Out: `<stem>.int8.onnx` / `<stem>.fp8.onnx` (new
weights in `<name>.data`, the rest read from the source's data file), the `quantization` section (placement per
role, calibration data and its sha256, every scale, the fallback's account), the artifacts (the file is also
`tensorrt-onnx`, the engine's source) and the graph to validate (RoformerRotary through its in-memory ONNX function,
as for fp16). A graph that departs from the placement (a site without Q/DQ, Q/DQ anywhere else or at a rotary node)
is a failed stage: the report says where, and export.build exits 1.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from export.folder.layout import cpu_twin_file
from export.memory import release_freed
from export.onnx_io import write_model
from export.passes.pooling import Pooling
from export.passes.quantize import build, calibrate, check_quantized, plan
from export.passes.quantize.cpu_twin import RECIPE as CPU_TWIN_RECIPE
from export.passes.quantize.cpu_twin import write_cpu_twin
from export.passes.quantize.data import CalibSet, file_set, synthetic_set
from export.passes.quantize.fallback import EvalCase, FallbackResult, run_fallback
from export.passes.quantize.options import QuantOptions
from export.progress import info, status
from export.report.compare import error_stats, row_mask
from export.report.schema import CPU_TWIN, TENSORRT_ONNX_KEY, precision_key
from export.report.thresholds import Threshold, Thresholds
from export.stages.result import StageResult
from export.validate import OnnxFile, Shape, TorchReference, input_seed, make_inputs

# Validation draws its inputs with seed 0: the fallback tunes on other inputs than it is judged on, and on several
# draws of each short shape, because the largest error of one draw is a tail statistic (on tiny-stress, seeds 0..9
# of batch 3 x 61 ranged 0.002 to 0.018 in scaled error). The longest shape, costly, gets one draw.
FALLBACK_DRAWS = 8
FEW_TOKENS = 512  # shapes of at most this many tokens get every seed
FALLBACK_MARGIN = 0.8  # the fallback stops at 80 % of each threshold, so validation's inputs pass with room


def with_margin(t: Threshold, margin: float = FALLBACK_MARGIN) -> Threshold:
    """`t` with every error bound (and every cosine's distance from 1) scaled by `margin`."""
    return Threshold(
        atol=margin * t.atol,
        rtol=margin * t.rtol,
        min_cosine=1 - margin * (1 - t.min_cosine),
        min_row_cosine=1 - margin * (1 - t.min_row_cosine),
    )


def calibration_set(q: QuantOptions, facts, max_len: int) -> CalibSet:
    """facts: the family's ModelFacts (vocab sizes; type_vocab_size None: no token_type_ids)."""
    if q.calib is None:
        return synthetic_set(facts.vocab_size, facts.type_vocab_size, max_len, q.size or 64)
    return file_set(q.calib, q.vocab, facts.vocab_size, facts.type_vocab_size, max_len, q.size)


def run_quantize_stage(
    q: QuantOptions,
    calib: CalibSet,
    src: Path,
    src_key: str,
    cpu_src: Path,
    cpu_key: str,
    ckpt,
    shapes: list[Shape],
    thresholds: Thresholds,
    pooling: Pooling | None = None,
) -> StageResult[dict]:
    """calib: the calibration set (calibration_set, read before the build's work); src/src_key: the
    TensorRT-bound fp32 graph (pooled already with --pooling); cpu_src/cpu_key: the fp32 graph ONNX Runtime
    serves on CPU hosts, from which --precision int8 also makes the INT8 CPU twin; shapes: validation's (the
    plan's), which the fallback draws its inputs like and whose choices calibration's batches take."""
    outputs = pooling.outputs if pooling else None
    plugin = src_key == "rope-plugin"
    choices = shapes[0].choices
    key = precision_key(src_key, q.fmt)
    twin = _cpu_twin(cpu_src, ckpt.facts.heads, ckpt.facts.hidden) if q.fmt == "int8" else None
    placement = plan(src)
    with status(
        f"calibrating {len(placement.activations())} tensors on {len(calib.samples)} samples ({q.method.name})"
    ):
        amax = calibrate(src, placement, calib, q.method, rotary_function=plugin, choices=choices)
    release_freed()
    fallback = None
    if q.fallback == "auto":
        with status("fallback: sensitivity sweep and search"):
            fallback = _fallback(q, src, placement, amax, ckpt, shapes, thresholds, key, plugin, pooling)
        placement = placement.with_kept(fallback.keep)
    with status(f"writing the {q.fmt} graph ({q.high} high precision)"):
        model, summary = build(src, placement, amax, q.fmt, q.high)
        problems = check_quantized(model, placement)
        dst = src.with_name(f"{src.stem}.{q.fmt}.onnx")
        write_model(model, dst, check=True, external=True)
        del model
    section = {
        **q.to_report(),
        "source": src.name,
        "calibration": calib.to_report(),
        "placement": placement.counts(),
        "kept_high": sorted(placement.keep_high),
        **summary.to_report(),
        "fallback": fallback.report if fallback else {"mode": "none"},
        "structure_problems": problems,
    }
    counts = ", ".join(
        f"{role} {c['quantized']} quantized / {c['high']} high" for role, c in placement.counts().items()
    )
    info(f"{q.fmt} graph: {counts}; opset {summary.opset['graph']}; {dst.name}")
    if calib.note:
        info(f"note: {calib.note}")
    failure = f"quantization: the graph departs from its placement: {'; '.join(problems[:3])}" if problems else None
    artifacts = {key: dst.name, TENSORRT_ONNX_KEY: dst.name}
    graphs = {key: (OnnxFile(dst, rotary_function=plugin, outputs=outputs), q.fmt)}
    if twin is not None:
        twin_key = precision_key(cpu_key, CPU_TWIN)
        twin_outputs = outputs if cpu_src == src else None  # pooled only when it is the TensorRT-bound graph too
        artifacts[twin_key], graphs[twin_key] = twin.name, (OnnxFile(twin, outputs=twin_outputs), "int8")
        section["cpu_twin"] = {"file": twin.name, "source": cpu_src.name, "recipe": CPU_TWIN_RECIPE}
    return StageResult(section, artifacts=artifacts, failure=failure, graphs=graphs)


def _cpu_twin(cpu_src: Path, heads: int, hidden: int) -> Path:
    """The INT8 CPU twin of `cpu_src`, written beside it. First in the stage: its peak (ONNX Runtime's fusions and
    quantize_dynamic hold the fp32 graph's weights twice over) then adds to the least this build holds."""
    with status("writing the INT8 CPU twin"):
        twin = write_cpu_twin(cpu_src, cpu_src.with_name(cpu_twin_file(cpu_src.name)), heads, hidden)
    info(f"INT8 CPU twin: {twin.name}")
    return twin


def fallback_draws(shapes: list[Shape]) -> list[tuple[Shape, int]]:
    """Validation's shapes, each with FALLBACK_DRAWS seeds (one for shapes over FEW_TOKENS): the first seeds from 1
    whose inputs are none of validation's (seed 0 of another shape can be the same stream: input_seed)."""
    taken = {input_seed(s) for s in shapes}
    draws = []
    for shape in shapes:
        fresh = (seed for seed in itertools.count(1) if input_seed(shape, seed) not in taken)
        n = FALLBACK_DRAWS if shape.batch * shape.seq <= FEW_TOKENS else 1
        draws += [(shape, seed) for seed in itertools.islice(fresh, n)]
    return draws


def fallback_cases(ckpt, shapes: list[Shape], pooling: Pooling | None = None) -> list[EvalCase]:
    """The inputs of fallback_draws(shapes), with the PyTorch fp32 outputs of the graph's outputs. A draw on which
    PyTorch's own output is not finite is left out: no graph can match it, and it would rank every node as infinitely
    sensitive and fail every trial (ESM-2: a row whose tokens are all <mask>, token dropout's 0.88 / (1 - 1))."""
    cases, undefined = [], []
    for shape, seed in fallback_draws(shapes):
        feeds = make_inputs(shape, ckpt.facts.vocab_size, ckpt.facts.type_vocab_size, seed=seed)
        refs = TorchReference(ckpt.model, ckpt.task, pooling=pooling)(shape, feeds)  # it caches by shape alone
        wanted = pooling.outputs if pooling else tuple(refs)
        label = f"{shape.label()} seed {seed}"
        if not all(np.isfinite(refs[k]).all() for k in wanted):
            undefined.append(label)
            continue
        cases.append(EvalCase(label, feeds, {k: refs[k] for k in wanted}))
    if undefined:
        info(f"fallback: {len(undefined)} draw(s) left out, PyTorch's own output is not finite there: {undefined}")
    return cases


def _fallback(
    q: QuantOptions,
    src: Path,
    placement,
    amax,
    ckpt,
    shapes: list[Shape],
    thresholds: Thresholds,
    key: str,
    plugin: bool,
    pooling: Pooling | None,
) -> FallbackResult:
    """The evaluation cases (fallback_cases) and the search, judged with the thresholds less FALLBACK_MARGIN."""
    cases = fallback_cases(ckpt, shapes, pooling)

    def judge(got: dict, case: EvalCase) -> tuple[bool, str]:
        worst = []
        for out, ref in case.refs.items():
            s = error_stats(got[out], ref, row_mask(out, ref.shape, case.feeds["attention_mask"]))
            ok = with_margin(thresholds.lookup(q.fmt, key, out)).passes(
                s.max_abs, s.scaled_error, s.cosine, s.n_nan, s.row_cosine
            )
            rows = "" if s.row_cosine is None else f", row cosine {s.row_cosine:.6f}"
            worst.append((ok, f"{case.label} {out}: scaled error {s.scaled_error:.3g}{rows}"))
        return all(ok for ok, _ in worst), next((w for ok, w in worst if not ok), worst[-1][1])

    budget = int(q.budget * len(placement.nodes()))
    result = run_fallback(
        src,
        placement,
        amax,
        q.fmt,
        cases,
        judge=judge,
        budget=budget,
        rotary_function=plugin,
        trial=lambda keep: build(src, placement.with_kept(keep), amax, q.fmt, q.high)[0],
    )
    kept = len(result.keep)
    info(
        f"fallback: {kept} of {len(placement.nodes())} MatMuls kept in {q.high}"
        + ("" if result.passed else f"; {result.report.get('reason')}")
    )
    return result

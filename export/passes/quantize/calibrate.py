"""Calibration: the range (amax) of every activation tensor that gets Q/DQ, measured in ONNX Runtime.

In: the fp32 graph the quantized graph is made from (for `--rope plugin` its RoformerRotary nodes run through
the ONNX function attached in memory, as validation does: export.passes.lowering), the fp32 tensor names of
the placement, the calibration batches (feed dicts), the method. Out: {tensor: amax}, float, > 0.

Methods (TensorRT's own calibrators and pytorch-quantization's histogram calibrator, on |x|):
- max: the largest |x| seen;
- percentile: the P-th percentile of |x| (histogram of 2048 bins on [0, max]);
- entropy: the threshold whose 128-level quantization of the |x| histogram has the least KL divergence from
  it (TensorRT's entropy calibration, Migacz, "8-bit Inference with TensorRT", GTC 2017; the search of
  pytorch-quantization's `_compute_amax_entropy`, vectorized). INT8 only: its levels are uniform.

Histogram methods read the data twice (max first, then a fixed-range histogram), so every batch lands in the same
bins whatever order it came in. ONNX Runtime runs single-threaded here: the same data gives the same
ranges, bit for bit (and so the same quantized graph, byte for byte).
Why not onnxruntime.quantization's HistogramCalibrater: it re-bins with `searchsorted` on every batch (minutes
on the demo model), prints to stdout, and its entropy search is plain Python loops.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from export.errors import UsageError, VerificationError
from export.passes.lowering import with_rotary_function
from export.progress import steps

METHODS = ("max", "entropy", "percentile")
NUM_BINS = 2048  # TensorRT's and pytorch-quantization's histogram size
INT8_LEVELS = 128  # positive levels of symmetric INT8, the entropy search's quantized bins
ENTROPY_START = 128  # smallest candidate threshold, in bins (pytorch-quantization's start_bin)
DEFAULT_PERCENTILE = 99.99


@dataclass(frozen=True)
class CalibMethod:
    name: str = "max"
    percentile: float = DEFAULT_PERCENTILE

    def to_report(self) -> dict:
        return {"method": self.name} | ({"percentile": self.percentile} if self.name == "percentile" else {})


def check_method(method: str, fmt: str) -> CalibMethod:
    """--calib-method for --precision int8 | fp8 (UsageError otherwise)."""
    if method not in METHODS:
        raise UsageError(f"--calib-method {method!r} is not one of {', '.join(METHODS)}")
    if fmt == "fp8" and method == "entropy":
        raise UsageError(
            "--calib-method entropy models INT8's 128 uniform levels, not FP8's; use max or "
            "percentile with --precision fp8"
        )
    return CalibMethod(method)


def calibration_session(path: Path, tensors: list[str], rotary_function: bool):
    """A single-threaded ORT session of the fp32 graph at `path` that also returns `tensors`."""
    model = onnx.load(str(path), load_external_data=False)
    present = {o.name for o in model.graph.output}
    model.graph.output.extend(
        helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in tensors if t not in present
    )
    return single_thread_session(model, Path(path).parent, rotary_function)


def single_thread_session(model: onnx.ModelProto, folder: Path, rotary_function: bool):
    """ORT CPU session of an in-memory model whose external data lies in `folder`; one thread, so the same
    inputs give the same outputs bit for bit (calibration and the fallback's decisions depend on them)."""
    import onnxruntime as ort

    if rotary_function:
        model = with_rotary_function(model)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Kahn's order by node index (onnxruntime graph_viewer.cc, PriorityNodeCompare) instead of the default reverse
    # DFS from the outputs, which ran the sensitivity sweep's per-node twins after the whole graph and held every
    # activation until then (the demo's INT8 build peaked at 8.6 GB; scripts/results/pipeline/). No value changes.
    opts.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    opts.enable_cpu_mem_arena = False  # freed activations go back at once; the arena's growth overshoots the peak
    opts.add_session_config_entry("session.model_external_initializers_file_folder_path", str(Path(folder).resolve()))
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _shape(feed: dict) -> str:
    """'8x128 tokens' for a batch of token ids; a graph fed otherwise is named by its first input's shape."""
    if "input_ids" in feed:
        return f"{'x'.join(map(str, feed['input_ids'].shape))} tokens"
    return "x".join(map(str, next(iter(feed.values())).shape))


def run_batches(session, tensors: list[str], batches: Callable[[], Iterable[dict]], visit, label: str) -> None:
    """visit(name, array) for every tensor of every batch; each batch named as it starts (export.progress)."""
    wanted = {i.name for i in session.get_inputs()}
    for feed in steps(batches(), lambda f: f"{label}: batch of {_shape(f)}"):
        outs = session.run(tensors, {k: v for k, v in feed.items() if k in wanted})
        for name, arr in zip(tensors, outs, strict=True):
            if not np.all(np.isfinite(arr)):
                raise VerificationError(
                    f"calibration: tensor {name} holds NaN or inf in the fp32 graph; the model "
                    "itself is broken on the calibration data"
                )
            visit(name, np.abs(arr, dtype=np.float32))


def collect_amax(
    session, tensors: list[str], batches: Callable[[], Iterable[dict]], method: CalibMethod
) -> dict[str, float]:
    """{tensor: amax} over every batch. `batches` is called once per pass (twice for histogram methods)."""
    if not tensors:
        return {}
    peak = dict.fromkeys(tensors, 0.0)

    def see_max(name, a):
        peak[name] = max(peak[name], float(a.max(initial=0.0)))

    run_batches(session, tensors, batches, see_max, "calibration (ranges)")
    if method.name == "max":
        return {t: _positive(v) for t, v in peak.items()}
    hists = {t: np.zeros(NUM_BINS, dtype=np.int64) for t in tensors}

    def see_hist(name, a):
        top = _positive(peak[name])
        hists[name] += np.histogram(a, bins=NUM_BINS, range=(0.0, top))[0]

    run_batches(session, tensors, batches, see_hist, f"calibration ({method.name} histograms)")
    pick = entropy_amax if method.name == "entropy" else (lambda h, top: percentile_amax(h, top, method.percentile))
    return {t: _positive(min(pick(hists[t], _positive(peak[t])), peak[t]) or peak[t]) for t in tensors}


def _positive(v: float) -> float:
    """A usable amax: TensorRT needs scales > 0; an all-zero tensor quantizes to zero with any."""
    return float(v) if v > 0 and np.isfinite(v) else 1.0


def percentile_amax(hist: np.ndarray, top: float, percentile: float) -> float:
    """The upper edge of the bin where the cumulative share of |x| reaches `percentile`%."""
    total = hist.sum()
    if total == 0:
        return top
    idx = int(np.searchsorted(np.cumsum(hist) / total, percentile / 100.0))
    return float(top * min(idx + 1, len(hist)) / len(hist))


def entropy_amax(hist: np.ndarray, top: float, levels: int = INT8_LEVELS, start: int = ENTROPY_START) -> float:
    """TensorRT's entropy calibration on a histogram of |x| over [0, top]: for each candidate threshold of i bins,
    p = the first i bins with everything above folded into the last; q = p merged into `levels` groups and
    spread back over the group's non-empty bins; the threshold with the least KL(p || q) wins (the last
    one on ties, as pytorch-quantization)."""
    bins = hist.astype(np.float64).copy()
    n = len(bins)
    if n <= start or bins.sum() == 0:
        return top
    bins[0] = bins[1]  # the zero bin is dominated by exact zeros (padding, ReLU-like ops): as pytorch-quantization
    best, best_i = np.inf, n
    suffix = np.concatenate([np.cumsum(bins[::-1])[::-1], [0.0]])  # suffix[i] = sum(bins[i:])
    for i in range(start, n + 1):
        p = bins[:i].copy()
        p[-1] += suffix[i]
        group = (np.arange(i) * levels) // i  # which of the `levels` groups each bin falls into
        nonzero = bins[:i] != 0
        sums = np.bincount(group, weights=bins[:i], minlength=levels)
        counts = np.bincount(group, weights=nonzero.astype(np.float64), minlength=levels)
        q = np.where(nonzero, sums[group] / np.maximum(counts[group], 1), 0.0)
        div = _kl(p, q)
        if div <= best:
            best, best_i = div, i
    return float(top * best_i / n)


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    """KL(p || q) of two histograms normalised to 1 (scipy.stats.entropy's rule: inf where q = 0 < p)."""
    ps, qs = p.sum(), q.sum()
    if ps == 0 or qs == 0:
        return np.inf
    p, q = p / ps, q / qs
    mask = p > 0
    if np.any(q[mask] == 0):
        return np.inf
    return float(np.sum(p[mask] * np.log(p[mask] / q[mask])))

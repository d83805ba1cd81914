"""Validation inputs and report cases shared by the ONNX-precision, engine and bench code.

In:  axis names per input (from the ONNX file), a (batch, seq[, choices]) shape, outputs and references.
Out: int64 feeds, and `report["validation"]` entries in the report.json schema:
     {"graph", "precision", "batch", "seq", "choices", "padded_rows", "outputs": {name: stats+thresholds}, "passed"}
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from export.compare import error_stats
from export.thresholds import Thresholds


def input_axes(model) -> dict[str, tuple]:
    """ONNX graph inputs -> {name: axis names or fixed ints}, e.g. {"input_ids": ("batch", "sequence")}.

    model: onnx.ModelProto. Initializers listed as inputs (old exporters) are skipped.
    """
    inits = {i.name for i in model.graph.initializer}
    axes = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        dims = vi.type.tensor_type.shape.dim
        axes[vi.name] = tuple(d.dim_param if d.dim_param else int(d.dim_value) for d in dims)
    return axes


def shape_info(batch: int, seq: int, choices: int | None = None, padded_rows: int = 0) -> dict:
    return {"batch": int(batch), "seq": int(seq), "choices": choices, "padded_rows": int(padded_rows)}


def make_inputs(axes: Mapping[str, tuple], info: Mapping, vocab_size: int, type_vocab_size: int = 2,
                seed: int = 0) -> dict[str, np.ndarray]:
    """Random int64 feeds for input_ids / attention_mask / token_type_ids (others: zeros).

    axes: input_axes(model); info: shape_info(...). The last `padded_rows` rows (of the flattened
    batch[*choices]) get attention_mask 0 on their second half (at least one kept token), and id 0 there.
    """
    rng = np.random.default_rng(seed)
    sizes = {"batch": info["batch"], "sequence": info["seq"], "choices": info.get("choices") or 1}
    feeds = {}
    for name, names in axes.items():
        shape = tuple(sizes.get(a, a) if isinstance(a, str) else a for a in names)
        if any(isinstance(s, str) for s in shape):
            raise ValueError(f"input {name} has axes {names}; expected batch/choices/sequence or fixed sizes")
        if name == "input_ids":
            feeds[name] = rng.integers(1, vocab_size, size=shape, dtype=np.int64)
        elif name == "token_type_ids":
            feeds[name] = rng.integers(0, type_vocab_size, size=shape, dtype=np.int64)
        elif name == "attention_mask":
            feeds[name] = np.ones(shape, dtype=np.int64)
        else:
            feeds[name] = np.zeros(shape, dtype=np.int64)
    pad = int(info.get("padded_rows") or 0)
    if pad:
        seq = info["seq"]
        keep = max(1, seq // 2)
        for name in ("attention_mask", "input_ids"):
            if name in feeds:
                flat = feeds[name].reshape(-1, seq)
                flat[-pad:, keep:] = 0
    return feeds


def make_case(graph: str, precision: str, info: Mapping, got: Mapping[str, np.ndarray],
              ref: Mapping[str, np.ndarray], thresholds: Thresholds | None = None) -> dict:
    """One report["validation"] entry: export.compare.error_stats per output + the threshold applied.

    Every reference output must be present in `got` (a missing one fails the case, never skipped).
    """
    th = thresholds or Thresholds.defaults()
    outputs = {}
    for name, r in ref.items():
        t = th.lookup(precision, graph, name)
        if name not in got:
            outputs[name] = {"error": f"output {name} missing from {graph}", **t.to_dict(), "passed": False}
            continue
        try:
            s = error_stats(np.asarray(got[name]), np.asarray(r))
        except ValueError as e:  # shape mismatch: recorded as a failed output, not raised
            outputs[name] = {"error": str(e), **t.to_dict(), "passed": False}
            continue
        ok = t.passes(s.max_abs, s.max_rel, s.cosine, s.n_nan)
        outputs[name] = {**s.to_dict(), **t.to_dict(), "passed": ok}
    passed = bool(outputs) and all(o["passed"] for o in outputs.values())
    return {"graph": graph, "precision": precision, **dict(info), "outputs": outputs, "passed": passed}


def torch_reference(model, feeds: Mapping[str, np.ndarray], output_names, device: str = "cpu") -> dict[str, np.ndarray]:
    """PyTorch fp32 outputs of an HF model for numpy feeds: {output name: float32 array}.

    TF32 is switched off for the call on CUDA, so the reference really is fp32.
    """
    import torch

    prev = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.inference_mode():
            out = model(**{k: torch.from_numpy(v).to(device) for k, v in feeds.items()})
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = prev
    return {n: out[n].float().cpu().numpy() for n in output_names}

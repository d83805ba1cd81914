"""Engine vs PyTorch fp32 at shapes inside every optimization profile -> the report's validation cases.

In:  a ProfileSet, a runner (callable: numpy feeds -> numpy outputs, e.g. engines.tensorrt.runner.EngineRunner),
     a reference (export.validate.TorchReference, or any callable (Shape, feeds) -> numpy outputs).
Out: cases graded by export.validate.grade: {"graph": "engine-<precision>", "precision", "batch", "seq",
     "choices", "padded_rows", "outputs", "passed"}.

Shapes per profile (`validation_shapes`, plain Python): (batch min, seq min), (batch opt, seq opt),
(batch max, seq max), (batch opt, the largest prime in the bucket), and the opt shape again with half
its rows padded (export.validate.make_inputs pads the last rows).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from export.report.schema import ValidationCase
from export.report.thresholds import Thresholds
from export.validate import Shape, grade, largest_prime_in, make_inputs


def validation_shapes(profiles) -> list[Shape]:
    """export.validate.Shape list covering min/opt/max, a prime length and padded rows of every profile."""
    seen, out = set(), []
    b = profiles.batch
    for s in profiles.sequences:
        prime = largest_prime_in(s.min, s.max)
        cands = [(b.min, s.min, 0), (b.opt, s.opt, 0), (b.max, s.max, 0), (b.opt, s.opt, max(1, b.opt // 2))]
        if prime is not None:
            cands.append((b.opt, prime, 0))
        for batch, seq, pad in cands:
            shape = Shape(batch, seq, min(pad, batch) if seq > 1 else 0, profiles.choices)
            if shape not in seen:
                seen.add(shape)
                out.append(shape)
    return out


def validate_engine(
    run: Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]],
    reference: Callable[[Shape, Mapping[str, np.ndarray]], Mapping[str, np.ndarray]],
    profiles,
    precision: str,
    vocab_size: int,
    type_vocab_size: int | None = 2,  # None: the model has no token_type_ids input
    thresholds=None,
    seed: int = 0,
    outputs: tuple[str, ...] | None = None,
) -> list[ValidationCase]:
    """One case per validation shape; graph "engine-<precision>", thresholds looked up by precision.
    outputs: the ones the engine must have and is graded on (None: every output the reference gives)."""
    th = thresholds or Thresholds.defaults()
    cases: list[ValidationCase] = []
    for shape in validation_shapes(profiles):
        feeds = make_inputs(shape, vocab_size, type_vocab_size, seed=seed)
        ref = dict(reference(shape, feeds))
        ref = ref if outputs is None else {n: ref[n] for n in outputs}
        cases.append(grade(f"engine-{precision}", precision, shape, dict(run(feeds)), ref, th, feeds))
    return cases

"""Accuracy thresholds: one TOML format shared by `export.validate` and `engines.gate`.

Format (every table optional):

    [fp32."*"."*"]                         # [<precision>.<graph>.<output>], "*" matches any
    atol = 1e-4
    rtol = 1e-4
    min_cosine = 0.99999

    [fp16.engine.logits]
    atol = 0.1

Precedence, from weakest to strongest (each later table overrides the keys it sets): the defaults of the
precision, `["*"."*"."*"]`, `[p."*"."*"]`, the graph-wide `[p.<graph>."*"]`, the output-wide `[p."*".<output>]`,
and `[p.<graph>.<output>]`; `--atol`/`--rtol` override them all. So when a graph-wide and an output-wide
table both set a key, the output's wins: an output's own tolerance (logits vs hidden states) outranks a
tolerance given to a whole graph.

A case passes an output when `max_abs <= atol or max_rel <= rtol` (Polygraphy's rule, so it can be
re-checked from the statistics in report.json alone; equality passes), `cosine >= min_cosine`, and nothing
is NaN.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from export.report import PRECISIONS


@dataclass(frozen=True)
class Threshold:
    atol: float
    rtol: float
    min_cosine: float

    def passes(self, max_abs: float, max_rel: float, cosine: float, n_nan: int = 0) -> bool:
        # NaN compares False everywhere, so a NaN statistic fails on its own.
        close = max_abs <= self.atol or max_rel <= self.rtol
        return bool(n_nan == 0 and close and cosine >= self.min_cosine)

    def to_dict(self) -> dict:
        return asdict(self)


# fp32: ORT vs PyTorch, the value optimum uses for BERT-family encoders (ATOL_FOR_VALIDATION = 1e-4),
# cosine from the foundations issue's acceptance bar. fp16/bf16: storage rounding of 2^-11 / 2^-8 per
# op, compounded over 12 layers; measured margins are in docs of export/passes/precision.py and the demo report.
DEFAULTS: dict[str, Threshold] = {
    "fp32": Threshold(atol=1e-4, rtol=1e-4, min_cosine=0.99999),
    "fp16": Threshold(atol=5e-2, rtol=1e-2, min_cosine=0.999),
    "bf16": Threshold(atol=2.5e-1, rtol=5e-2, min_cosine=0.99),
}


# Allowed range of every threshold: errors are non-negative, a cosine lies in [-1, 1].
LIMITS = {"atol": (0.0, math.inf), "rtol": (0.0, math.inf), "min_cosine": (-1.0, 1.0)}


class ThresholdError(ValueError):
    """A thresholds file that cannot be used."""


@dataclass
class Thresholds:
    table: dict[tuple[str, str, str], dict[str, float]]
    overrides: dict[str, float] = field(default_factory=dict)  # --atol / --rtol: applied last, over every table

    @classmethod
    def defaults(cls) -> "Thresholds":
        return cls({})

    @classmethod
    def from_data(cls, data: dict | None, source: str = "thresholds") -> "Thresholds":
        """Parsed TOML (read by the caller with export.files.load_toml) -> Thresholds; None -> defaults.
        Every value must be a finite real: atol, rtol >= 0 and min_cosine in [-1, 1] (ThresholdError otherwise)."""
        if data is None:
            return cls.defaults()
        table: dict[tuple[str, str, str], dict[str, float]] = {}
        for prec, graphs in data.items():
            if prec not in PRECISIONS and prec != "*":
                raise ThresholdError(f"{source}: unknown precision table [{prec}]; use one of {PRECISIONS} or \"*\"")
            for graph, outputs in _tables(source, prec, graphs):
                for output, values in _tables(source, f"{prec}.{graph}", outputs):
                    where = f"{source}: [{prec}.{graph}.{output}]"
                    if not isinstance(values, dict):
                        raise ThresholdError(f"{where} must be a table of atol, rtol, min_cosine")
                    bad = set(values) - set(LIMITS)
                    if bad:
                        raise ThresholdError(f"{where} has unknown keys {sorted(bad)}; use atol, rtol, min_cosine")
                    table[(prec, graph, output)] = {k: check_value(f"{where} {k}", k, v) for k, v in values.items()}
        return cls(table)

    @classmethod
    def from_cli(cls, data: dict | None, source: str, atol: float | None, rtol: float | None) -> "Thresholds":
        """The thresholds file's data (or None) plus the --atol/--rtol overrides, all checked."""
        th = cls.from_data(data, source)
        th.overrides = {k: check_value(f"--{k}", k, v) for k, v in (("atol", atol), ("rtol", rtol)) if v is not None}
        return th

    def lookup(self, precision: str, graph: str, output: str) -> Threshold:
        base = DEFAULTS.get(precision)
        if base is None:
            raise ThresholdError(f"no default thresholds for precision {precision!r}")
        merged = base.to_dict()
        # least specific first, so the most specific key is applied last and wins
        for key in [("*", "*", "*"), (precision, "*", "*"), (precision, graph, "*"), (precision, "*", output),
                    (precision, graph, output)]:
            merged.update(self.table.get(key, {}))
        merged.update(self.overrides)  # --atol/--rtol override every atol/rtol, the file's included
        return Threshold(**merged)


def check_value(where: str, key: str, value) -> float:
    """A threshold value: a finite real (not a bool) inside LIMITS[key]; ThresholdError naming `where`."""
    lo, hi = LIMITS[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not lo <= value <= hi:
        raise ThresholdError(f"{where} = {value!r} is not allowed; it must be a finite number in [{lo}, {hi}]")
    return float(value)


def _tables(source: str, where: str, value):
    if not isinstance(value, dict):
        raise ThresholdError(f"{source}: [{where}] must be a table; see export/thresholds.py for the format")
    return value.items()

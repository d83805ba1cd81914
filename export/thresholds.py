"""Accuracy thresholds: one TOML format shared by `export.validate` and `engines.gate`.

Format (every table optional; a more specific key wins):

    [fp32."*"."*"]                         # [<precision>.<graph>.<output>], "*" matches any
    atol = 1e-4
    rtol = 1e-4
    min_cosine = 0.99999

    [fp16.engine.logits]
    atol = 0.1

A case passes an output when `max_abs <= atol or max_rel <= rtol` (Polygraphy's rule, so it can be
re-checked from the statistics in report.json alone), `cosine >= min_cosine`, and nothing is NaN.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path

PRECISIONS = ("fp32", "fp16", "bf16")


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


class ThresholdError(ValueError):
    """A thresholds file that cannot be used."""


@dataclass
class Thresholds:
    table: dict[tuple[str, str, str], dict[str, float]]

    @classmethod
    def defaults(cls) -> "Thresholds":
        return cls({})

    @classmethod
    def load(cls, path: str | Path | None) -> "Thresholds":
        if path is None:
            return cls.defaults()
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text())
        except FileNotFoundError:
            raise ThresholdError(f"thresholds file {p} does not exist; pass an existing TOML file") from None
        except tomllib.TOMLDecodeError as e:
            raise ThresholdError(f"thresholds file {p} is not valid TOML ({e}); fix the syntax") from None
        table: dict[tuple[str, str, str], dict[str, float]] = {}
        for prec, graphs in data.items():
            if prec not in PRECISIONS and prec != "*":
                raise ThresholdError(f"{p}: unknown precision table [{prec}]; use one of {PRECISIONS} or \"*\"")
            for graph, outputs in _tables(p, prec, graphs):
                for output, values in _tables(p, f"{prec}.{graph}", outputs):
                    bad = set(values) - {"atol", "rtol", "min_cosine"}
                    if bad:
                        raise ThresholdError(f"{p}: [{prec}.{graph}.{output}] has unknown keys {sorted(bad)}; "
                                             "use atol, rtol, min_cosine")
                    table[(prec, graph, output)] = {k: float(v) for k, v in values.items()}
        return cls(table)

    @classmethod
    def from_cli(cls, path: str | Path | None, atol: float | None, rtol: float | None) -> "Thresholds":
        th = cls.load(path)
        override = {k: v for k, v in (("atol", atol), ("rtol", rtol)) if v is not None}
        if override:
            th.table[("*", "*", "*")] = {**th.table.get(("*", "*", "*"), {}), **override}
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
        return Threshold(**merged)


def _tables(path: Path, where: str, value):
    if not isinstance(value, dict):
        raise ThresholdError(f"{path}: [{where}] must be a table; see export/thresholds.py for the format")
    return value.items()

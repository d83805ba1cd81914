"""TensorRT optimization profiles from `--batch`, `--profiles`, `--max-len` (and `--choices`).

In:  `--batch 1,8,32` (min,opt,max; one number N means 1,N,N: any batch up to N, tuned for N),
     `--profiles 128,512,2048` (sequence bucket tops: one profile per bucket 1-128, 129-512, 513-2048,
     opt at each top), `--max-len` (the sin/cos table rows = the longest sequence the engine accepts),
     optional `--choices C` for multiple-choice inputs [batch, choices, sequence] (fixed per engine).
Out: a ProfileSet: per profile, (min, opt, max) of every named axis; per-input shapes for
     `IOptimizationProfile.set_shape`; `profile_for(batch, seq)`; a `to_report()` table.

Coverage rule: a bucket top above max_len is an error (the rotary table has max_len rows). When the
last top is below max_len, one more bucket (last top + 1 .. max_len, opt = max_len) is **added**,
rather than stretching the last bucket: the buckets the user asked for keep the ranges (and opt)
they asked for, and the engine still accepts every length up to max_len. The axis names `batch`,
`sequence`, `choices` are the ONNX dim_params.

Default (`--profiles` omitted): ONE profile 1..max_len, tuned (opt) for DEFAULT_OPT_SEQ = 128 tokens, or
max_len when that is shorter. A serving workload is mostly short requests; an opt at max_len (2048) makes
TensorRT pick every kernel for the rare longest input. One profile keeps the build as fast as it can be and
each Triton instance at one execution context (each profile costs a full tactic search at build time, and in
Triton one more context, with its activation memory, in every instance: engines.triton lists every profile
in each instance so any instance takes any length). Buckets
(`--profiles 128,512,2048`) tune each range for its top at that cost; `--profiles <max_len>` is the
one-profile spelling tuned for the longest sequence.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass

from export.errors import UsageError
from export.inputs.numbers import NumberError, parse_int_list
from export.report.schema import ProfileRow

AXES = ("batch", "choices", "sequence")
DEFAULT_OPT_SEQ = 128  # opt of the default single profile: a typical serving length, not the longest


@dataclass(frozen=True)
class Range:
    min: int
    opt: int
    max: int

    def __contains__(self, n: int) -> bool:
        return self.min <= n <= self.max

    def as_list(self) -> list[int]:
        return [self.min, self.opt, self.max]


INT32_MAX = 2**31 - 1  # TensorRT dimensions are int32


def _ints(text: str, flag: str) -> list[int]:
    try:
        values = parse_int_list(str(text), what=flag)
    except NumberError:
        raise UsageError(f"{flag} {text!r}: expected comma-separated integers, e.g. {flag} 1,8,32") from None
    if any(v < 1 for v in values):
        raise UsageError(f"{flag} {text!r}: every value must be >= 1")
    if any(v > INT32_MAX for v in values):
        raise UsageError(f"{flag} {text!r}: values must be <= {INT32_MAX} (TensorRT dimensions are int32)")
    return values


def parse_profile_tops(text: str | None) -> list[int] | None:
    """`--profiles` as written: strictly ascending bucket tops, or None for the default. Needs no --max-len,
    so it is checked before the checkpoint is read; parse_profiles checks the tops against max_len."""
    if text is None or str(text).strip() == "":
        return None
    tops = _ints(text, "--profiles")
    if any(b <= a for a, b in itertools.pairwise(tops)):
        raise UsageError(f"--profiles {text!r}: bucket tops must be strictly ascending, e.g. 128,512,2048")
    return tops


def parse_batch(text: str) -> Range:
    """`--batch`: "N" -> 1,N,N; "min,opt,max" with min <= opt <= max. UsageError otherwise."""
    v = _ints(text, "--batch")
    if len(v) == 1:
        return Range(1, v[0], v[0])
    if len(v) != 3:
        raise UsageError(f"--batch {text!r}: give one number N (= 1,N,N) or three: min,opt,max")
    if not v[0] <= v[1] <= v[2]:
        raise UsageError(f"--batch {text!r}: needs min <= opt <= max")
    return Range(*v)


def parse_profiles(text: str | None, max_len: int) -> list[Range]:
    """`--profiles` bucket tops -> sequence Ranges covering 1..max_len (rules in the module docstring)."""
    if not isinstance(max_len, int) or max_len < 1:
        raise UsageError(f"--max-len {max_len!r}: must be an integer >= 1")
    tops = parse_profile_tops(text)
    if tops is None:
        return [Range(1, min(DEFAULT_OPT_SEQ, max_len), max_len)]  # the default: see the module docstring
    if tops[-1] > max_len:
        raise UsageError(
            f"--profiles {text!r}: top {tops[-1]} exceeds --max-len {max_len} "
            f"(the rotary table has {max_len} rows); lower it or raise --max-len"
        )
    if tops[-1] < max_len:
        tops = tops + [max_len]
    lows = [1] + [t + 1 for t in tops[:-1]]
    return [Range(lo, hi, hi) for lo, hi in zip(lows, tops, strict=True)]


def check_choices(choices: int | None) -> None:
    if choices is not None and (isinstance(choices, bool) or not isinstance(choices, int) or not 1 <= choices <= 64):
        raise UsageError(f"--choices {choices!r}: must be an integer from 1 to 64")


@dataclass(frozen=True)
class ProfileSet:
    """One optimization profile per sequence bucket; batch (and choices) ranges are shared."""

    batch: Range
    sequences: tuple[Range, ...]
    max_len: int
    choices: int | None = None
    added_last: bool = False  # True when a bucket was added to reach max_len

    @classmethod
    def from_cli(cls, batch: str, profiles: str | None, max_len: int, choices: int | None = None) -> ProfileSet:
        """Validate every flag up front; UsageError (one line) on the first problem."""
        b = parse_batch(batch)
        seqs = parse_profiles(profiles, max_len)
        check_choices(choices)
        asked = parse_profile_tops(profiles)
        return cls(b, tuple(seqs), max_len, choices, added_last=asked is not None and asked[-1] < max_len)

    def __len__(self) -> int:
        return len(self.sequences)

    def axis_ranges(self, index: int) -> dict[str, Range]:
        r = {"batch": self.batch, "sequence": self.sequences[index]}
        if self.choices is not None:
            r["choices"] = Range(self.choices, self.choices, self.choices)
        return r

    def shapes(self, index: int, input_axes: Mapping[str, tuple]) -> dict[str, tuple[tuple, tuple, tuple]]:
        """{input name: (min shape, opt shape, max shape)} for profile `index`.

        input_axes: {name: axis names or fixed ints}, e.g. engines.tensorrt.graph.input_axes(onnx_model).
        An axis name other than batch/choices/sequence is a UsageError (the exporter named it differently).
        """
        ranges = self.axis_ranges(index)
        out = {}
        for name, axes in input_axes.items():
            dims = []
            for a in axes:
                if isinstance(a, int) and a > 0:
                    dims.append(Range(a, a, a))
                elif a in ranges:
                    dims.append(ranges[a])
                elif a == "choices":
                    raise UsageError(f"input {name} has a 'choices' axis; pass --choices (number of choices)")
                else:
                    raise UsageError(f"input {name} axis {a!r} is not one of {AXES}; re-export with those axis names")
            out[name] = (tuple(d.min for d in dims), tuple(d.opt for d in dims), tuple(d.max for d in dims))
        return out

    def profile_for(self, batch: int, seq: int, choices: int | None = None) -> int:
        """Index of the profile that accepts (batch, seq[, choices]); UsageError when none does."""
        if batch not in self.batch:
            raise UsageError(f"batch {batch} is outside the engine's batch range {self.batch.min}..{self.batch.max}")
        if self.choices is not None and choices not in (None, self.choices):
            raise UsageError(f"choices {choices} differs from the engine's {self.choices}")
        for i, s in enumerate(self.sequences):
            if seq in s:
                return i
        raise UsageError(
            f"sequence length {seq} is outside 1..{self.max_len}; the engine was built for max_len {self.max_len}"
        )

    def to_report(self) -> list[ProfileRow]:
        """report["engine"]["profiles"]: one row per profile, [min, opt, max] per axis."""
        rows = []
        for i in range(len(self)):
            r = self.axis_ranges(i)
            row = ProfileRow(index=i, batch=r["batch"].as_list(), sequence=r["sequence"].as_list())
            if "choices" in r:
                row["choices"] = r["choices"].as_list()
            rows.append(row)
        return rows

    def table(self) -> str:
        """The same as a plain-text table for logs."""
        lines = ["profile  batch(min/opt/max)  sequence(min/opt/max)" + ("  choices" if self.choices else "")]
        for row in self.to_report():
            line = (
                f"{row['index']:>7}  {'/'.join(map(str, row['batch'])):>18}  {'/'.join(map(str, row['sequence'])):>21}"
            )
            lines.append(line + (f"  {self.choices}" if self.choices else ""))
        return "\n".join(lines)

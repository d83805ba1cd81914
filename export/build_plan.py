"""What export.build will do, decided before any work: the flags checked, then (once the checkpoint's config is
read) the length, profiles and benchmark grid, each decided once and passed down.

`Flags.check(args)` needs nothing but the command line (exit 2 with one line on the first bad flag);
`Plan.decide(args, facts, task, rotary)` adds what the checkpoint's config settles (--max-len defaults to
max_position_embeddings, read by the family: ModelFacts.max_positions; a rotary table that is right only up to
some length, `RotaryTable.max_rows`, refuses a longer --max-len; profiles and grid are checked against that
length; a multiple-choice head's --choices sets the choices of every shape the build runs).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engines.tensorrt.profiles import ProfileSet, check_choices, parse_batch, parse_profile_tops
from export.errors import UsageError
from export.folder.layout import Planned
from export.inputs.files import load_toml
from export.onnx_export import MIN_MAX_LEN, check_export_args
from export.passes.pooling.request import PoolingRequest
from export.passes.precision import parse_precision
from export.passes.quantize.options import QuantOptions
from export.report.thresholds import Thresholds
from export.spec import DEFAULT_CHOICES
from export.stages.bench import parse_grid, parse_grid_text
from export.validate import Shape, validation_shapes

MAX_LEN_LIMIT = 65536  # beyond this the table alone is hundreds of MB and validation at max_len takes hours
MAX_BENCH_ITERS = 100_000


@dataclass(frozen=True)
class Flags:
    """Every flag, checked before any work."""

    thresholds: Thresholds
    precision: str
    opset: int
    out: Path
    pooling: PoolingRequest | None = None  # --pooling, --normalize, --outputs, --truncate-dim (resolved by Run.load)
    quant: QuantOptions | None = None  # --precision int8 | fp8

    @classmethod
    def check(cls, args) -> Flags:
        check_max_len(args.max_len)
        opset = check_export_args(args.exporter, args.opset)
        data = load_toml(args.thresholds, what="thresholds file") if args.thresholds else None
        thresholds = Thresholds.from_cli(data, str(args.thresholds), args.atol, args.rtol)
        precision = parse_precision(args.precision)
        pooling = PoolingRequest.check(args.pooling, args.normalize, args.outputs, args.truncate_dim, args.model)
        quant = QuantOptions.check(args, precision)
        parse_batch(args.batch)
        tops = parse_profile_tops(args.profiles)
        if tops and args.max_len and tops[-1] > args.max_len:
            raise UsageError(
                f"--profiles {args.profiles!r}: top {tops[-1]} exceeds --max-len {args.max_len}; lower "
                "it or raise --max-len"
            )
        check_choices(args.choices)
        if args.bench and not 1 <= args.bench_iters <= MAX_BENCH_ITERS:
            raise UsageError(f"--bench-iters must be from 1 to {MAX_BENCH_ITERS}, got {args.bench_iters}")
        if args.bench_grid is not None and not args.bench:
            raise UsageError("--bench-grid applies with --bench; add --bench or drop --bench-grid")
        if args.bench_grid is not None:
            parse_grid_text(args.bench_grid)
        if not 1 <= args.workspace_mib <= 1 << 24:
            raise UsageError(f"--workspace-mib must be from 1 to {1 << 24}, got {args.workspace_mib}")
        if not Path(args.model).exists():
            raise UsageError(
                f"checkpoint {args.model} does not exist; pass --model PATH to a .pt/.safetensors file or HF folder"
            )
        return cls(thresholds, precision, opset, default_out(args), pooling, quant)

    def planned(self, args, engine_available: bool) -> Planned:
        return Planned(args.rope, self.precision, engine_available, bool(args.bench), not args.skip_validation)


@dataclass(frozen=True)
class Plan:
    """The length, profiles, validation shapes and benchmark grid of this build, decided once from the flags and
    the config. `shapes` (validation's, the fallback's and calibration's choices axis) take the engine's choices, so
    what is validated is what the engine is built for."""

    max_len: int
    profiles: ProfileSet
    grid: list[tuple[int, int]] | None
    shapes: list[Shape]

    @classmethod
    def decide(cls, args, facts, task: str, rotary=()) -> Plan:
        max_len = args.max_len or facts.max_positions
        if max_len < MIN_MAX_LEN or max_len > MAX_LEN_LIMIT:
            raise UsageError(
                f"the checkpoint's max_position_embeddings {max_len} is outside {MIN_MAX_LEN}.."
                f"{MAX_LEN_LIMIT}; pass --max-len in that range"
            )
        for r in rotary:  # a sequence-dependent rope type: one constant table is right up to max_rows only
            rows = r.table.max_rows
            if rows is not None and max_len > rows:
                raise UsageError(
                    f"--max-len {max_len}: rope_type {r.table.rope_type!r} (table {r.table.name!r}) recomputes its "
                    f"table from the sequence length above max_position_embeddings {rows}, so no constant table "
                    f"is right there; pass --max-len {rows} or less"
                )
        profiles = ProfileSet.from_cli(args.batch, args.profiles, max_len, engine_choices(args.choices, task))
        grid = parse_grid(args.bench_grid, profiles) if args.bench else None
        return cls(max_len, profiles, grid, validation_shapes(max_len, task, profiles.choices))


def default_out(args) -> Path:
    return Path(args.out) if args.out else Path("build") / Path(args.model).stem


def check_max_len(max_len: int | None) -> None:
    if max_len is None:
        return
    if max_len < MIN_MAX_LEN:
        raise UsageError(
            f"--max-len {max_len} is below {MIN_MAX_LEN}, the shortest length export and validation "
            f"support; pass --max-len {MIN_MAX_LEN} or more (e.g. --max-len 2048)"
        )
    if max_len > MAX_LEN_LIMIT:
        raise UsageError(f"--max-len {max_len} is beyond the supported {MAX_LEN_LIMIT}; pass a smaller --max-len")


def engine_choices(choices: int | None, task: str) -> int | None:
    """Choices the engine profiles fix for a multiple-choice head (default DEFAULT_CHOICES); None for other heads."""
    if task != "multiple-choice":
        if choices is not None:
            raise UsageError(f"--choices applies to multiple-choice checkpoints only; this one is {task}")
        return None
    return DEFAULT_CHOICES if choices is None else choices

"""The quantization flags of export.build (`--precision int8 | fp8` and the `--calib*`, `--quant-*` flags), checked
before any work: `QuantOptions.check(args, precision)` raises UsageError (exit 2) with one line, or returns None
for a build that does not quantize (and refuses quantization flags given to it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from export.errors import UsageError
from export.inputs.numbers import float_arg, int_arg
from export.passes.quantize.calibrate import CalibMethod, check_method
from export.passes.quantize.data import check_size, is_json_lines
from export.passes.quantize.fallback import MODES as FALLBACK_MODES

QUANTIZED = ("int8", "fp8")
HIGH_PRECISIONS = ("fp16", "fp32")
DEFAULT_BUDGET = (
    0.25  # at most a quarter of the quantized MatMuls may stay high: "a few", and still most FLOPs in 8 bits
)
FLAGS = ("calib", "calib_vocab", "calib_size", "calib_method", "quant_high", "quant_fallback", "quant_fallback_budget")


def add_quant_flags(p) -> None:
    p.add_argument(
        "--quant-high",
        choices=HIGH_PRECISIONS,
        help="int8/fp8: precision of what is not quantized (default fp16: export.passes.precision's rules)",
    )
    p.add_argument(
        "--calib",
        help="int8/fp8 calibration data: text, one sample a line (tokenized with --calib-vocab), "
        "or token ids as JSON lines in a .jsonl file (default: a deterministic synthetic set)",
    )
    p.add_argument(
        "--calib-vocab",
        help="tokenizer.json or vocab.txt for --calib text (default: the one beside the checkpoint)",
    )
    p.add_argument("--calib-size", type=int_arg(), help="use the first N samples of --calib (synthetic: 64)")
    p.add_argument("--calib-method", help="max | entropy | percentile (int8); max | percentile (fp8). Default max")
    p.add_argument(
        "--quant-fallback",
        choices=FALLBACK_MODES,
        help="auto (default): keep the MatMuls whose "
        "quantization costs the most in high precision until the graph passes its thresholds; none",
    )
    p.add_argument(
        "--quant-fallback-budget",
        type=float_arg(),
        help="the most MatMuls --quant-fallback auto may keep high, "
        f"as a fraction of the quantized ones (default {DEFAULT_BUDGET})",
    )


@dataclass(frozen=True)
class QuantOptions:
    fmt: str  # int8 | fp8
    high: str
    calib: Path | None
    vocab: Path | None  # for text calibration; None: no vocab (JSON lines only)
    size: int | None
    method: CalibMethod
    fallback: str
    budget: float

    @classmethod
    def check(cls, args, precision: str) -> QuantOptions | None:
        given = [f"--{f.replace('_', '-')}" for f in FLAGS if getattr(args, f, None) is not None]
        if precision not in QUANTIZED:
            if given:
                raise UsageError(f"{given[0]} applies to --precision int8 or fp8; drop it or quantize")
            return None
        if args.rope == "none":
            raise UsageError(
                f"--precision {precision} places Q/DQ around the fused rotary nodes; use --rope plugin "
                "(default) or --rope onnx"
            )
        calib = Path(args.calib) if args.calib else None
        if calib is not None and not calib.is_file():
            raise UsageError(f"--calib {calib} is not a file; pass a text file (one sample a line) or a .jsonl file")
        if calib is not None and calib.suffix.lower() == ".json":  # token ids read as text would calibrate on "[1,"
            raise UsageError(
                f"--calib {calib}: a .json file is neither form; write token ids one sample a line to a .jsonl "
                "file, or text one sample a line to a .txt file"
            )
        if calib is None and args.calib_vocab is not None:
            raise UsageError("--calib-vocab tokenizes a text --calib file; pass --calib FILE too, or drop it")
        vocab = _vocab(args, calib)
        budget = DEFAULT_BUDGET if args.quant_fallback_budget is None else args.quant_fallback_budget
        if not 0.0 <= budget <= 1.0:
            raise UsageError(f"--quant-fallback-budget must be a fraction from 0 to 1, got {budget}")
        return cls(
            precision,
            args.quant_high or "fp16",
            calib,
            vocab,
            check_size(args.calib_size),
            check_method(args.calib_method or "max", precision),
            args.quant_fallback or "auto",
            budget,
        )

    def to_report(self) -> dict:
        return {
            "format": self.fmt,
            "high_precision": self.high,
            **self.method.to_report(),
            "fallback": self.fallback,
            "fallback_budget": self.budget,
        }


def _vocab(args, calib: Path | None) -> Path | None:
    """--calib-vocab, or the tokenizer.json (else vocab.txt) beside the checkpoint; a text --calib without one is
    refused here."""
    if args.calib_vocab is not None:
        vocab = Path(args.calib_vocab)
        if not vocab.is_file():
            raise UsageError(f"--calib-vocab {vocab} is not a file; pass the checkpoint's tokenizer.json or vocab.txt")
        return vocab
    model = Path(args.model)
    folder = model if model.is_dir() else model.parent
    for name in ("tokenizer.json", "vocab.txt"):
        if (folder / name).is_file():
            return folder / name
    if calib is not None and not is_json_lines(calib):
        raise UsageError(
            f"--calib {calib} is text but there is no tokenizer.json or vocab.txt beside the checkpoint "
            f"({folder}); pass --calib-vocab PATH, or give token ids as JSON lines in a .jsonl file"
        )
    return None

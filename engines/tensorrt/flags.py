"""The engine flags `export.build` and `engines.build` share: --batch, --profiles, --choices, --workspace-mib."""

from __future__ import annotations

from export.cli.entry import Parser
from export.inputs.numbers import int_arg


def add_engine_flags(p: Parser) -> None:
    """--batch, --profiles, --choices, --workspace-mib: the engine options export.build and engines.build share."""
    p.add_argument(
        "--batch",
        default="1,8,32",
        help="engine batch range min,opt,max (one number N means 1,N,N; "
        "a Triton model needs min 1: its batcher sends any batch from 1)",
    )
    p.add_argument(
        "--profiles",
        help="sequence bucket tops, one optimization profile each, e.g. 128,512,2048 "
        "(each profile adds a full tactic search to the engine build and one execution context to every "
        "Triton instance). "
        "Default: one profile 1..max-len tuned for 128 tokens (or max-len if shorter); "
        "--profiles <max-len> tunes the single profile for the longest sequence",
    )
    p.add_argument(
        "--choices", type=int_arg(), help="multiple-choice only: number of choices the engine takes (default 2)"
    )
    p.add_argument("--workspace-mib", type=int_arg(), default=4096, help="TensorRT builder workspace limit")

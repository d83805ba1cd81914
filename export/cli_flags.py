"""The flags several commands take, defined once: the same name means the same thing, with the same choices and
default, in every command that has it (tests/export/test_cli_flags.py holds every command to that).

- `--build` (engines.serving, engines.triton, export.diagnose): a folder export.build wrote.
- `--pooling` (engines.serving, engines.triton; export.build takes POOLINGS and DEFAULT_POOLING for its own):
  default `none`, the build as built. Pooling is decided once, by `export.build --pooling`, whose report
  validates `sentence_embedding` against sentence-transformers' rule; a build made that way serves it from
  every model with `none` or its own mode. `mean`/`cls` on a plain build add `sentence_embedding` to the ONNX
  graph alone, an output the build never validated and the TensorRT engine does not have (a Triton repository
  would publish two models of one build with different outputs), so they are asked for, not assumed.
- `--thresholds` (export.build, engines.gate, export.diagnose), `--trust-pickle` (export.build, export.diagnose).
`--debug` and its synonym `--verbose` come with every command's Parser (export.cli).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from export.passes.pooling import POOLINGS

DEFAULT_POOLING = "none"


def add_build(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--build", required=required, type=Path, help="folder written by python -m export.build")


def add_served_pooling(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--pooling",
        choices=POOLINGS,
        default=DEFAULT_POOLING,
        help="none: serve the build's outputs as built (a build made with export.build --pooling serves its "
        "sentence_embedding); mean | cls: add sentence_embedding [batch, hidden] to the ONNX graph of a build "
        "made without --pooling (a pooled build takes only its own mode)",
    )


def add_thresholds(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--thresholds",
        default=None,
        help="thresholds TOML ([precision.graph.output] tables, format in export/report/thresholds.py); "
        "default: each precision's DEFAULTS",
    )


def add_trust_pickle(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow a pickled nn.Module checkpoint (runs code from the file; only for files you trust)",
    )

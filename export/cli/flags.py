"""The flags several commands take, defined once: the same name means the same thing, with the same choices and
default, in every command that has it (tests/export/cli/test_flags.py holds every command to that).

- `--build` (engines.serving, engines.triton, export.diagnose): a folder export.build wrote.
- `--pooling` (engines.serving, engines.triton; export.build's `--pooling` is its own: what the TensorRT-bound graph
  computes, `auto` by default): default none given, meaning the build's own pooling, decided once by
  `export.build --pooling` and validated in its report; a pooled build takes only its own mode or `none`. For a
  build made without one, engines.serving (ONNX Runtime only) adds its model family's default pooling
  (`Family.default_pooling`), and engines.triton adds none: the TensorRT engine cannot gain an output after the
  build, and a twin with one would publish two models of one build with different outputs. `mean`/`cls` ask for
  one explicitly.
- `--thresholds` (export.build, engines.gate, export.diagnose), `--trust-pickle` (export.build, export.diagnose).
`--debug` and its synonym `--verbose` come with every command's Parser (export.cli.entry).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from export.passes.pooling import POOLINGS


def add_build(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--build", required=required, type=Path, help="folder written by python -m export.build")


def add_served_pooling(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--pooling",
        choices=POOLINGS,
        default=None,
        help="sentence_embedding [batch, hidden] of the served ONNX graph. Default: the build's own (export.build "
        "--pooling); for a build without one, engines.serving adds its model family's pooling and engines.triton "
        "none (its TensorRT engine has none). mean | cls: add that one to a build without; none: no pooling "
        "added (a pooled build takes only its own mode or none)",
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

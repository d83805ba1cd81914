#!/usr/bin/env python
"""Thin wrapper: python scripts/bench_engines.py --help (all logic lives in engines/bench.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engines.bench import build_parser, main  # noqa: E402

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())

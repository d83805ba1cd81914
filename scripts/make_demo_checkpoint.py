"""Write the deterministic demo checkpoint (canonical {config, state_dict}) and its vocab.txt.

    python scripts/make_demo_checkpoint.py --out demo            # 12-layer, Chinese-base-like
    python scripts/make_demo_checkpoint.py --out tiny --tiny     # 2-layer model for tests
    python scripts/make_demo_checkpoint.py --out stress --outliers   # the stress twin (synthetic outlier channels)

--outliers writes the same model with a few LayerNorm channels scaled and biased like the outlier dimensions of
trained BERT-family encoders (tests/fixtures/checkpoints.add_outliers says what it emulates and its sources).
It is synthetic: its config carries `roformer_trt_synthetic` saying so.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from export.spec import TASKS  # noqa: E402
from tests.fixtures.checkpoints import write_demo  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scripts/make_demo_checkpoint.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default="demo", help="folder for ckpt.pt and vocab.txt")
    p.add_argument("--tiny", action="store_true", help="2 layers, hidden 32: for tests")
    p.add_argument("--task", default="model", choices=sorted(TASKS), help="task head")
    p.add_argument("--rotary-value", action="store_true", help="rotate value too (RoFormer rotary_value=True)")
    p.add_argument("--outliers", action="store_true", help="the stress twin: outlier LayerNorm channels (synthetic)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    ckpt = write_demo(
        Path(args.out), tiny=args.tiny, task=args.task, outliers=args.outliers, rotary_value=args.rotary_value
    )
    print(ckpt)
    return 0


if __name__ == "__main__":
    sys.exit(main())

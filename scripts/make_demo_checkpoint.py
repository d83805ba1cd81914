"""Write a deterministic demo checkpoint of a supported family, with its tokenizer. RANDOM WEIGHTS: no hub here.

    python scripts/make_demo_checkpoint.py --out demo                  # RoFormer, 12 layers, Chinese-base-like
    python scripts/make_demo_checkpoint.py --out tiny --tiny           # 2-layer RoFormer for tests
    python scripts/make_demo_checkpoint.py --out stress --outliers     # the RoFormer stress twin (synthetic)
    python scripts/make_demo_checkpoint.py --family modernbert --out demo-mb          # shaped like ModernBERT-base
    python scripts/make_demo_checkpoint.py --family modernbert --out tiny-mb --tiny   # 3 layers, window 16
    python scripts/make_demo_checkpoint.py --family gte --out demo-gte          # gte-multilingual-base's shape
    python scripts/make_demo_checkpoint.py --family nomic_bert --out demo-nomic # nomic-embed-text-v1.5's shape
    python scripts/make_demo_checkpoint.py --family eurobert --out demo-euro    # EuroBERT-210m's shape
    python scripts/make_demo_checkpoint.py --family esm --task masked-lm --out demo-esm   # esm2_t33_650M's shape
    python scripts/make_demo_checkpoint.py --family jina_embeddings_v3 --out demo-jina   # with its 5 task adapters

RoFormer: the canonical {config, state_dict} ckpt.pt and a vocab.txt (what engines.client and --calib text read).
Other families: an HF folder (config.json, model.safetensors) with a tokenizer.json built with the `tokenizers`
library (WordPiece over ASCII, words and CJK, the special tokens at the config's ids; tests/fixtures/hf_checkpoints.py),
which engines.client reads through `tokenizers`. ModernBERT's demo: 22 layers, hidden 768, 12 heads, local_attention
128 (every third layer global), theta 160000 global / 10000 local, vocab 50368 (export/families/modernbert.py);
the others' in their family files (export/families/README.md). jina-embeddings-v3's demo is written in the ORIGINAL
checkpoint's layout and config (jinaai/jina-embeddings-v3: model_type xlm-roberta with its auto_map, weights under
roberta. as parametrized weights, five task LoRA adapters of rank 4 with the published names and shapes;
tests/fixtures/jina_original.py), so `export.build --task NAME|all` reads it as it reads the real one.
The weights are random (HF's initialisation under a fixed seed): the model has the real one's shapes, layer types,
rotary tables and windows, and computes nothing meaningful.

--outliers (RoFormer) writes the same model with a few LayerNorm channels scaled and biased like the outlier
dimensions of trained BERT-family encoders (tests/fixtures/checkpoints.add_outliers says what it emulates and its
sources). It is synthetic: its config carries `roformer_trt_synthetic` saying so.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from export.families.registry import by_name, names  # noqa: E402
from export.spec import TASKS  # noqa: E402
from tests.fixtures.checkpoints import write_demo  # noqa: E402
from tests.fixtures.hf_checkpoints import write_hf  # noqa: E402
from tests.fixtures.jina_original import write_original  # noqa: E402

CANONICAL = "roformer"  # the family written as ckpt.pt + vocab.txt (the other families: HF folders)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scripts/make_demo_checkpoint.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--family", default=CANONICAL, choices=names(), help="model family (export/families/)")
    p.add_argument("--out", default="demo", help="output folder")
    p.add_argument("--tiny", action="store_true", help="the family's tiny config: for tests")
    p.add_argument("--task", default="model", choices=sorted(TASKS), help="task head (the family's heads)")
    p.add_argument("--rotary-value", action="store_true", help="RoFormer: rotate value too (rotary_value=True)")
    p.add_argument("--outliers", action="store_true", help="RoFormer: outlier LayerNorm channels (synthetic)")
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.family == CANONICAL:
        path = write_demo(
            Path(args.out), tiny=args.tiny, task=args.task, outliers=args.outliers, rotary_value=args.rotary_value
        )
    else:
        if args.rotary_value or args.outliers:
            p.error(f"--rotary-value and --outliers apply to --family {CANONICAL}")
        if Path(args.out).exists() and any(Path(args.out).iterdir()):
            p.error(f"--out {args.out} is not empty; pass a new folder (nothing there is overwritten)")
        if by_name(args.family).adopts is not None:  # a family whose real checkpoints are another code's layout
            if args.task != "model":
                p.error(f"--family {args.family} is written as its original checkpoint: the base model (--task model)")
            path, _, _ = write_original(Path(args.out), tiny=args.tiny)
        else:
            path, _ = write_hf(Path(args.out), args.family, args.task, tiny=args.tiny)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Cross-check of the pooling rules against sentence-transformers itself (not a dependency of roformer-trt).

For a set of tiny sentence-transformers folders (tests/fixtures/st_folder.py: every Pooling mode, legacy flags
and mode lists, Dense layers with each activation, with and without bias, .safetensors and .bin weights,
Normalize, a default truncate_dim), on random hidden states with right padding (batch 3, one row of padding
only), it compares in float64:
- sentence-transformers' own modules, loaded from the folder by its loaders (Pooling.load, Dense.load,
  Normalize), run as SentenceTransformer.encode runs them (modules, truncate_embeddings, normalize_embeddings);
- our reading of the folder (export.checkpoint.sentence_transformers.read_pipeline) and its rule
  (Pooling.reference, i.e. export.reference.sentence_embedding_ref);
- the tests' numpy restatement (tests/export/passes/st_rules.py).
Writes st_crosscheck.{json,md} to --out (default build/scripts/st_crosscheck/; --update-results:
scripts/results/st_crosscheck/); exit 1 when any difference exceeds 1e-12, 3 without sentence-transformers.

Run it with an interpreter that has sentence-transformers and this repository's packages, e.g. a separate
virtual environment (`python -m venv /tmp/st && /tmp/st/bin/pip install sentence-transformers==6.3.0`, plus a
.pth file naming this repository's venv site-packages) : /tmp/st/bin/python scripts/st_crosscheck.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from script_outputs import add_output_flags  # noqa: E402

from export.checkpoint.sentence_transformers import read_pipeline  # noqa: E402
from tests.export.passes import st_rules  # noqa: E402
from tests.fixtures.st_folder import TANH, write_st_folder  # noqa: E402

HIDDEN = 8
ACT = "torch.nn.modules.{}"
CASES: dict[str, dict] = {
    "mean (legacy flag)": {"pooling": {"word_embedding_dimension": HIDDEN, "pooling_mode_mean_tokens": True}},
    "no flag set: mean": {"pooling": {"word_embedding_dimension": HIDDEN}},
    "cls": {"pooling": {"embedding_dimension": HIDDEN, "pooling_mode": "cls"}},
    "max": {"pooling": {"pooling_mode": "max"}},
    "mean_sqrt_len_tokens": {"pooling": {"pooling_mode": "mean_sqrt_len_tokens"}},
    "weightedmean": {"pooling": {"pooling_mode": "weightedmean"}},
    "lasttoken": {"pooling": {"pooling_mode": "lasttoken"}},
    "legacy cls+mean+lasttoken": {
        "pooling": {"pooling_mode_lasttoken": True, "pooling_mode_cls_token": True, "pooling_mode_mean_tokens": True}
    },
    "list [lasttoken, mean]": {"pooling": {"pooling_mode": ["lasttoken", "mean"]}},
    "mean, Dense tanh (default), Normalize": {"pooling": {"pooling_mode": "mean"}, "denses": ({"out": 6},)},
    "weightedmean, Dense identity no bias .bin": {
        "pooling": {"pooling_mode": "weightedmean"},
        "denses": ({"out": 5, "bias": False, "activation": ACT.format("linear.Identity"), "bin": True},),
    },
    "cls, Dense gelu -> Dense relu": {
        "pooling": {"pooling_mode": "cls"},
        "denses": (
            {"out": 12, "activation": ACT.format("activation.GELU")},
            {"out": 6, "activation": ACT.format("activation.ReLU")},
        ),
    },
    "lasttoken, Dense sigmoid, Dense silu": {
        "pooling": {"pooling_mode": "lasttoken"},
        "denses": (
            {"out": 7, "activation": ACT.format("activation.Sigmoid")},
            {"out": 9, "activation": ACT.format("activation.SiLU")},
        ),
    },
    "mean, Normalize, truncate_dim 4": {"pooling": {"pooling_mode": "mean"}, "st_config": {"truncate_dim": 4}},
    "mean, Dense, no Normalize, truncate_dim 3": {
        "pooling": {"pooling_mode": "mean"},
        "denses": ({"out": 6, "activation": TANH},),
        "normalize": False,
        "st_config": {"truncate_dim": 3},
    },
}


def inputs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    h = rng.normal(size=(3, 7, HIDDEN))
    mask = np.ones((3, 7), np.int64)
    mask[1, 4:] = 0  # right padding
    mask[2, 2:] = 0
    return h, mask


def library(folder: Path, h: np.ndarray, mask: np.ndarray, spec: dict) -> np.ndarray:
    """sentence-transformers' modules from the folder, in float64, as SentenceTransformer.encode runs them."""
    from sentence_transformers.base.modules import Dense, Normalize
    from sentence_transformers.sentence_transformer.modules import Pooling
    from sentence_transformers.util import truncate_embeddings

    modules = [Pooling.load(str(folder), subfolder="1_Pooling")]
    modules += [
        Dense.load(str(folder), subfolder=f"{k + 2}_Dense").double() for k in range(len(spec.get("denses", ())))
    ]
    modules += [Normalize()] if spec.get("normalize", True) else []
    features = {"token_embeddings": torch.from_numpy(h), "attention_mask": torch.from_numpy(mask)}
    with torch.no_grad():
        for m in modules:
            features = m(features)
        e = features["sentence_embedding"]
        truncate = (spec.get("st_config") or {}).get("truncate_dim")
        if truncate is not None:  # encode: truncate, then normalize_embeddings (our pipeline: unit vectors)
            e = truncate_embeddings(e, truncate)
            if spec.get("normalize", True):
                e = torch.nn.functional.normalize(e, p=2, dim=1)
    return e.numpy()


def run_case(name: str, spec: dict, tmp: Path) -> dict:
    folder = tmp / name.replace(" ", "_").replace(",", "").replace(">", "").replace("[", "").replace("]", "")
    pooling = spec["pooling"] | (
        {} if "embedding_dimension" in spec["pooling"] else {"word_embedding_dimension": HIDDEN}
    )
    st = write_st_folder(
        folder, HIDDEN, pooling, spec.get("denses", ()), spec.get("normalize", True), st_config=spec.get("st_config")
    )
    h, mask = inputs()
    want = library(folder, h, mask, spec)
    ours = read_pipeline(folder, HIDDEN).pooling.reference(h, mask)
    truncate = (spec.get("st_config") or {}).get("truncate_dim")
    normalize = spec.get("normalize", True)
    rules = st_rules.encode(
        h,
        mask,
        st_rules.legacy_modes(spec["pooling"]),
        tuple(st.denses),
        normalize_module=normalize,
        truncate_dim=truncate,
        normalize_embeddings=normalize and truncate is not None,
    )
    return {
        "case": name,
        "shape": list(want.shape),
        "ours_vs_library_max_abs": float(np.abs(ours - want).max()),
        "st_rules_vs_library_max_abs": float(np.abs(rules - want).max()),
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scripts/st_crosscheck.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_output_flags(p, "st_crosscheck", "st_crosscheck", work=True)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        import sentence_transformers
    except ImportError:
        print("unavailable: sentence-transformers is not installed here; run this with the interpreter of a venv "
              "that has it (see --help)", file=sys.stderr)  # fmt: skip
        return 3

    Path(args.work).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:  # the tiny sentence-transformers folders
        rows = [run_case(name, spec, Path(tmp)) for name, spec in CASES.items()]
    worst = max(max(r["ours_vs_library_max_abs"], r["st_rules_vs_library_max_abs"]) for r in rows)
    result = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()}-core {platform.machine()} {platform.system()}",
        "sentence_transformers": sentence_transformers.__version__,
        "torch": torch.__version__,
        "dtype": "float64",
        "rows": rows,
        "worst_max_abs": worst,
        "passed": worst <= 1e-12,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "st_crosscheck.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# Pooling rules vs sentence-transformers {result['sentence_transformers']}",
        "",
        f"{result['date']}, {result['machine']}, torch {result['torch']}, float64, batch 3 x 7 tokens, "
        f"hidden {HIDDEN}, "
        "right padding (rows of 7, 4 and 2 real tokens). Columns: max abs difference from sentence-transformers' "
        "own modules loaded from the same folder.",
        "",
        "| case | output | ours (read_pipeline + Pooling.reference) | tests' st_rules |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['case']} | {r['shape']} | {r['ours_vs_library_max_abs']:.2e} | {r['st_rules_vs_library_max_abs']:.2e} |"
        for r in rows
    ]
    lines += ["", f"Worst: {worst:.2e} ({'pass' if result['passed'] else 'FAIL'}: bound 1e-12)."]
    (out / "st_crosscheck.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())

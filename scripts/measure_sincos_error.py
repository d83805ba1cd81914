"""Measure the two sin/cos error figures the RoformerRotary contract cites (plugins/roformer_rotary/README.md).

For every position p < --max-pos and pair j of a head of size Dh (R = Dh), against float64 sin/cos(p * theta_j):
  (a) fp32 angles, as an in-kernel computation would form them: theta_j rounded to fp32, then the fp32 product
      float32(p) * theta32_j, whose sin/cos are then taken exactly (float64 of the rounded angle, i.e. the best
      any sinf/cosf could do with that angle). Also reported: numpy's own float32 sin/cos of that angle.
  (b) the contract's table: float64 sin/cos rounded once to fp32 (export.reference.sincos_table).
Prints the max absolute errors and the worst position; --json writes them to a file. numpy only, no GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout: the project's packages

from export.inputs.numbers import int_arg  # noqa: E402
from export.reference import DEFAULT_BASE, rotary_angles, sincos_table  # noqa: E402


def measure(head_dim: int, max_pos: int, base: float = DEFAULT_BASE) -> dict:
    r = head_dim
    ang64 = rotary_angles(max_pos, r, base)  # [P, R/2] float64: p / base**(2j/R)
    exact = np.concatenate([np.sin(ang64), np.cos(ang64)], axis=1)  # [P, R] float64

    # (a) fp32 angle: theta_j in fp32, p * theta_j in fp32 (one rounding of the product, as a kernel would do).
    j = np.arange(r // 2, dtype=np.float64)
    theta32 = (1.0 / np.power(base, 2.0 * j / r)).astype(np.float32)  # [R/2]
    pos32 = np.arange(max_pos, dtype=np.float32)[:, None]  # [P, 1]
    ang32 = pos32 * theta32[None, :]  # [P, R/2] float32 product
    a64 = ang32.astype(np.float64)
    from_fp32_angle = np.concatenate([np.sin(a64), np.cos(a64)], axis=1)  # exact sin/cos of the rounded angle
    fp32_libm = np.concatenate([np.sin(ang32), np.cos(ang32)], axis=1).astype(np.float64)  # numpy float32 sin/cos

    # (b) the table of the contract: float64, rounded once to fp32.
    table = sincos_table(max_pos, r, base).astype(np.float64)

    def worst(err: np.ndarray) -> dict:
        idx = np.unravel_index(int(np.argmax(err)), err.shape)
        p, c = int(idx[0]), int(idx[1])
        return {
            "max_abs_err": float(err[idx]),
            "position": p,
            "pair": c % (r // 2),
            "which": "sin" if c < r // 2 else "cos",
        }

    return {
        "head_dim": head_dim,
        "max_pos": max_pos,
        "base": base,
        "fp32_angle": worst(np.abs(from_fp32_angle - exact)),
        "fp32_angle_fp32_sincos": worst(np.abs(fp32_libm - exact)),
        "fp32_table": worst(np.abs(table - exact)),
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scripts/measure_sincos_error.py",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="example: python scripts/measure_sincos_error.py --head-dims 64 128",
    )
    p.add_argument("--head-dims", type=int_arg(), nargs="+", default=[64, 128], help="head sizes Dh (R = Dh)")
    p.add_argument("--max-pos", type=int_arg(), default=8192, help="positions 0 .. max-pos-1")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    results = [measure(dh, args.max_pos) for dh in args.head_dims]
    for r in results:
        a, f, t = r["fp32_angle"], r["fp32_angle_fp32_sincos"], r["fp32_table"]
        print(f"Dh={r['head_dim']} positions < {r['max_pos']}:")
        print(
            f"  sin/cos of fp32 angles p*theta_j   max|err| {a['max_abs_err']:.3e}  "
            f"(worst p={a['position']} j={a['pair']} {a['which']})"
        )
        print(
            f"    same, with float32 np.sin/np.cos  max|err| {f['max_abs_err']:.3e}  "
            f"(worst p={f['position']} j={f['pair']} {f['which']})"
        )
        print(
            f"  float64 table rounded to fp32      max|err| {t['max_abs_err']:.3e}  "
            f"(worst p={t['position']} j={t['pair']} {t['which']})"
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

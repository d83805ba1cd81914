"""An engine's sidecar (`<name>.plan.json`): what a plan was built from, and whether it can be reused.

{"tensorrt_version", "gpu": {"name", "compute_capability"}, "precision", "profiles", "onnx_sha256",
 "plugin_sha256", ...informative fields}. A plan is reused only when every MATCH_KEYS field equals what a
build now would record; otherwise it is rebuilt and the mismatches are returned. `load_sidecar` is the one
reader of the file, for the reuse rule and for engines.triton alike. Plain Python, no TensorRT.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from export.errors import UsageError
from export.inputs.files import MiB, load_json

MATCH_KEYS = ("tensorrt_version", "gpu", "precision", "profiles", "onnx_sha256", "plugin_sha256")


def sidecar_path(plan: str | Path) -> Path:
    return Path(str(plan) + ".json")


def make_sidecar(
    *,
    tensorrt_version: str,
    gpu_name: str,
    compute_capability: str,
    precision: str,
    profiles: list[dict],
    onnx_sha256: str,
    plugin_sha256: str | None,
    **extra,
) -> dict:
    """The sidecar dict; MATCH_KEYS decide reuse, the rest (build time, layer counts) is informative."""
    return {
        "tensorrt_version": tensorrt_version,
        "gpu": {"name": gpu_name, "compute_capability": compute_capability},
        "precision": precision,
        "profiles": profiles,
        "onnx_sha256": onnx_sha256,
        "plugin_sha256": plugin_sha256,
        **extra,
    }


def sidecar_mismatches(existing: Mapping, expected: Mapping) -> list[str]:
    """Human-readable reasons why a plan with sidecar `existing` cannot be reused; [] means reuse is safe."""
    out = []
    for k in MATCH_KEYS:
        a, b = existing.get(k), expected.get(k)
        # profiles are compared through JSON so tuples and lists compare equal
        if json.dumps(a, sort_keys=True) != json.dumps(b, sort_keys=True):
            out.append(f"{k}: plan has {a!r}, expected {b!r}")
    return out


def load_sidecar(path: str | Path) -> dict:
    """The sidecar JSON object at `path` (a `<name>.plan.json`), read through export.inputs.files (size cap, depth).

    UsageError, naming the file, when it is missing, unreadable, not JSON or not a JSON object: every caller
    either stops with it (engines.triton) or turns it into a reason to rebuild (reuse_decision)."""
    data = load_json(path, what="engine sidecar", max_bytes=MiB)
    if not isinstance(data, dict):
        raise UsageError(
            f"engine sidecar {path} is not a JSON object; rebuild the engine (python -m engines.build "
            "or python -m export.build)"
        )
    return data


def reuse_decision(plan: str | Path, expected: Mapping) -> tuple[bool, list[str]]:
    """(True, []) when `plan` exists and its sidecar matches `expected` on MATCH_KEYS, else (False, reasons)."""
    if not Path(plan).exists():
        return False, ["no plan yet"]
    if not sidecar_path(plan).exists():
        return False, ["no sidecar next to the plan"]
    try:
        existing = load_sidecar(sidecar_path(plan))
    except UsageError as e:  # an unreadable sidecar is a reason to rebuild, given like the others
        return False, [str(e)]
    reasons = sidecar_mismatches(existing, expected)
    return not reasons, reasons

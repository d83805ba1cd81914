"""An engine's sidecar (`<name>.plan.json`): what a plan was built from, and whether it can be reused.

{"tensorrt_version", "gpu": {"name", "compute_capability"}, "precision", "profiles", "onnx_sha256",
 "plugin_sha256", ...informative fields}. A plan is reused only when every MATCH_KEYS field equals what a
build now would record; otherwise it is rebuilt and the mismatches are returned. Plain Python, no TensorRT.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Mapping

from export.digest import sha256_file
from export.errors import UsageError
from export.files import MiB, load_json
from export.onnx_io import external_data_files

log = logging.getLogger(__name__)

MATCH_KEYS = ("tensorrt_version", "gpu", "precision", "profiles", "onnx_sha256", "plugin_sha256")


def onnx_sha256(path: str | Path) -> str:
    """sha256 of the ONNX file plus every external-data file it references (a rewritten or fp16 graph
    reads most of its weights from model.onnx.data): new weights mean a new hash, so no stale plan is reused."""
    h = hashlib.sha256(sha256_file(path).encode())
    for extra in external_data_files(path):
        h.update(sha256_file(Path(path).parent / extra).encode())
    return h.hexdigest()


def sidecar_path(plan: str | Path) -> Path:
    return Path(str(plan) + ".json")


def make_sidecar(*, tensorrt_version: str, gpu_name: str, compute_capability: str, precision: str,
                 profiles: list[dict], onnx_sha256: str, plugin_sha256: str | None, **extra) -> dict:
    """The sidecar dict; MATCH_KEYS decide reuse, the rest (build time, layer counts) is informative."""
    return {"tensorrt_version": tensorrt_version, "gpu": {"name": gpu_name, "compute_capability": compute_capability},
            "precision": precision, "profiles": profiles, "onnx_sha256": onnx_sha256,
            "plugin_sha256": plugin_sha256, **extra}


def sidecar_mismatches(existing: Mapping | None, expected: Mapping) -> list[str]:
    """Human-readable reasons why a plan cannot be reused; [] means reuse is safe."""
    if existing is None:
        return ["no sidecar next to the plan"]
    out = []
    for k in MATCH_KEYS:
        a, b = existing.get(k), expected.get(k)
        # profiles are compared through JSON so tuples and lists compare equal
        if json.dumps(a, sort_keys=True) != json.dumps(b, sort_keys=True):
            out.append(f"{k}: plan has {a!r}, expected {b!r}")
    return out


def read_sidecar(plan: str | Path) -> dict | None:
    p = sidecar_path(plan)
    if not p.exists():
        return None
    try:
        side = load_json(p, what="engine sidecar", max_bytes=MiB)
    except UsageError as e:  # an unreadable sidecar means "do not reuse"; logged here
        log.warning("%s; the engine will be rebuilt", e)
        return None
    return side if isinstance(side, dict) else None


def reuse_decision(plan: str | Path, expected: Mapping) -> tuple[bool, list[str]]:
    """(True, []) when `plan` exists and its sidecar matches `expected` on MATCH_KEYS."""
    if not Path(plan).exists():
        return False, ["no plan yet"]
    reasons = sidecar_mismatches(read_sidecar(plan), expected)
    return not reasons, reasons


"""Tiny graphs after the rotary pass, and their calibration, shared by the quantization tests."""

from __future__ import annotations

import shutil
from pathlib import Path

from export.passes.quantize import calibrate, plan
from export.passes.quantize.calibrate import CalibMethod
from export.passes.quantize.data import synthetic_set
from export.stages.rope import rewrite_file

MAX_LEN = 96  # the `exported` fixture's default table length


_MADE: dict[tuple, Path] = {}


def rope_graph(exported, tmp_path_factory, mode: str = "plugin") -> tuple[Path, object, object]:
    """(the rotary-rewritten tiny graph, its torch model, config): dynamo, opset 18, made once per mode in a folder
    of its own (the session's `exported` folder is shared with tests that list what it holds)."""
    path, model, config = exported("dynamo", 18)
    if (path, mode) not in _MADE:
        folder = tmp_path_factory.mktemp(f"quant-{mode}")
        for f in ("model.onnx", "model.onnx.data"):
            shutil.copyfile(path.with_name(f), folder / f)
        rewrite_file(folder / "model.onnx", folder / f"model.rope-{mode}.onnx", mode, config, MAX_LEN, "model")
        _MADE[(path, mode)] = folder / f"model.rope-{mode}.onnx"
    return _MADE[(path, mode)], model, config


def calibrated(src: Path, config, fmt: str = "int8", method: str = "max", plugin: bool = True, size: int = 16):
    placement = plan(src)
    calib = synthetic_set(config.vocab_size, config.type_vocab_size, MAX_LEN, size)
    amax = calibrate(src, placement, calib, CalibMethod(method), rotary_function=plugin)
    return placement, amax, calib

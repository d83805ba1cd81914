"""Run NVIDIA ModelOpt's ONNX PTQ in ModelOpt's own environment (never the project's: it pins onnx 1.21 and
onnxruntime-gpu 1.24): the peer scripts/bench_quant.py compares with.

    .venv-modelopt/bin/python scripts/modelopt_quantize.py \
        --onnx build/scripts/bench_quant/work/demo/rope-onnx/model.rope-onnx.onnx \
        --calib build/scripts/bench_quant/work/demo/calib.npz --mode int8 --out build/modelopt-int8.onnx

--calib: the calibration batches bench_quant.py wrote (keys `b<i>/<input>`), the very feeds our calibration ran,
served through a CalibrationDataReader. ModelOpt's defaults otherwise (entropy for int8, max for fp8; fp16 high
precision; calibration on the CPU execution provider). Prints one JSON line: the output path, seconds, versions.
This file imports nothing from the project.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def batches(path: str) -> list[dict[str, np.ndarray]]:
    data = np.load(path)
    out: dict[int, dict[str, np.ndarray]] = {}
    for key in data.files:
        i, name = key.split("/", 1)
        out.setdefault(int(i[1:]), {})[name] = data[key]
    return [out[i] for i in sorted(out)]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scripts/modelopt_quantize.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--onnx", required=True, help="the --rope onnx fp32 graph to quantize")
    p.add_argument("--calib", required=True, help="calibration batches (.npz written by scripts/bench_quant.py)")
    p.add_argument("--mode", choices=["int8", "fp8"], required=True, help="quantization format")
    p.add_argument("--out", required=True, help="the quantized graph to write")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    import modelopt
    from modelopt.onnx.quantization import quantize
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.feeds = batches(args.calib)
            self.i = 0

        def get_next(self):
            if self.i >= len(self.feeds):
                return None
            self.i += 1
            return self.feeds[self.i - 1]

        def rewind(self):
            self.i = 0

        def get_first(self):  # ModelOpt's readers have it (calib_utils.CalibrationDataProvider)
            return self.feeds[0]

    t0 = time.perf_counter()
    quantize(
        args.onnx,
        quantize_mode=args.mode,
        calibration_data_reader=Reader(),
        calibration_eps=["cpu"],
        use_external_data_format=True,
        output_path=args.out,
        log_level="WARNING",
    )
    print(
        json.dumps({"out": args.out, "seconds": round(time.perf_counter() - t0, 1), "modelopt": modelopt.__version__})
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

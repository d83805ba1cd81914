"""roformer-trt engines: TensorRT build and run, Triton, serving, the gate, benchmarks."""

import export  # noqa: F401  (a `python -m engines...` command answers Ctrl-C while importing in one line)

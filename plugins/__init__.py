"""roformer-trt plugins: the C++/CUDA rotary plugin, its build and its identity."""

import export  # noqa: F401  (a `python -m plugins...` command answers Ctrl-C while importing in one line)

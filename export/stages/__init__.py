"""The stages `export.build` runs in order, one file each: rope (rotary pass), precision (mixed-precision
graph), engine (TensorRT build and validation, skipped where TensorRT is absent), bench (--bench).

These and `export/build.py` are the only modules of `export` that may import `engines`: they drive it.
"""

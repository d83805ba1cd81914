"""Serving a roformer-trt build on Triton.

- `engines.triton` (CLI) turns `build/<name>/` into a Triton model repository (TensorRT model when the
  build has engines, ONNX Runtime twin always).
- `export.passes.pooling` (an export pass) adds the `sentence_embedding` output to an ONNX graph.
- `engines.serving.ort_model` runs that graph with ONNX Runtime and validates requests.
- `engines.serving.server` (`python -m engines.serving`) serves it live through NVIDIA PyTriton.
- `engines.client` goes from raw text to embeddings against either server.

Nothing here imports tensorrt, pytriton or tritonclient at import time.
"""

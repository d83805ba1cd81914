"""Serving a roformer-trt build on Triton.

- `engines.triton` (CLI) turns `build/<name>/` into a Triton model repository (TensorRT model when the
  build has engines, ONNX Runtime twin always).
- `export.passes.pooling` (an export pass) adds the `sentence_embedding` output to an ONNX graph.
- `engines.serving.ort_model` runs that graph with ONNX Runtime and validates requests.
- `engines.serving.server` (`python -m engines.serving`) serves it live: our Python-backend model repository
  (`python_repository`, `backend_model`), the tritonserver that nvidia-pytriton ships (`tritonserver`) on
  Unix sockets in a private folder (`sockets`) and in namespaces of its own (`sandbox`), and our HTTP and
  gRPC fronts (`http_front`, `http_judge`, `grpc_front`, `request_limits`, `request_parameters`) on the
  public ports. What a remote client and a local user can reach: README.md beside this file.
- `engines.client` goes from raw text to embeddings against either server.

Nothing here imports tensorrt or pytriton (its tritonserver is run, not imported); grpc and
tritonclient.grpc (the dev and serving extras) are imported when present and required only to serve.
"""

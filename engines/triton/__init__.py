"""Triton model repositories for a roformer-trt build: `config` (config.pbtxt built and checked with
Triton's own protobuf), `repository` (the model folders), `python -m engines.triton` (the CLI)."""

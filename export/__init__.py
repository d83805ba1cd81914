"""roformer-trt export stage: checkpoint -> ONNX -> rotary pass -> validated graphs."""

__version__ = "0.1.0"

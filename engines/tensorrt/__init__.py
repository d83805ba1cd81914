"""TensorRT build and run: the only package of roformer-trt whose code calls TensorRT.

- `availability`: can the engine stage run here (TensorRT, a CUDA GPU)?
- `profiles`, `flags`: optimization profiles from --batch/--profiles/--max-len, and the shared flags.
- `graph`: what a build reads from the ONNX file's structure (input axes, plugin nodes, table rows).
- `sidecar`: `<name>.plan.json` and the plan-reuse rule.
- `plugin_library`, `builder`, `runner`: load our plugin, build a plan, run it.
- `validate`: engine vs PyTorch at every profile's shapes, as report cases.

`import tensorrt` happens only inside functions, so everything else runs and is tested on a CPU.
"""

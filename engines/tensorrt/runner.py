"""Run a TensorRT plan on CUDA: numpy feeds in, numpy outputs out.

In:  `<name>.plan` (from engines.build), the plugin library it was built with, numpy int64 feeds.
Out: {output name: numpy array}. The optimization profile is picked per call from the engine's own
     profile shapes (`pick_profile`, plain Python); buffers are torch CUDA tensors; one CUDA stream.
TensorRT API used (10.x and 11.x): Runtime.deserialize_cuda_engine, num_io_tensors/get_tensor_name,
get_tensor_mode, get_tensor_dtype, get_tensor_profile_shape, set_optimization_profile_async,
set_input_shape, get_tensor_shape, set_tensor_address, execute_async_v3.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from engines.tensorrt.plugin_library import load_plugins
from export.errors import UsageError

if TYPE_CHECKING:  # imported when a runner is made: this module loads on CPU hosts without the cost of torch
    import torch


def pick_profile(profile_shapes: Sequence[Mapping[str, tuple]], shapes: Mapping[str, tuple]) -> int:
    """First profile whose [min, max] contains every input shape.

    profile_shapes: per profile {input name: (min shape, opt shape, max shape)}; shapes: {input name: shape}.
    UsageError naming the ranges when no profile fits.
    """
    for i, prof in enumerate(profile_shapes):
        fits = True
        for name, shape in shapes.items():
            mn, _, mx = prof[name]
            if len(shape) != len(mn) or any(not lo <= s <= hi for s, lo, hi in zip(shape, mn, mx, strict=True)):
                fits = False
                break
        if fits:
            return i
    ranges = "; ".join(
        f"profile {i}: " + ", ".join(f"{n} {p[n][0]}..{p[n][2]}" for n in shapes) for i, p in enumerate(profile_shapes)
    )
    raise UsageError(f"no optimization profile accepts shapes {dict(shapes)} ({ranges})")


class EngineRunner:
    """A deserialized engine + one execution context + one CUDA stream.

    runner = EngineRunner("out/model.fp16.plan", plugin_lib="plugins/build/libroformer_trt_plugin.so")
    outputs = runner(feeds)  # one array per input the engine declares: input_ids, attention_mask[, token_type_ids]
    """

    def __init__(self, plan: str | Path, plugin_lib: str | Path | None = None, device: int = 0):
        import tensorrt as trt
        import torch

        self.trt, self.torch = trt, torch
        self.device = torch.device("cuda", device)
        self.logger = trt.Logger(trt.Logger.WARNING)
        if plugin_lib:
            load_plugins(trt, plugin_lib)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(Path(plan).read_bytes())
        if self.engine is None:
            raise UsageError(
                f"TensorRT could not deserialize {plan}; rebuild it for TensorRT {trt.__version__} on this GPU"
            )
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream(device=self.device)
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.profile_shapes = [
            {n: tuple(tuple(s) for s in self.engine.get_tensor_profile_shape(n, p)) for n in self.inputs}
            for p in range(self.engine.num_optimization_profiles)
        ]
        self.active_profile: int | None = None

    def torch_dtype(self, name: str):
        trt, torch = self.trt, self.torch
        table = {
            trt.float32: torch.float32,
            trt.float16: torch.float16,
            trt.bfloat16: torch.bfloat16,
            trt.int64: torch.int64,
            trt.int32: torch.int32,
            trt.int8: torch.int8,
            trt.bool: torch.bool,
        }
        return table[self.engine.get_tensor_dtype(name)]

    def _set_address(self, name: str, address: int) -> None:
        if not self.context.set_tensor_address(name, address):
            raise RuntimeError(f"set_tensor_address failed for {name}; see the TensorRT log")

    def run_torch(self, feeds: Mapping[str, torch.Tensor | np.ndarray]) -> dict[str, torch.Tensor]:
        """feeds: torch CUDA tensors (or numpy) -> torch CUDA outputs; no host sync (benchmarks use this)."""
        torch = self.torch
        shapes = {n: tuple(feeds[n].shape) for n in self.inputs}
        profile = pick_profile(self.profile_shapes, shapes)
        if profile != self.active_profile:
            if not self.context.set_optimization_profile_async(profile, self.stream.cuda_stream):
                raise RuntimeError(f"set_optimization_profile_async({profile}) failed; see the TensorRT log")
            self.active_profile = profile
        keep = {}
        for n in self.inputs:
            t = feeds[n]
            t = torch.as_tensor(t).to(self.device, self.torch_dtype(n)).contiguous()
            keep[n] = t
            if not self.context.set_input_shape(n, shapes[n]):
                raise UsageError(
                    f"TensorRT refused shape {shapes[n]} for input {n} (profile {profile}: "
                    f"{self.profile_shapes[profile][n][0]}..{self.profile_shapes[profile][n][2]})"
                )
            self._set_address(n, t.data_ptr())
        outs = {}
        for n in self.outputs:
            shape = tuple(self.context.get_tensor_shape(n))
            outs[n] = torch.empty(shape, dtype=self.torch_dtype(n), device=self.device)
            self._set_address(n, outs[n].data_ptr())
        self.stream.wait_stream(torch.cuda.current_stream(self.device))  # inputs copied on the default stream
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError(f"execute_async_v3 failed for shapes {shapes}; see the TensorRT log")
        torch.cuda.current_stream(self.device).wait_stream(self.stream)
        for t in keep.values():  # keep inputs alive until the engine is done with them
            t.record_stream(self.stream)
        return outs

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self.run_torch(feeds)
        self.torch.cuda.synchronize(self.device)
        return {n: t.float().cpu().numpy() for n, t in outs.items()}

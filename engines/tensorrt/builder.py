"""Build TensorRT engines from a (mixed-precision, rotary-rewritten) ONNX file.

In:  ONNX path, plugin library path (libroformer_trt_plugin.so), ProfileSet, precision, workspace limit.
Out: `<out_dir>/<name>.plan` (atomic write) and `<name>.plan.json`, the sidecar:
     {"tensorrt_version", "gpu": {"name", "compute_capability"}, "precision", "profiles",
      "onnx_sha256", "plugin_sha256", "build_seconds", "plugin_layers", "built_at"}.
An existing plan is reused only when every field in MATCH_KEYS equals the expected value;
otherwise it is rebuilt and the mismatches are logged (and returned).

The TensorRT calls live here and in plugin_library/runner; `import tensorrt` happens inside
`build_engine`. Sidecars (engines.tensorrt.sidecar), the stage's availability and the graph facts are
plain Python, tested on a CPU.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import onnx
from rich.progress import Progress

from engines.tensorrt.availability import gpu_identity, trt_major
from engines.tensorrt.graph import count_plugin_nodes
from engines.tensorrt.graph import input_axes as read_axes
from engines.tensorrt.plugin_library import load_plugins
from engines.tensorrt.sidecar import load_sidecar, make_sidecar, reuse_decision, sidecar_path
from export.errors import UsageError, VerificationError
from export.folder.atomic import write_atomic
from export.folder.digest import onnx_sha256, sha256_file
from plugins.identity import PLUGIN_OP

log = logging.getLogger(__name__)


def _created(obj, what: str):
    """`obj`, or VerificationError: TensorRT's builder calls answer failure with None (a null pointer), never raise."""
    if obj is None:
        raise VerificationError(f"TensorRT could not {what}; see the TensorRT log above")
    return obj


def _network_flags(trt) -> int:
    """Strongly typed on 10.x by name; 11.x is always strongly typed and its bit 1 means something else."""
    if trt_major(trt.__version__) == 10:
        return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return 0


def _parser_errors(parser) -> list[str]:
    errs = []
    for i in range(parser.num_errors):
        e = parser.get_error(i)
        where = f"node {e.node()} ({e.node_name()}, op {e.node_operator()})" if e.node() >= 0 else "model"
        errs.append(f"{where}: {e.desc()} [{e.code()}]")
    return errs


def _io_entry(tensor) -> dict:
    """{"name", "dtype" ("DataType.HALF"), "shape"} of a network input/output, for the sidecar (Triton reads it)."""
    return {"name": tensor.name, "dtype": str(tensor.dtype), "shape": list(tensor.shape)}


def _progress_monitor(trt: Any):
    """A trt.IProgressMonitor that drives a rich progress bar on stderr. trt: the tensorrt module (no stubs)."""

    class RichMonitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self.progress = Progress(transient=True)
            self.tasks = {}
            self.progress.start()

        def phase_start(self, phase_name, parent_phase, num_steps):
            self.tasks[phase_name] = self.progress.add_task(phase_name, total=num_steps)

        def step_complete(self, phase_name, step):
            if phase_name in self.tasks:
                self.progress.update(self.tasks[phase_name], completed=step + 1)
            return True  # False would cancel the build

        def phase_finish(self, phase_name):
            task = self.tasks.pop(phase_name, None)
            if task is not None:
                self.progress.remove_task(task)

        def close(self):
            self.progress.stop()

    return RichMonitor()


def _expected_sidecar(trt, onnx_path: Path, plugin_lib, profiles, precision: str) -> dict:
    """What the sidecar of a plan built now would hold (the MATCH_KEYS decide reuse)."""
    gpu_name, cc = gpu_identity()
    return make_sidecar(
        tensorrt_version=trt.__version__,
        gpu_name=gpu_name,
        compute_capability=cc,
        precision=precision,
        profiles=profiles.to_report(),
        onnx_sha256=onnx_sha256(onnx_path),
        plugin_sha256=sha256_file(plugin_lib) if plugin_lib else None,
    )


def _parse_network(trt, builder, logger, onnx_path: Path, plugin_nodes: list[str]):
    """Parse the file into a (strongly typed) network; every plugin node must become a plugin layer.

    Returns (network, parser, plugin layer names); the parser owns weights the network refers to, so the
    caller keeps it alive until the build is done."""
    network = _created(builder.create_network(_network_flags(trt)), "create a network")
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise UsageError(f"TensorRT could not parse {onnx_path}: " + " | ".join(_parser_errors(parser)))
    plugin_layers = [
        network.get_layer(i).name
        for i in range(network.num_layers)
        if network.get_layer(i).type == trt.LayerType.PLUGIN_V3
    ]
    if len(plugin_layers) != len(plugin_nodes):
        raise VerificationError(
            f"{len(plugin_nodes)} {PLUGIN_OP} nodes in the ONNX but {len(plugin_layers)} "
            f"plugin layers in the network ({plugin_layers}); the parser did not map every node "
            "to the plugin (is the library loaded and the node's plugin_namespace right?)"
        )
    return network, parser, plugin_layers


def _builder_config(trt, builder, workspace_mib: int, timing_cache, profiles, axes):
    """Builder config: workspace limit, timing cache (a mismatching one replaced), one profile per bucket.

    Every result TensorRT answers failure with is checked: None from a create call, False from
    set_timing_cache, -1 from add_optimization_profile (an invalid profile). p.set_shape raises by itself."""
    config = _created(builder.create_builder_config(), "create a builder config")
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) << 20)
    cache_bytes = Path(timing_cache).read_bytes() if timing_cache and Path(timing_cache).exists() else b""
    cache = config.create_timing_cache(cache_bytes)
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        # a cache written by another GPU or TensorRT version: start a fresh one (rewritten after the build)
        log.warning("timing cache %s does not match this GPU/TensorRT; starting a new one", timing_cache)
        fresh = _created(config.create_timing_cache(b""), "create an empty timing cache")
        if not config.set_timing_cache(fresh, ignore_mismatch=False):
            raise VerificationError("TensorRT refused an empty timing cache; see the TensorRT log above")
    for i in range(len(profiles)):
        p = _created(builder.create_optimization_profile(), "create an optimization profile")
        shapes = profiles.shapes(i, axes)
        for tensor, (mn, opt, mx) in shapes.items():
            p.set_shape(tensor, mn, opt, mx)
        if config.add_optimization_profile(p) < 0:
            raise VerificationError(
                f"TensorRT refused optimization profile {i} as invalid (min/opt/max per input: "
                f"{shapes}); see the TensorRT log above"
            )
    return config


def _serialize(trt, builder, network, config, plan: Path):
    """build_serialized_network with a progress bar; VerificationError when TensorRT returns nothing."""
    monitor = _progress_monitor(trt)
    config.progress_monitor = monitor
    try:
        serialized = builder.build_serialized_network(network, config)
    finally:
        monitor.close()
    if serialized is None:
        raise VerificationError(f"TensorRT failed to build {plan.name}; see the TensorRT log above")
    return serialized


def build_engine(
    onnx_path: str | Path,
    out_dir: str | Path,
    *,
    name: str,
    plugin_lib: str | Path | None,
    profiles,
    precision: str,
    workspace_mib: int = 4096,
    timing_cache: str | Path | None = None,
    input_axes: Mapping[str, tuple] | None = None,
    reuse: bool = True,
) -> dict:
    """Build (or reuse) `<out_dir>/<name>.plan`; returns the sidecar dict + {"plan", "reused", "rebuild_reasons"}.

    onnx_path: the file for TensorRT (mixed precision already applied: the network is strongly typed);
    profiles: engines.tensorrt.profiles.ProfileSet; input_axes: engines.tensorrt.graph.input_axes(model) (read from the
    file when None); timing_cache: file reused across builds (created if missing, rewritten after).
    Raises UsageError for parser errors (every error, with its node) and VerificationError when the
    number of plugin layers differs from the number of RoformerRotary nodes.
    """
    import tensorrt as trt

    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    plan = out_dir / f"{name}.plan"
    expected = _expected_sidecar(trt, onnx_path, plugin_lib, profiles, precision)
    existed = plan.exists()
    ok, reasons = reuse_decision(plan, expected)
    if reuse and ok:
        log.info("reusing %s (sidecar matches)", plan)
        return {**load_sidecar(sidecar_path(plan)), "plan": str(plan), "reused": True, "rebuild_reasons": []}
    if existed:
        log.info("not reusing %s: %s", plan, "; ".join(reasons))

    plugin_nodes = count_plugin_nodes(onnx_path)
    if plugin_nodes and not plugin_lib:
        raise UsageError(f"{onnx_path} has {len(plugin_nodes)} {PLUGIN_OP} nodes; pass --plugin-lib")
    if plugin_lib:
        load_plugins(trt, plugin_lib)
    axes = input_axes or read_axes(onnx.load(str(onnx_path), load_external_data=False))

    t0 = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, _parser, plugin_layers = _parse_network(trt, builder, logger, onnx_path, plugin_nodes)
    io = {
        "inputs": [_io_entry(network.get_input(i)) for i in range(network.num_inputs)],
        "outputs": [_io_entry(network.get_output(i)) for i in range(network.num_outputs)],
    }
    config = _builder_config(trt, builder, workspace_mib, timing_cache, profiles, axes)
    write_atomic(plan, memoryview(_serialize(trt, builder, network, config, plan)))
    if timing_cache:
        cache = _created(config.get_timing_cache(), "return the timing cache")
        write_atomic(timing_cache, memoryview(_created(cache.serialize(), "serialize the timing cache")))
    sidecar = {
        **expected,
        **io,
        "build_seconds": round(time.perf_counter() - t0, 2),
        "plugin_layers": len(plugin_layers),
        "workspace_mib": workspace_mib,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_atomic(sidecar_path(plan), json.dumps(sidecar, indent=2))
    return {**sidecar, "plan": str(plan), "reused": False, "rebuild_reasons": reasons if existed else []}

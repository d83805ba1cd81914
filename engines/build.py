"""Build TensorRT engines from a (mixed-precision, rotary-rewritten) ONNX file.

In:  ONNX path, plugin library path (libroformer_trt_plugin.so), ProfileSet, precision, workspace limit.
Out: `<out_dir>/<name>.plan` (atomic write) and `<name>.plan.json`, the sidecar:
     {"tensorrt_version", "gpu": {"name", "compute_capability"}, "precision", "profiles",
      "onnx_sha256", "plugin_sha256", "build_seconds", "plugin_layers", "built_at"}.
An existing plan is reused only when every field in MATCH_KEYS equals the expected value;
otherwise it is rebuilt and the mismatches are logged (and returned).

Only `build_engine` and `_trt_*` helpers touch TensorRT; `import tensorrt` happens inside them.
Everything else here (hashing, sidecars, stage status) is plain Python, tested on CPU.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import json
import logging
import sys
import time
from pathlib import Path
from typing import Mapping

import onnx
from google.protobuf.message import DecodeError
from rich.progress import Progress

from engines.cases import input_axes as read_axes
from engines.profiles import ProfileSet
from export import cli
from export.atomic import write_atomic
from export.cli import Parser
from export.digest import sha256_file
from export.errors import EXIT_OK, UnavailableError, UsageError, VerificationError
from export.files import MiB, load_json
from export.onnx_io import external_data_files
from export.passes.precision import parse_precision
from export.passes.rotary import COS_CACHE_NAME, SINCOS_NAME
from export.report import TIMING_CACHE
from plugins.identity import PLUGIN_LIB, PLUGIN_NAMESPACE, PLUGIN_OP, PLUGIN_VERSION, TENSORRT_MAJOR_SYMBOL
from plugins.locate import find_plugin_library

log = logging.getLogger(__name__)

MATCH_KEYS = ("tensorrt_version", "gpu", "precision", "profiles", "onnx_sha256", "plugin_sha256")
INSTALL_HINT = "pip install .[tensorrt] on a GPU machine"


# ---------------------------------------------------------------- plain, CPU-testable helpers

def onnx_sha256(path: str | Path) -> str:
    """sha256 of the ONNX file plus every external-data file it references (a rewritten or fp16 graph
    reads most of its weights from model.onnx.data): new weights mean a new hash, so no stale plan is reused."""
    h = hashlib.sha256(sha256_file(path).encode())
    for extra in external_data_files(path):
        h.update(sha256_file(Path(path).parent / extra).encode())
    return h.hexdigest()


def sidecar_path(plan: str | Path) -> Path:
    return Path(str(plan) + ".json")


def make_sidecar(*, tensorrt_version: str, gpu_name: str, compute_capability: str, precision: str,
                 profiles: list[dict], onnx_sha256: str, plugin_sha256: str | None, **extra) -> dict:
    """The sidecar dict; MATCH_KEYS decide reuse, the rest (build time, layer counts) is informative."""
    return {"tensorrt_version": tensorrt_version, "gpu": {"name": gpu_name, "compute_capability": compute_capability},
            "precision": precision, "profiles": profiles, "onnx_sha256": onnx_sha256,
            "plugin_sha256": plugin_sha256, **extra}


def sidecar_mismatches(existing: Mapping | None, expected: Mapping) -> list[str]:
    """Human-readable reasons why a plan cannot be reused; [] means reuse is safe."""
    if existing is None:
        return ["no sidecar next to the plan"]
    out = []
    for k in MATCH_KEYS:
        a, b = existing.get(k), expected.get(k)
        # profiles are compared through JSON so tuples and lists compare equal
        if json.dumps(a, sort_keys=True) != json.dumps(b, sort_keys=True):
            out.append(f"{k}: plan has {a!r}, expected {b!r}")
    return out


def read_sidecar(plan: str | Path) -> dict | None:
    p = sidecar_path(plan)
    if not p.exists():
        return None
    try:
        side = load_json(p, what="engine sidecar", max_bytes=MiB)
    except UsageError as e:  # an unreadable sidecar means "do not reuse"; logged here
        log.warning("%s; the engine will be rebuilt", e)
        return None
    return side if isinstance(side, dict) else None


def reuse_decision(plan: str | Path, expected: Mapping) -> tuple[bool, list[str]]:
    """(True, []) when `plan` exists and its sidecar matches `expected` on MATCH_KEYS."""
    if not Path(plan).exists():
        return False, ["no plan yet"]
    reasons = sidecar_mismatches(read_sidecar(plan), expected)
    return not reasons, reasons


def engine_stage_status() -> dict:
    """{"status": "available", "tensorrt": version} or {"status": "skipped", "reason": ...}.

    Decided without importing tensorrt when it is absent (find_spec), and without CUDA init when it is.
    `require_engine(status)` turns a skip into UnavailableError (exit 3) for `--require-engine`.
    """
    if importlib.util.find_spec("tensorrt") is None:
        return {"status": "skipped", "reason": f"TensorRT is not installed ({INSTALL_HINT})"}
    try:
        import torch
    except ImportError:
        return {"status": "skipped", "reason": "PyTorch is not installed (needed for CUDA buffers)"}
    if not torch.cuda.is_available():
        return {"status": "skipped", "reason": "no CUDA GPU is visible (torch.cuda.is_available() is False)"}
    import tensorrt as trt

    return {"status": "available", "tensorrt": trt.__version__}


def require_engine(status: Mapping) -> None:
    """Raise UnavailableError (exit 3) when the engine stage was skipped."""
    if status.get("status") != "available":
        raise UnavailableError(f"--require-engine: engine stage unavailable: {status.get('reason')}")


def trt_major(version: str) -> int:
    return int(version.split(".")[0])


def count_plugin_nodes(onnx_path: str | Path) -> list[str]:
    """Names of the RoformerRotary nodes in the ONNX file (weights not loaded)."""
    m = onnx.load(str(onnx_path), load_external_data=False)
    return [n.name or f"{PLUGIN_OP}_{i}" for i, n in enumerate(m.graph.node) if n.op_type == PLUGIN_OP]


def gpu_identity() -> tuple[str, str]:
    """(GPU name, "major.minor") of CUDA device 0, via torch."""
    import torch

    if not torch.cuda.is_available():
        raise UnavailableError("no CUDA GPU is visible; engines are built and run on a GPU")
    major, minor = torch.cuda.get_device_capability(0)
    return torch.cuda.get_device_name(0), f"{major}.{minor}"


# ---------------------------------------------------------------- TensorRT layer (GPU only)

_LOADED: dict[str, object] = {}  # resolved library path -> registry handle, for this process


def plugin_library_major(plugin_lib: str | Path) -> int | None:
    """The TensorRT major libroformer_trt_plugin.so was built against (its exported stamp), or None.

    Only for the library TensorRT loads by path: loading it runs no registration (that waits for
    getCreators), so reading the stamp through ctypes has no side effect. The self-registering library is
    never opened here (opening it registers the creator)."""
    if Path(plugin_lib).name != PLUGIN_LIB:
        return None
    try:
        fn = getattr(ctypes.CDLL(str(plugin_lib)), TENSORRT_MAJOR_SYMBOL)
    except (OSError, AttributeError):  # not loadable here, or built before the stamp existed: say nothing
        return None
    fn.restype = ctypes.c_int32
    return int(fn())


def plugin_major_problem(plugin_lib: str | Path, tensorrt_version: str) -> str | None:
    """Why TensorRT `tensorrt_version` cannot use the library (built against another major), or None."""
    built = plugin_library_major(plugin_lib)
    if built is not None and built != trt_major(tensorrt_version):
        return (f"{plugin_lib} was built against TensorRT {built} headers but TensorRT {tensorrt_version} is running; "
                f"rebuild it: python -m plugins.build --tensorrt-include <TensorRT {trt_major(tensorrt_version)} include>")
    return None


def load_plugins(trt, plugin_lib: str | Path):
    """Load our plugin library into TensorRT's registry (IPluginRegistry.load_library, TRT >= 10), once.

    load_library returns None when any of the library's creators is already registered, so a second
    call (build, then run, in one process) or a library already loaded another way (LD_PRELOAD, the
    static variant) is not an error: both are answered from what is registered. A library built
    against another TensorRT major is refused before TensorRT sees it (UsageError).
    """
    path = Path(plugin_lib)
    if not path.is_file():
        raise UsageError(f"plugin library {path} does not exist; run python -m plugins.build or pass --plugin-lib")
    key = str(path.resolve())
    if key in _LOADED:
        return _LOADED[key]
    registry = trt.get_plugin_registry()
    if registry.get_creator(PLUGIN_OP, PLUGIN_VERSION, PLUGIN_NAMESPACE) is not None:
        log.info("%s %s v%s is already registered; not loading %s again", PLUGIN_OP, PLUGIN_NAMESPACE, PLUGIN_VERSION, path)
        _LOADED[key] = None
        return None
    problem = plugin_major_problem(path, trt.__version__)
    if problem:
        raise UsageError(problem)
    handle = registry.load_library(key)
    if handle is None:
        if registry.get_creator(PLUGIN_OP, PLUGIN_VERSION, PLUGIN_NAMESPACE) is not None:
            log.info("load_library(%s) returned None: %s is already registered (e.g. by LD_PRELOAD)", path, PLUGIN_OP)
            _LOADED[key] = None
            return None
        raise UsageError(f"TensorRT could not load plugin library {path}; check it was built for TensorRT {trt.__version__}")
    _LOADED[key] = handle
    return handle


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


def _progress_monitor(trt):
    """A trt.IProgressMonitor that drives a rich progress bar on stderr."""
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
    return make_sidecar(tensorrt_version=trt.__version__, gpu_name=gpu_name, compute_capability=cc,
                        precision=precision, profiles=profiles.to_report(), onnx_sha256=onnx_sha256(onnx_path),
                        plugin_sha256=sha256_file(plugin_lib) if plugin_lib else None)


def _parse_network(trt, builder, logger, onnx_path: Path, plugin_nodes: list[str]):
    """Parse the file into a (strongly typed) network; every plugin node must become a plugin layer.

    Returns (network, parser, plugin layer names); the parser owns weights the network refers to, so the
    caller keeps it alive until the build is done."""
    network = builder.create_network(_network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise UsageError(f"TensorRT could not parse {onnx_path}: " + " | ".join(_parser_errors(parser)))
    plugin_layers = [network.get_layer(i).name for i in range(network.num_layers)
                     if network.get_layer(i).type == trt.LayerType.PLUGIN_V3]
    if len(plugin_layers) != len(plugin_nodes):
        raise VerificationError(f"{len(plugin_nodes)} {PLUGIN_OP} nodes in the ONNX but {len(plugin_layers)} "
                                f"plugin layers in the network ({plugin_layers}); the parser did not map every node "
                                "to the plugin (is the library loaded and the node's plugin_namespace right?)")
    return network, parser, plugin_layers


def _builder_config(trt, builder, workspace_mib: int, timing_cache, profiles, axes):
    """Builder config: workspace limit, timing cache (a mismatching one replaced), one profile per bucket."""
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) << 20)
    cache_bytes = Path(timing_cache).read_bytes() if timing_cache and Path(timing_cache).exists() else b""
    cache = config.create_timing_cache(cache_bytes)
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        # a cache written by another GPU or TensorRT version: start a fresh one (rewritten after the build)
        log.warning("timing cache %s does not match this GPU/TensorRT; starting a new one", timing_cache)
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    for i in range(len(profiles)):
        p = builder.create_optimization_profile()
        for tensor, (mn, opt, mx) in profiles.shapes(i, axes).items():
            p.set_shape(tensor, mn, opt, mx)
        config.add_optimization_profile(p)
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


def build_engine(onnx_path: str | Path, out_dir: str | Path, *, name: str, plugin_lib: str | Path | None,
                 profiles, precision: str, workspace_mib: int = 4096,
                 timing_cache: str | Path | None = None, input_axes: Mapping[str, tuple] | None = None,
                 reuse: bool = True) -> dict:
    """Build (or reuse) `<out_dir>/<name>.plan`; returns the sidecar dict + {"plan", "reused", "rebuild_reasons"}.

    onnx_path: the file for TensorRT (mixed precision already applied: the network is strongly typed);
    profiles: engines.profiles.ProfileSet; input_axes: engines.cases.input_axes(model) (read from the
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
        return {**read_sidecar(plan), "plan": str(plan), "reused": True, "rebuild_reasons": []}
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
    io = {"inputs": [_io_entry(network.get_input(i)) for i in range(network.num_inputs)],
          "outputs": [_io_entry(network.get_output(i)) for i in range(network.num_outputs)]}
    config = _builder_config(trt, builder, workspace_mib, timing_cache, profiles, axes)
    write_atomic(plan, memoryview(_serialize(trt, builder, network, config, plan)))
    if timing_cache:
        write_atomic(timing_cache, memoryview(config.get_timing_cache().serialize()))
    sidecar = {**expected, **io, "build_seconds": round(time.perf_counter() - t0, 2), "plugin_layers": len(plugin_layers),
               "workspace_mib": workspace_mib, "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_atomic(sidecar_path(plan), json.dumps(sidecar, indent=2))
    return {**sidecar, "plan": str(plan), "reused": False, "rebuild_reasons": reasons if existed else []}


# ---------------------------------------------------------------- CLI: python -m engines.build

def table_rows(onnx_path: str | Path) -> int | None:
    """Rows of the rotary sin/cos table in the file = the longest sequence its engine can accept."""
    m = onnx.load(str(onnx_path), load_external_data=False)
    # the precision pass may append a dtype suffix to a converted initializer's name
    return next((int(i.dims[0]) for i in m.graph.initializer if i.name.startswith((SINCOS_NAME, COS_CACHE_NAME))), None)


def add_engine_flags(p: Parser) -> None:
    """--batch, --profiles, --choices, --workspace-mib: the engine options export.build and engines.build share."""
    p.add_argument("--batch", default="1,8,32", help="engine batch range min,opt,max (one number N means 1,N,N)")
    p.add_argument("--profiles", help="sequence bucket tops, one optimization profile each, e.g. 128,512,2048 "
                   "(each profile adds a full tactic search to the engine build and one Triton instance group). "
                   "Default: one profile 1..max-len tuned for 128 tokens (or max-len if shorter); "
                   "--profiles <max-len> tunes the single profile for the longest sequence")
    p.add_argument("--choices", type=int, help="multiple-choice only: number of choices the engine takes (default 2)")
    p.add_argument("--workspace-mib", type=int, default=4096, help="TensorRT builder workspace limit")


def build_parser() -> Parser:
    p = Parser(prog="python -m engines.build", description="Build a TensorRT engine from the TensorRT-bound ONNX that export.build wrote "
                                            "(report.json artifacts.tensorrt-onnx).",
                                epilog="example: python -m engines.build build/ckpt/model.rope-plugin.fp16.onnx "
                                       "--precision fp16 --batch 1,8,32 --profiles 128,512,2048")
    p.add_argument("onnx", help="ONNX file (mixed precision already applied; the network is strongly typed)")
    p.add_argument("--out", help="folder for <name>.plan and its sidecar (default: the ONNX file's folder)")
    p.add_argument("--name", help="plan name without .plan (default: model.<precision>)")
    p.add_argument("--precision", default="fp32", help="recorded in the sidecar: fp32 | fp16 | bf16")
    p.add_argument("--max-len", type=int, help="longest sequence (default: rows of the graph's rotary table)")
    p.add_argument("--plugin-lib", help="plugin library (default: the one python -m plugins.build made)")
    add_engine_flags(p)
    p.add_argument("--timing-cache", help="timing cache file (default: timing.cache beside the plan)")
    p.add_argument("--force", action="store_true", help="rebuild even when the sidecar matches")
    return p


def check_usage(args) -> tuple[Path, str, object, str | None]:
    """Every check a user can fix by changing the command (UsageError, exit 2), before asking whether the
    engine stage can run at all: (onnx path, precision, ProfileSet, plugin library or None)."""
    onnx_path = Path(args.onnx)
    if not onnx_path.is_file():
        raise UsageError(f"{onnx_path} does not exist; pass the ONNX file export.build wrote "
                         "(report.json artifacts.tensorrt-onnx)")
    precision = parse_precision(args.precision)
    try:
        rows = table_rows(onnx_path)
    except DecodeError:
        raise UsageError(f"{onnx_path} is not an ONNX file; pass the ONNX file export.build wrote") from None
    if args.timing_cache and Path(args.timing_cache).exists() and not Path(args.timing_cache).is_file():
        raise UsageError(f"--timing-cache {args.timing_cache} is not a file; pass a file path (created if missing)")
    if args.max_len is not None and rows is not None and args.max_len > rows:
        raise UsageError(f"--max-len {args.max_len} exceeds the {rows} rows of {onnx_path.name}'s rotary table "
                         f"(the longest sequence it can accept); pass --max-len <= {rows} or re-export with a larger one")
    max_len = args.max_len or rows
    if max_len is None:
        raise UsageError(f"{onnx_path.name} has no rotary table to read the longest sequence from; pass --max-len")
    profiles = ProfileSet.from_cli(args.batch, args.profiles, max_len, args.choices)
    plugin_lib = args.plugin_lib
    if plugin_lib is not None and not Path(plugin_lib).is_file():
        raise UsageError(f"--plugin-lib {plugin_lib} does not exist; run python -m plugins.build")
    if plugin_lib is None and count_plugin_nodes(onnx_path):
        plugin_lib = find_plugin_library()
    return onnx_path, precision, profiles, plugin_lib


def main(argv: list[str] | None = None) -> int:
    """Usage checks (exit 2), then availability of TensorRT and a GPU (exit 3), then the build."""
    return cli.run(build_parser(), _main, argv)


def _main(args) -> int:
    onnx_path, precision, profiles, plugin_lib = check_usage(args)
    require_engine(engine_stage_status())
    out = Path(args.out) if args.out else onnx_path.parent
    entry = build_engine(onnx_path, out, name=args.name or f"model.{precision}", plugin_lib=plugin_lib,
                         profiles=profiles, precision=precision, workspace_mib=args.workspace_mib,
                         timing_cache=args.timing_cache or out / TIMING_CACHE, reuse=not args.force)
    print(json.dumps({k: entry[k] for k in ("plan", "reused", "build_seconds", "plugin_layers") if k in entry}))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

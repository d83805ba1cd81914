"""Our plugin library in TensorRT's registry: the major it was built for, whether it is registered, loading it once.

Only `is_registered` and `load_plugins` touch TensorRT (through the registry or `trt` module their caller
has); whether our creator is among the registry's creators is decided by `find_creator`, on plain data.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Iterable
from pathlib import Path

from engines.tensorrt.availability import trt_major
from export.errors import UsageError
from plugins.identity import PLUGIN_LIB, PLUGIN_NAMESPACE, PLUGIN_OP, PLUGIN_VERSION, TENSORRT_MAJOR_SYMBOL

log = logging.getLogger(__name__)

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
        return (
            f"{plugin_lib} was built against TensorRT {built} headers but TensorRT {tensorrt_version} is running; "
            f"rebuild it: python -m plugins.build --tensorrt-include <TensorRT {trt_major(tensorrt_version)} include>"
        )
    return None


def find_creator(
    creators: Iterable | None, op: str = PLUGIN_OP, version: str = PLUGIN_VERSION, namespace: str = PLUGIN_NAMESPACE
):
    """The creator registered as (op, version, namespace) in `creators`, or None.

    creators: TensorRT's `registry.all_creators` (TensorRT >= 10.8): IPluginCreator, IPluginCreatorV3One or
    IPluginCreatorV3Quick objects, which the binding has already cast by their interface kind, each with `name`,
    `plugin_version` and `plugin_namespace`; anything without them is skipped. The list is read because
    `registry.get_creator` reports every miss through TensorRT's logger as an error ("Error Code 4: API Usage
    Error (Cannot find plugin ...)"), and the first load of our library starts with exactly that miss."""
    for c in creators or ():
        if (getattr(c, "name", None), getattr(c, "plugin_version", None), getattr(c, "plugin_namespace", None)) == (
            op,
            version,
            namespace,
        ):
            return c
    return None


def is_registered(registry) -> bool:
    """Whether our creator is in TensorRT's plugin registry, read from its list of creators."""
    creators = registry.all_creators
    if creators is None:
        # The binding answers None when it cannot list a creator (a kind it does not know): only then ask by
        # name, and a miss shows in TensorRT's log as an error.
        return registry.get_creator(PLUGIN_OP, PLUGIN_VERSION, PLUGIN_NAMESPACE) is not None
    return find_creator(creators) is not None


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
    if is_registered(registry):
        log.info(
            "%s %s v%s is already registered; not loading %s again", PLUGIN_OP, PLUGIN_NAMESPACE, PLUGIN_VERSION, path
        )
        _LOADED[key] = None
        return None
    problem = plugin_major_problem(path, trt.__version__)
    if problem:
        raise UsageError(problem)
    handle = registry.load_library(key)
    if handle is None:
        if is_registered(registry):
            log.info("load_library(%s) returned None: %s is already registered (e.g. by LD_PRELOAD)", path, PLUGIN_OP)
            _LOADED[key] = None
            return None
        raise UsageError(
            f"TensorRT could not load plugin library {path}; check it was built for TensorRT {trt.__version__}"
        )
    _LOADED[key] = handle
    return handle

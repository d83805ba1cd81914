"""roformer-trt export stage: checkpoint -> ONNX -> rotary pass -> validated graphs."""

import os
import sys
import warnings

__version__ = "0.1.0"


def _interrupted_while_starting(kind, value, tb, _previous=sys.excepthook):
    """Ctrl-C while a `python -m` command is still importing its libraries (before export.cli takes over):
    one line and exit 130, as at any later moment, instead of a traceback through the import machinery."""
    if issubclass(kind, KeyboardInterrupt):
        print("interrupted: nothing was written", file=sys.stderr, flush=True)
        os._exit(130)
    _previous(kind, value, tb)


if sys.argv and sys.argv[0] == "-m":  # `python -m export...|engines...|plugins...` is locating its module
    sys.excepthook = _interrupted_while_starting
    if "--debug" not in sys.argv:
        warnings.simplefilter("ignore")  # libraries warn while importing; export.cli keeps them behind --debug

"""roformer-trt export stage: checkpoint -> ONNX -> rotary pass -> validated graphs."""

import os
import signal
import sys
import warnings

__version__ = "0.1.0"

STARTING = "interrupted: nothing was written"


def _interrupted_while_starting(*_) -> None:
    """Ctrl-C while a `python -m` command is still importing its libraries (before export.cli.entry takes over):
    nothing is written yet, so the process ends at once with one line and 130. Exiting from the handler,
    rather than raising KeyboardInterrupt, keeps the interrupt out of native import code (a pybind11 module's
    init aborts the process when an exception crosses it)."""
    os.write(2, (STARTING + "\n").encode())
    os._exit(130)


def _uncaught(kind, value, tb, _previous=sys.excepthook):
    if issubclass(kind, KeyboardInterrupt):  # raised before the handler above was installed
        _interrupted_while_starting()
    _previous(kind, value, tb)


if sys.argv and sys.argv[0] == "-m":  # `python -m export...|engines...|plugins...` is locating its module
    sys.excepthook = _uncaught
    signal.signal(signal.SIGINT, _interrupted_while_starting)  # export.cli.entry.run restores KeyboardInterrupt
    if "--debug" not in sys.argv:
        warnings.simplefilter("ignore")  # libraries warn while importing; export.cli.entry keeps them behind --debug

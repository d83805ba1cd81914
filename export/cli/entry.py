"""The one entry path of every `python -m` command of roformer-trt: parsing, logging, errors to exit codes.

    def main(argv=None) -> int:
        return cli.run(build_parser(), _main, argv)

`_main(args)` does the work and returns an exit code; anything it raises is mapped here, once:

| raised | exit | printed (stderr, one line) |
|---|---|---|
| a usage problem: argparse, UsageError, ValueError subclasses of the leaf modules the command names (e.g. ThresholdError) | 2 | `error: ...` |
| VerificationError | 1 | `verification failed: ...` |
| UnavailableError | 3 | `unavailable: ...` |
| KeyboardInterrupt | 130 | `interrupted: <what was kept>` |
| anything else (a bug) | 4 | `internal error: ...; rerun with --debug` |

`--debug` (or `--verbose`; added to every parser) prints the traceback as well and turns on debug logs. The order of
work inside `_main` is the same everywhere: usage checks (exit 2), then availability (exit 3), then work.
"""

from __future__ import annotations

import argparse
import logging
import re
import signal
import sys
import threading
import traceback
import warnings
from collections.abc import Callable

from export.errors import (
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    RoformerTrtError,
    UnavailableError,
    VerificationError,
)


class Parser(argparse.ArgumentParser):
    """argparse with a one-line usage error (exit 2) and `--debug` (`--verbose`) on every command."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)
        self.add_argument("--debug", "--verbose", action="store_true", help="show tracebacks and debug logs")

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"error: {self.prog}: {message}; see {self.prog} --help\n")


class InterruptNote:
    """What an interrupted command kept, said by the command as its work moves on (default: nothing)."""

    def __init__(self, text: str = "nothing was written"):
        self.text = text


def run(
    parser: argparse.ArgumentParser,
    main: Callable[[argparse.Namespace], int],
    argv: list[str] | None = None,
    *,
    usage_errors: tuple[type[Exception], ...] = (),
    interrupt_note: InterruptNote | None = None,
) -> int:
    """Parse argv, run `main(args)` and map what it raises to the exit-code table above.

    usage_errors: exception types that mean bad input (exit 2) besides UsageError, e.g. ThresholdError.
    interrupt_note: updated by `main` so Ctrl-C says what was kept.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)  # from here on, Ctrl-C is KeyboardInterrupt
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    debug = bool(getattr(args, "debug", False))
    _quiet_libraries(debug)
    note = interrupt_note or InterruptNote()
    try:
        return main(args)
    except KeyboardInterrupt:
        _trace(debug)
        print(f"interrupted: {note.text}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except RoformerTrtError as e:
        _trace(debug)
        print(f"{_label(e)}: {_one_line(e)}", file=sys.stderr)
        return e.exit_code
    except usage_errors as e:
        _trace(debug)
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as e:  # a bug: one line, the traceback behind --debug, and an exit code of its own
        _trace(debug)
        print(
            f"internal error: {type(e).__name__}: {_one_line(e)}; rerun with --debug for the traceback", file=sys.stderr
        )
        return EXIT_INTERNAL


def _quiet_libraries(debug: bool) -> None:
    """Without --debug, nothing but our own lines reaches the terminal: libraries' warnings (a torch
    UserWarning, say) and their log records below ERROR stay behind --debug."""
    logging.basicConfig(level=logging.DEBUG if debug else logging.ERROR, format="%(name)s: %(message)s")
    for ours in ("export", "engines", "plugins"):
        logging.getLogger(ours).setLevel(logging.DEBUG if debug else logging.WARNING)
    if not debug:
        warnings.simplefilter("ignore")


def _label(e: RoformerTrtError) -> str:
    if isinstance(e, VerificationError):
        return "verification failed"
    return "unavailable" if isinstance(e, UnavailableError) else "error"


_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")  # terminal escapes (colours) in a library's text


def _one_line(e: BaseException) -> str:
    """The first line of the message, and for verification failures the whole list (it is the report); no
    terminal escape sequences (a library's coloured text must not colour or corrupt the user's terminal)."""
    text = _ANSI.sub("", str(e)).strip() or type(e).__name__
    return text if isinstance(e, VerificationError) else text.splitlines()[0]


def _trace(debug: bool) -> None:
    if debug:
        traceback.print_exc()

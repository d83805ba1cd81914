"""One table of exit codes for every CLI of roformer-trt, and the errors that map to them.

| code | meaning |
|------|---------|
| 0 | success |
| 1 | verification failed: accuracy, rotary-rewrite coverage, or a quantized graph off its placement (artifacts kept, report says why); for the build tools, the build step failed (`plugins.build`: CMake; `engines.build`: TensorRT's builder) |
| 2 | bad input or usage |
| 3 | a stage asked for with a `--require-...` flag is unavailable here; `engines.serving`: tritonserver cannot run, or cannot be kept from other local users, here |
| 4 | internal error: a bug in roformer-trt (one line; `--debug` shows the traceback) |
| 5 | `engines.serving`: the inference server died while serving (one line naming the cause and the server log), so a supervisor restarts it |
| 130 | interrupted (Ctrl-C); the message says what was kept |

`export/cli/entry.py` maps these errors to the codes for every `python -m` command.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_VERIFICATION = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_INTERNAL = 4
EXIT_SERVER_DIED = 5
EXIT_INTERRUPTED = 130


class RoformerTrtError(Exception):
    """Base: carries the exit code; str(e) is the one line shown to the user."""

    exit_code = EXIT_USAGE


class UsageError(RoformerTrtError):
    """Bad input or usage: the message names the problem and the fix."""

    exit_code = EXIT_USAGE


class VerificationError(RoformerTrtError):
    """Accuracy or rewrite coverage failed; artifacts are kept for inspection."""

    exit_code = EXIT_VERIFICATION


class UnavailableError(RoformerTrtError):
    """A required stage (e.g. `--require-engine`) cannot run on this machine."""

    exit_code = EXIT_UNAVAILABLE


class ServerDiedError(RoformerTrtError):
    """A server that `engines.serving` started died (tritonserver or its model's backend stub)."""

    exit_code = EXIT_SERVER_DIED

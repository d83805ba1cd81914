"""Small assertions the tests share."""

from __future__ import annotations

import re

# export.progress's off-terminal lines: a step that ran past its heartbeat says so before the error (how long
# that takes depends on the machine, not on the input), so they are not part of the error's one line.
_PROGRESS = re.compile(r"^(?!error:)(\[\d+(/\d+)? \d+ s\] .+|.+ \.\.\.|.+: done in \d+ s)$")


def one_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and not _PROGRESS.match(line)]
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]

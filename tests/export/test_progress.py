"""Off a terminal (a CI log, a redirected stderr) rich draws nothing, so every long step says itself in plain lines:
a counted step as it starts, a step without a count once it has run a few seconds and again when done. A quick
step and a refusal print nothing, so bad input stays one line."""

from __future__ import annotations

import re
import time

import pytest

from export import progress


def lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_captured_stderr_is_not_a_terminal():
    assert not progress.on_terminal() and isinstance(progress.progress(), progress.LineProgress)


def test_counted_steps_say_each_step_as_it_starts(capsys):
    with progress.progress() as bar:
        task = bar.add_task("validate", total=3)
        for name in ("a", "b", "c"):
            bar.update(task, description=f"validate {name}")
            bar.update(task, description=f"validate {name}")  # the same step again: no second line
            bar.advance(task)
    out = lines(capsys)
    assert [line.split("] ", 1)[1] for line in out] == ["validate a", "validate b", "validate c"]
    assert [line.split(" ", 1)[0] for line in out] == ["[1/3", "[2/3", "[3/3"]


def test_steps_yields_every_item_and_names_it(capsys):
    assert list(progress.steps([10, 20], lambda x: f"batch {x}")) == [10, 20]
    assert [line.split("] ", 1)[1] for line in lines(capsys)] == ["batch 10", "batch 20"]


def test_a_long_step_says_it_started_and_ended(capsys, monkeypatch):
    monkeypatch.setattr(progress, "HEARTBEAT_S", 0.05)
    with progress.status("exporting ONNX"):
        time.sleep(0.5)
    said = lines(capsys)
    assert said[0] == "exporting ONNX ..." and re.fullmatch(r"exporting ONNX: done in \d+ s", said[1]), said
    assert len(said) == 2


def test_a_quick_step_and_a_failed_one_stay_quiet_or_say_only_the_start(capsys, monkeypatch):
    with progress.status("reading checkpoint"):
        pass
    assert lines(capsys) == []
    monkeypatch.setattr(progress, "HEARTBEAT_S", 0.05)
    with pytest.raises(ValueError), progress.status("reading checkpoint"):
        time.sleep(0.5)
        raise ValueError("bad")
    assert lines(capsys) == ["reading checkpoint ..."]  # no "done" for a step that failed

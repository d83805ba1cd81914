"""Time limits of the test suite: generous and named, so a loaded 2-core machine never fails a test by being
slow. A limit only stops a hang; it never measures speed ("before any work" is checked by making the work
impossible, see `no_checkpoint_reading`)."""

from __future__ import annotations

SLOW_MACHINE_S = 600  # one tiny build, a CLI subprocess or a small compile on a loaded machine (idle: ~10 s)
HANG_S = 60  # something that must not block at all (a FIFO opened, a lock taken): only a hang takes this long


def no_checkpoint_reading(monkeypatch) -> None:
    """Make export.build fail loudly if it reads the checkpoint: a check that must come before any work is
    then proven to, whatever the machine's speed."""
    import export.build

    def refuse(*args, **kwargs):
        raise AssertionError("the checkpoint was read: the check did not come before the work")

    monkeypatch.setattr(export.build, "inspect_checkpoint", refuse)

"""What the live serving tests share (test_live.py, test_live_attacks.py): whether tritonserver can run here,
the marks that skip (or, with ROFORMER_TRT_REQUIRE_SERVING=1 as in CI's serving environment, fail) them
where it cannot, and the time they may take. The server itself: the session fixtures of conftest.py."""

from __future__ import annotations

import os

import pytest

# Generous on purpose (a loaded 2-core machine): starting tritonserver and loading the model takes ~5 s here.
LIVE_TIMEOUT_S = 900


def serving_unavailable() -> str | None:
    """Why the live server cannot run here, else None. Any exception is a reason, not a collection error:
    a tritonclient installed without [http] raises RuntimeError on import, not ImportError."""
    try:
        import tritonclient.grpc  # noqa: F401
        import tritonclient.http  # noqa: F401
    except Exception as e:
        return f"tritonclient[http,grpc] not usable (serving extra): {type(e).__name__}: {e}"
    try:
        from engines.serving.server import check_runtime

        check_runtime()
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return None


SKIP = serving_unavailable()


def live_marks() -> list:
    """pytestmark of a live module; fails the run instead when CI requires serving and it cannot run."""
    if SKIP and os.environ.get("ROFORMER_TRT_REQUIRE_SERVING") == "1":
        pytest.fail(f"ROFORMER_TRT_REQUIRE_SERVING=1 but the live server cannot run: {SKIP}", pytrace=False)
    return [
        pytest.mark.skipif(SKIP is not None, reason=f"cannot serve here: {SKIP}"),
        pytest.mark.timeout(LIVE_TIMEOUT_S),
    ]

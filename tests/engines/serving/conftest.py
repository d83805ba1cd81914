"""The live server, started once per session and shared by every live module (test_live.py,
test_live_attacks.py): the tiny build served with mean pooling, --max-batch 8, one ORT thread. On a host
that cannot give tritonserver namespaces of its own it serves with trust_local_users (what
--trust-local-users does), so the other live tests still run; the attack tests then skip, saying why."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def built(served):
    return served.path, served.model  # the session's tiny build (tests/conftest.py)


@pytest.fixture(scope="session")
def server(built):
    from engines.serving.server import serve
    from engines.serving.tritonserver import isolation_refused

    build, model = built
    trust = isolation_refused() is not None
    with serve(build, "mean", max_batch=8, threads=1, trust_local_users=trust) as urls:
        yield urls, model

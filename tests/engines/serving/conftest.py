"""The live server, started once per session and shared by every live module (test_live.py,
test_live_attacks.py): the tiny build served with mean pooling, --max-batch 8, one ORT thread."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    from tests.fixtures.tiny_build import write_tiny_build

    build = tmp_path_factory.mktemp("serve") / "tiny"
    return build, write_tiny_build(build)


@pytest.fixture(scope="session")
def server(built):
    from engines.serving.server import serve

    build, model = built
    with serve(build, "mean", max_batch=8, threads=1) as urls:
        yield urls, model

"""Session fixtures of the rotary pass's tests: one tiny ModernBERT, each export form built once."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def modernbert(tmp_path_factory):
    """modernbert(form) -> (onnx path, torch model); form in hf_models.FORMS. Built on first use, then shared."""
    from tests.export.passes.rotary.hf_models import export, tiny_modernbert

    model = tiny_modernbert()
    cache: dict = {}

    def get(form: str):
        if form not in cache:
            cache[form] = export(model, tmp_path_factory.mktemp(form) / "model.onnx", form)
        return cache[form], model

    return get

"""Finding tritonserver in the installed nvidia-pytriton wheel, without running it."""

from __future__ import annotations

import importlib.metadata
import importlib.util

import pytest

from engines.serving import tritonserver
from export.errors import UnavailableError


def test_a_pytriton_record_without_its_package_is_unavailable_not_a_crash(monkeypatch):
    """The distribution's metadata present, its `pytriton` package gone (a half-removed install): find_spec gives
    None, which raised AttributeError (an internal error, exit 4) before it was refused like a missing wheel."""
    versions = {"nvidia-pytriton": "0.7.0", "numpy": "1.26.4"}
    monkeypatch.setattr(importlib.metadata, "version", lambda name: versions[name])
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UnavailableError, match="nvidia-pytriton 0.7.0 is recorded as installed but its pytriton"):
        tritonserver.find_tritonserver()

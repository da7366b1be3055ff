"""Shared test set-up: no stray plugins, fresh in-memory stores."""

from __future__ import annotations

import os

import pytest

# Tests never load whatever happens to be installed as a hook plugin.
os.environ.setdefault("CRMSYNC_PLUGINS", "")


@pytest.fixture(autouse=True)
def _fresh_memory_stores():
    from crmsync.testing.memory import reset_stores

    reset_stores()
    yield
    reset_stores()

"""Fixtures shared by the catalog tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from catalog.repo import Repository


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """An empty directory repository (closed)."""
    root = tmp_path / "repo"
    Repository.init(root).close()
    return root

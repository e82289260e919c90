"""pytest setup for the pipeline benchmarks: ``pytest benchmarks --benchmark-only -p no:cacheprovider``.

The repository's ``testpaths`` is ``tests``, so a plain ``pytest`` never
collects anything here. Files named ``bench_*.py`` are collected as test
modules (pytest's own pattern only takes ``test_*.py``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # bench_*.py import the sibling helper module benchlib
    sys.path.insert(0, str(HERE))


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    if parent.session.isinitpath(file_path):
        return None  # named on the command line: pytest collects it itself
    if file_path.suffix == ".py" and file_path.name.startswith("bench_"):
        module: pytest.Module = pytest.Module.from_parent(parent, path=file_path)
        return module
    return None


@pytest.fixture(autouse=True)
def _default_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Measure the defaults a user gets: no test-only pack size or other overrides."""
    import os

    for key in list(os.environ):
        if key.startswith("TOOLKIT_") and key != "TOOLKIT_BENCH_GEN":
            monkeypatch.delenv(key)

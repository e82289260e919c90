"""Shared fixtures: a clean environment, small packs, helpers to run the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from toolkit.cli import cli

pytest_plugins = ["tests.lab.fixtures_peers", "tests.lab.fixtures_s3"]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in list(os.environ):
        if key.startswith("TOOLKIT_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("TOOLKIT_PACK_MAX_BYTES", "262144")  # small data still spans many packs
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


class Toolkit:
    """Runs CLI commands in-process against one repository, returning results."""

    def __init__(self, repo: Path) -> None:
        self.repo = repo
        self.runner = CliRunner()

    def __call__(self, *args: str, json_out: bool = False) -> Result:
        argv = ["--repo", str(self.repo)] + (["--json"] if json_out else []) + list(args)
        from toolkit.cli import main

        # main() maps errors to exit codes exactly as the console script does.
        return self.runner.invoke(_Main(main), argv, catch_exceptions=False)

    def json(self, *args: str) -> dict:
        r = self(*args, json_out=True)
        assert r.stdout.strip(), r.stderr
        return json.loads(r.stdout)


class _Main:
    """Adapter so CliRunner can drive toolkit.cli.main (which calls sys.exit)."""

    def __init__(self, fn: object) -> None:
        self.fn = fn
        self.name = "toolkit"

    def main(self, args: list[str], prog_name: str | None = None, **_: object) -> None:
        self.fn(args)  # type: ignore[operator]


@pytest.fixture
def toolkit(tmp_path: Path) -> Toolkit:
    return Toolkit(tmp_path / "repo")


def run_toolkit(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """The real console entry point in a subprocess (for kill tests and tracebacks)."""
    return subprocess.run(
        [sys.executable, "-m", "toolkit", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )


__all__ = ["Toolkit", "cli", "run_toolkit"]

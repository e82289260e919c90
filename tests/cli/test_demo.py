"""`toolkit demo`, the README's first command, runs start to end and can be re-run."""

from __future__ import annotations

from pathlib import Path

import pytest

from toolkit.lab.demo import DemoDirInUse

from ..conftest import run_toolkit


@pytest.mark.lab
@pytest.mark.parametrize("flavour", ["2.x", "4.x"])
def test_demo_tells_the_whole_story_and_is_idempotent(tmp_path: Path, flavour: str) -> None:
    target = tmp_path / "demo"
    for _ in range(2):
        proc = run_toolkit("demo", str(target), "--flavour", flavour, timeout=240)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        out = proc.stdout
        assert "replication deleted: [ds2]" in out
        assert "deleted" in out and "ok" in out
        assert "restored: ds1/" in out
        assert "again: status enabled, the same GUID as before" in out
        assert "Next, on your own environment" in out
        assert "Traceback" not in proc.stderr


def test_demo_refuses_a_directory_it_did_not_make(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "precious.txt").write_text("keep me")
    proc = run_toolkit("demo", str(tmp_path / "mine"))
    assert proc.returncode == DemoDirInUse.exit_code
    assert "not made by toolkit demo" in proc.stderr
    assert (tmp_path / "mine" / "precious.txt").read_text() == "keep me"

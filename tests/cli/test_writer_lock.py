"""A job whose writer lock another host took over (it had not refreshed it in time) commits nothing and exits 3;
``toolkit unlock`` removes a lock not refreshed in time."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from catalog.errors import LockLost
from catalog.lock import lock_path
from toolkit.lab.corpus import make_volume

from ..conftest import Toolkit

APPS = "cloudvolumes/apps"


@pytest.fixture
def datastore(tmp_path: Path) -> Path:
    root = tmp_path / "ds1"
    for i, name in enumerate(("Visio", "Project")):
        make_volume(root, f"{APPS}/{name}.vmdk", size_mib=4, seed=i, real=False)
    return root


def other_host_lock(refreshed_ago: timedelta) -> bytes:
    now = datetime.now(UTC)
    lock = {"owner": "backup", "pid": 4242, "host": "backup02", "command": "prune", "token": "7e" * 16}
    lock |= {"since": (now - timedelta(hours=3)).isoformat(), "refreshed": (now - refreshed_ago).isoformat()}
    return json.dumps(lock).encode()


def snapshot_documents(toolkit: Toolkit) -> list[str]:
    return sorted(p.stem for p in (toolkit.repo / "snapshots").glob("*.json"))


def taking_over_during(monkeypatch: pytest.MonkeyPatch, target: str, toolkit: Toolkit) -> Callable[[], bool]:
    """Make ``target`` (a job function) find its lock taken over by backup02 part way; returns whether it did."""
    module, name = target.rsplit(".", 1)
    real = getattr(__import__(module, fromlist=[name]), name)
    taken: list[bool] = []

    def job(*args: Any, **kwargs: Any) -> Any:
        event = kwargs.get("event") or (lambda _kind, _data: None)

        def hooked(kind: str, data: dict[str, Any]) -> None:
            if kind == "volume" and not taken:  # a volume done: the job is well under way
                lock_path(toolkit.repo).write_bytes(other_host_lock(timedelta(0)))
                taken.append(True)
            event(kind, data)

        if "event" in kwargs:
            return real(*args, **kwargs | {"event": hooked})
        lock_path(toolkit.repo).write_bytes(other_host_lock(timedelta(0)))
        taken.append(True)
        return real(*args, **kwargs)

    monkeypatch.setattr(target, job)
    return lambda: bool(taken)


def test_a_snapshot_whose_lock_was_taken_over_commits_nothing_and_exits_3(
    toolkit: Toolkit, datastore: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert toolkit("init").exit_code == 0
    took = taking_over_during(monkeypatch, "toolkit.cli.snapshot_job", toolkit)
    r = toolkit("--json", "snapshot", str(datastore))
    assert took()
    assert r.exit_code == LockLost.exit_code == 3, r.stdout + r.stderr
    error = json.loads(r.stdout.splitlines()[0])
    assert error["code"] == "lock_lost"
    assert "taken over (prune of backup, pid 4242 on backup02" in error["message"]
    assert "nothing was committed" in error["message"]
    assert snapshot_documents(toolkit) == []
    assert json.loads(lock_path(toolkit.repo).read_bytes())["host"] == "backup02", "the other writer keeps its lock"
    lock_path(toolkit.repo).unlink()
    assert toolkit.json("snapshots")["snapshots"] == []


def test_a_prune_whose_lock_was_taken_over_removes_nothing_and_exits_3(
    toolkit: Toolkit, datastore: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert toolkit("init").exit_code == 0
    for _ in range(2):
        assert toolkit("snapshot", "--rehash", str(datastore)).exit_code == 0
    before = snapshot_documents(toolkit)
    assert len(before) == 2
    took = taking_over_during(monkeypatch, "catalog.prune.prune", toolkit)
    r = toolkit("prune", "--keep-last", "1")
    assert took()
    assert r.exit_code == 3 and "the writer lock was taken over" in r.stderr, r.stdout + r.stderr
    assert snapshot_documents(toolkit) == before
    lock_path(toolkit.repo).unlink()
    assert len(toolkit.json("snapshots")["snapshots"]) == 2


def test_unlock_removes_a_lock_another_host_stopped_refreshing_but_not_a_fresh_one(toolkit: Toolkit) -> None:
    assert toolkit("init").exit_code == 0
    lock_path(toolkit.repo).write_bytes(other_host_lock(timedelta(minutes=10)))
    r = toolkit("unlock")
    assert r.exit_code == 3 and "pid 4242 on backup02" in r.stderr
    lock_path(toolkit.repo).write_bytes(other_host_lock(timedelta(hours=1)))
    r = toolkit("unlock")
    assert r.exit_code == 0 and "removed the lock of pid 4242 on backup02" in r.stdout, r.stdout + r.stderr
    assert not lock_path(toolkit.repo).exists()

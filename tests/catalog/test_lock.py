"""The writer lock's heartbeat: its holder writes it again, a writer takes over a lock another host stopped
refreshing, and a holder whose lock was taken over commits nothing."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from catalog.errors import Locked, LockLost
from catalog.lock import STALE_AFTER_S, break_lock, lock_path, read_lock, sweep_drafts, writer_lock
from catalog.repo import Repository

DEADLINE_S = 30.0  # a condition polled for; only a broken heartbeat ever takes this long


def lock_json(root: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(lock_path(root).read_bytes())
    return data


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.01)


def other_host_lock(*, since: timedelta, refreshed: timedelta | None, now: datetime | None = None) -> bytes:
    """A writer lock of pid 4242 on backup02, taken ``since`` ago and last written ``refreshed`` ago (None: as
    written before locks were refreshed, without the field and the token)."""
    now = now or datetime.now(UTC)
    lock: dict[str, Any] = {"owner": "backup", "pid": 4242, "host": "backup02", "command": "prune"}
    lock["since"] = (now - since).isoformat()
    if refreshed is not None:
        lock |= {"token": "7e" * 16, "refreshed": (now - refreshed).isoformat()}
    return json.dumps(lock, sort_keys=True).encode() + b"\n"


def heartbeat_threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name.startswith("heartbeat-writer-")}


def test_a_refresh_writes_the_lock_again_with_a_newer_time_and_the_same_token(root: Path) -> None:
    with writer_lock(root, "snapshot", heartbeat_s=3600) as held:
        first = lock_json(root)
        assert (first["pid"], first["command"], first["token"]) == (os.getpid(), "snapshot", held.token)
        assert len(first["token"]) == 32 and first["refreshed"] == first["since"]
        later = datetime.now(UTC) + timedelta(minutes=5)
        held.refresh(now=later)
        second = lock_json(root)
        assert datetime.fromisoformat(second["refreshed"]) == later
        assert second | {"refreshed": first["refreshed"]} == first, "only the time changed"
        assert sorted(p.name for p in (root / "locks").iterdir()) == ["writer"], "no draft left behind"
        held.check()  # still ours
    assert read_lock(root) is None


def test_the_holder_refreshes_its_lock_on_a_daemon_thread_until_it_releases_it(root: Path) -> None:
    before = heartbeat_threads()
    with writer_lock(root, "prune", heartbeat_s=0.02) as held:
        first = lock_json(root)
        seen = {first["refreshed"]}
        while len(seen) < 3:  # two refreshes
            wait_for(lambda: lock_json(root)["refreshed"] not in seen, "a refresh")
            current = lock_json(root)
            assert datetime.fromisoformat(current["refreshed"]) > max(datetime.fromisoformat(t) for t in seen)
            assert (current["token"], current["since"]) == (held.token, first["since"])
            seen.add(current["refreshed"])
    assert read_lock(root) is None
    assert heartbeat_threads() <= before, "the heartbeat thread ended with the lock"


@pytest.mark.parametrize("written", ["refreshed", "since only (an older writer)"])
def test_a_lock_another_host_stopped_refreshing_is_taken_over_with_a_warning(
    root: Path, written: str, caplog: pytest.LogCaptureFixture
) -> None:
    limit = timedelta(seconds=STALE_AFTER_S)
    assert limit == timedelta(minutes=45)
    if written == "refreshed":
        stale = other_host_lock(since=timedelta(hours=3), refreshed=limit + timedelta(minutes=1))
    else:
        stale = other_host_lock(since=limit + timedelta(minutes=1), refreshed=None)
    lock_path(root).write_bytes(stale)
    caplog.set_level(logging.WARNING, logger="catalog.lock")
    with writer_lock(root, "snapshot") as held:
        assert (lock_json(root)["pid"], lock_json(root)["token"]) == (os.getpid(), held.token)
    assert read_lock(root) is None
    old = json.loads(stale)
    last = old.get("refreshed", old["since"])
    assert f"removing the stale writer lock of pid 4242 on backup02 (prune, since {old['since']}" in caplog.text
    assert f"last refreshed {datetime.fromisoformat(last).isoformat(timespec='seconds')}" in caplog.text
    assert "more than 45 minutes ago" in caplog.text


def test_a_lock_another_host_refreshed_in_time_is_refused_and_kept(root: Path) -> None:
    fresh = other_host_lock(since=timedelta(days=3), refreshed=timedelta(minutes=40))  # a long job, alive
    lock_path(root).write_bytes(fresh)
    with pytest.raises(Locked, match="pid 4242 on backup02") as err, writer_lock(root, "snapshot"):
        pass
    assert err.value.exit_code == 3
    with pytest.raises(Locked):
        break_lock(root)  # toolkit unlock without options
    assert lock_path(root).read_bytes() == fresh
    # The stale limit decides: under 30 minutes the same lock is a dead writer's.
    with writer_lock(root, "snapshot", stale_after_s=30 * 60) as held:
        assert lock_json(root)["token"] == held.token


@pytest.mark.parametrize("since", ["2026-11-20T02:30:00", "t"])
def test_a_lock_of_another_host_whose_time_does_not_parse_is_never_taken_over(root: Path, since: str) -> None:
    lock = {"owner": "backup", "pid": 4242, "host": "backup02", "command": "prune", "since": since}
    lock_path(root).write_text(json.dumps(lock))
    with pytest.raises(Locked), writer_lock(root, "snapshot", stale_after_s=0):
        pass
    assert json.loads(lock_path(root).read_text()) == lock


def test_unlock_removes_a_lock_not_refreshed_in_time_without_an_option(root: Path) -> None:
    stale = other_host_lock(since=timedelta(hours=3), refreshed=timedelta(minutes=46))
    lock_path(root).write_bytes(stale)
    removed = break_lock(root)
    assert removed is not None and (removed.pid, removed.host) == (4242, "backup02")
    assert read_lock(root) is None


def test_a_refresh_never_overwrites_a_lock_another_writer_took(root: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="catalog.lock")
    other = other_host_lock(since=timedelta(0), refreshed=timedelta(0))
    with writer_lock(root, "snapshot", heartbeat_s=3600) as held:
        lock_path(root).write_bytes(other)  # what a writer on backup02 that took the lock over wrote
        held.refresh()
        assert lock_path(root).read_bytes() == other
        assert "no longer held by this snapshot: prune of backup, pid 4242 on backup02" in caplog.text
        with pytest.raises(LockLost, match="pid 4242 on backup02"):
            held.check()
    assert lock_path(root).read_bytes() == other, "releasing leaves the other writer's lock alone"


def test_a_holder_whose_lock_was_taken_over_commits_no_snapshot(root: Path) -> None:
    repo = Repository.open(root)
    doc = {"created_at": "2026-11-20T02:30:00+00:00", "hostname": "h", "sources": [], "stats": {}, "volumes": []}
    other = other_host_lock(since=timedelta(0), refreshed=timedelta(0))
    try:
        with repo.writing("snapshot"):
            lock_path(root).write_bytes(other)
            with pytest.raises(LockLost) as err:
                repo.write_snapshot(doc)
        assert not list((root / "snapshots").iterdir()) and not repo.index.snapshot_ids()
    finally:
        repo.close()
    assert err.value.exit_code == 3 and err.value.code == "lock_lost"
    assert str(err.value).startswith("the writer lock was taken over (prune of backup, pid 4242 on backup02")
    assert "because this snapshot did not refresh it for 45 minutes; nothing was committed" in str(err.value)
    assert lock_path(root).read_bytes() == other


def test_a_holder_whose_lock_was_removed_removes_no_snapshot(root: Path) -> None:
    repo = Repository.open(root)
    try:
        with repo.writing("snapshot"):
            snap_id = repo.write_snapshot(
                {"created_at": "2026-11-20T02:30:00+00:00", "hostname": "h", "sources": [], "stats": {}, "volumes": []}
            )
        with repo.writing("prune"):
            lock_path(root).unlink()  # toolkit unlock --force, run elsewhere
            with pytest.raises(LockLost, match=r"taken over \(it was removed\)"):
                repo.forget_snapshot(snap_id)
        assert repo.index.snapshot_ids() == {snap_id}
        assert (root / "snapshots" / f"{snap_id}.json").exists()
    finally:
        repo.close()
    assert read_lock(root) is None


def test_the_next_writer_removes_drafts_that_killed_processes_left(root: Path) -> None:
    locks = root / "locks"
    old_writer, old_reader = locks / ".writer.0123abcd", locks / ".reader-aa.0123abcd"
    fresh = locks / ".writer.4567ef01"  # another writer's, between its write and its link
    for path in (old_writer, old_reader, fresh):
        path.write_bytes(b"{}")
    hour_ago = time.time() - 3600
    for path in (old_writer, old_reader):
        os.utime(path, (hour_ago, hour_ago))
    with writer_lock(root, "snapshot"):
        pass
    assert sorted(p.name for p in locks.iterdir()) == [fresh.name]
    assert sweep_drafts(root, 60.0, now=time.time() + 120) == [fresh]

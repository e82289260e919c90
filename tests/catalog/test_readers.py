"""Reader files of a directory repository: refreshed while the reader runs, gone when it is done, and removed by
whoever lists the readers once another host stopped refreshing them."""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import catalog.lock
from catalog.lock import STALE_AFTER_S, live_readers, register_reader
from catalog.repo import Repository

from .test_lock import DEADLINE_S, wait_for


def reader_files(root: Path) -> dict[str, dict[str, Any]]:
    """The reader files by name, with their JSON (drafts, which a refresh renames into place, left out)."""
    out: dict[str, dict[str, Any]] = {}
    for p in (root / "locks").glob("reader-*"):
        try:
            out[p.name] = json.loads(p.read_bytes())
        except FileNotFoundError:
            continue
    return out


def lock_dir(root: Path) -> list[str]:
    """Every name under locks/, drafts included."""
    return sorted(p.name for p in (root / "locks").iterdir())


def heartbeat_alive(name: str) -> bool:
    return any(t.name == f"heartbeat-{name}" for t in threading.enumerate())


def other_reader(
    *, pid: int = 4343, host: str = "restore-host", since: timedelta, refreshed: timedelta | None, now: datetime
) -> bytes:
    """A reader file as a restore of ``pid`` on ``host`` writes it, ``since`` and ``refreshed`` ago (None: without
    ``refreshed``, as written before reader files were refreshed)."""
    info: dict[str, Any] = {"owner": "backup", "pid": pid, "host": host, "command": "restore"}
    info["since"] = (now - since).isoformat()
    if refreshed is not None:
        info |= {"token": "", "refreshed": (now - refreshed).isoformat()}
    return json.dumps(info).encode()


def test_a_refresh_rewrites_the_reader_file_with_a_newer_time_and_nothing_else(root: Path) -> None:
    reader = register_reader(root, "restore", heartbeat_s=3600)
    assert reader is not None
    try:
        first = json.loads(reader.path.read_bytes())
        assert (first["host"], first["pid"], first["command"]) == (socket.gethostname(), os.getpid(), "restore")
        assert first["refreshed"] == first["since"]
        later = datetime.now(UTC) + timedelta(minutes=5)
        reader.refresh(now=later)
        second = json.loads(reader.path.read_bytes())
        assert datetime.fromisoformat(second["refreshed"]) == later
        assert second | {"refreshed": first["refreshed"]} == first, "only the time changed"
        assert lock_dir(root) == [reader.name], "no draft left behind"
    finally:
        reader.withdraw()
    assert not reader.path.exists()
    reader.refresh()  # after the withdrawal: writes nothing
    assert lock_dir(root) == []


def test_an_open_repository_refreshes_its_reader_file_until_it_is_closed(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("catalog.lock.HEARTBEAT_S", 0.02)
    repo = Repository.open(root)
    try:
        ((name, first),) = reader_files(root).items()
        assert name.startswith("reader-") and first["pid"] == os.getpid()
        seen = {first["refreshed"]}
        while len(seen) < 3:  # two refreshes
            wait_for(lambda: reader_files(root)[name]["refreshed"] not in seen, "a refresh")
            current = reader_files(root)[name]
            assert datetime.fromisoformat(current["refreshed"]) > max(datetime.fromisoformat(t) for t in seen)
            assert current["since"] == first["since"]
            seen.add(current["refreshed"])
        assert heartbeat_alive(name)
    finally:
        repo.close()
    assert reader_files(root) == {}, "removed when the repository was closed"
    wait_for(lambda: not heartbeat_alive(name), "the heartbeat thread to end")
    assert reader_files(root) == {}, "and not written again"


def test_a_refresh_in_flight_when_the_reader_withdraws_leaves_no_file(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The refresh has written its draft and is held before renaming it into place; the reader withdraws (and
    gives up waiting for it); the rename then lands, and the refresh removes what it put back."""
    real_draft = catalog.lock.write_draft
    held, release = threading.Event(), threading.Event()
    drafts: list[Path] = []

    def slow_draft(root: Path, data: bytes, target: Path, *, sync: bool = True) -> Path:
        draft = real_draft(root, data, target, sync=sync)
        drafts.append(draft)
        if len(drafts) == 2:  # the first refresh (the first draft was the announcement)
            held.set()
            release.wait(DEADLINE_S)
        return draft

    monkeypatch.setattr("catalog.lock.write_draft", slow_draft)
    reader = register_reader(root, "restore", heartbeat_s=0.01)
    assert reader is not None
    reader.withdraw_wait_s = 0.05
    try:
        assert held.wait(DEADLINE_S), "no refresh started"
        reader.withdraw()
        assert not reader.path.exists()
    finally:
        release.set()
    wait_for(lambda: not heartbeat_alive(reader.name), "the heartbeat thread to end")
    assert len(drafts) == 2, "no refresh after the withdrawal"
    assert lock_dir(root) == [], "the refresh that landed late removed what it wrote, and left no draft"


def test_a_refresh_that_fails_is_a_warning(
    root: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    reader = register_reader(root, "verify", heartbeat_s=3600)
    assert reader is not None
    before = reader.path.read_bytes()

    def full(root: Path, data: bytes, target: Path, *, sync: bool = True) -> Path:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr("catalog.lock.write_draft", full)
    caplog.set_level(logging.WARNING, logger="catalog.lock")
    reader.refresh()  # does not raise
    assert f"could not refresh the reader announcement {reader.path}" in caplog.text
    assert "Input/output error" in caplog.text and "once it is 45 minutes old" in caplog.text
    assert reader.path.read_bytes() == before
    reader.withdraw()
    assert not reader.path.exists()


def test_a_reader_that_cannot_write_its_file_goes_unannounced(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def read_only(root: Path, data: bytes, target: Path, *, sync: bool = True) -> Path:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr("catalog.lock.write_draft", read_only)
    threads = threading.active_count()
    assert register_reader(root, "verify") is None
    assert threading.active_count() == threads, "no heartbeat started"
    repo = Repository.open(root)
    try:
        assert repo.index.snapshot_ids() == set()
    finally:
        repo.close()
    assert lock_dir(root) == []


def test_live_readers_remove_reader_files_another_host_stopped_refreshing(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    now = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
    limit = timedelta(seconds=STALE_AFTER_S)
    assert limit == timedelta(minutes=45)
    locks = root / "locks"
    files = {
        "reader-fresh": other_reader(pid=1, since=timedelta(days=2), refreshed=timedelta(minutes=3), now=now),
        "reader-dead": other_reader(pid=2, since=timedelta(days=2), refreshed=limit + timedelta(minutes=1), now=now),
        "reader-old-format-young": other_reader(pid=3, since=limit - timedelta(minutes=1), refreshed=None, now=now),
        "reader-old-format-dead": other_reader(pid=4, since=limit + timedelta(minutes=1), refreshed=None, now=now),
        "reader-no-time": json.dumps({"owner": "x", "pid": 5, "host": "h", "command": "c", "since": "t"}).encode(),
        # This host: judged by its process only, however old its time.
        "reader-here-running": other_reader(
            pid=os.getppid(), host=socket.gethostname(), since=timedelta(days=2), refreshed=timedelta(days=1), now=now
        ),
        "reader-here-gone": other_reader(
            pid=2**22 + 1, host=socket.gethostname(), since=timedelta(0), refreshed=timedelta(0), now=now
        ),
    }
    for name, data in files.items():
        (locks / name).write_bytes(data)
    caplog.set_level(logging.WARNING, logger="catalog.lock")

    assert sorted(r.pid for r in live_readers(root, now=now)) == sorted([1, 3, 5, os.getppid()])
    assert sorted(p.name for p in locks.iterdir()) == [
        "reader-fresh",
        "reader-here-running",
        "reader-no-time",
        "reader-old-format-young",
    ]
    dead = json.loads(files["reader-dead"])
    assert (
        f"removing the reader announcement of pid 2 on restore-host (restore, since {dead['since']}, last refreshed "
        f"{datetime.fromisoformat(dead['refreshed']).isoformat(timespec='seconds')}): not refreshed since"
    ) in caplog.text
    assert "more than 45 minutes ago, so that reader is gone" in caplog.text
    assert "pid 4 on restore-host" in caplog.text
    # The limit decides: under 2 minutes the other host's young ones are dead readers' too.
    assert sorted(r.pid for r in live_readers(root, now=now, stale_after_s=120)) == [5, os.getppid()]


def test_a_reader_file_refreshed_while_it_was_judged_is_kept() -> None:
    now = datetime.now(UTC)
    stale = other_reader(since=timedelta(days=1), refreshed=timedelta(hours=1), now=now)
    fresh = other_reader(since=timedelta(days=1), refreshed=timedelta(0), now=now)
    reads = {"reader-back": [stale, fresh], "reader-gone": [stale, None]}
    removed: list[str] = []

    def read(name: str) -> bytes | None:
        return reads[name].pop(0)

    found = catalog.lock.judge_readers(sorted(reads), read, removed.append, now=now, stale_after_s=STALE_AFTER_S)
    assert [r.host for r in found] == ["restore-host"], "the one that came back is a reader"
    assert removed == [], "nothing removed: one was refreshed, the other removed meanwhile"

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from catalog.index import SnapshotRow
from catalog.prune import NothingToKeep, Policy, select_snapshots


def snaps(*times: datetime) -> list[SnapshotRow]:
    return [SnapshotRow(f"s{i:03d}", t.isoformat(), "h", ["ds"], {}) for i, t in enumerate(times)]


START = datetime(2026, 1, 1, 3, 0, tzinfo=UTC)


def nightly(days: int) -> list[SnapshotRow]:
    return snaps(*(START + timedelta(days=d) for d in range(days)))


def test_keep_last() -> None:
    rows = nightly(10)
    assert set(select_snapshots(rows, Policy(last=3))) == {"s009", "s008", "s007"}


def test_keep_daily_takes_the_newest_of_each_day() -> None:
    rows = snaps(START, START + timedelta(hours=5), START + timedelta(days=1), START + timedelta(days=1, hours=1))
    assert set(select_snapshots(rows, Policy(daily=2))) == {"s001", "s003"}


def test_weekly_monthly_yearly_buckets() -> None:
    rows = nightly(400)
    kept = select_snapshots(rows, Policy(daily=7, weekly=4, monthly=12, yearly=2))
    days = sorted(datetime.fromisoformat(r.created_at) for r in rows if r.id in kept)
    assert len([d for d in days if d >= START + timedelta(days=393)]) == 7
    assert days[-1] == START + timedelta(days=399)  # the newest is always there
    assert START + timedelta(days=364) in days  # last snapshot of 2026 (yearly)
    assert len(kept) <= 7 + 4 + 12 + 2


def test_the_newest_snapshot_and_protected_ones_are_always_kept() -> None:
    rows = nightly(5)
    kept = select_snapshots(rows, Policy(weekly=1), {"s000": "last version of deleted volume ds/x.vmdk"})
    assert "s004" in kept and "s000" in kept
    assert kept["s000"] == ["last version of deleted volume ds/x.vmdk"]


def test_an_empty_policy_is_refused() -> None:
    with pytest.raises(NothingToKeep):
        select_snapshots(nightly(3), Policy())


def test_repacking_reports_the_live_bytes_it_plans_and_copies(tmp_path) -> None:
    import os
    from typing import Any

    from catalog.prune import prune
    from catalog.repo import Repository

    from .test_crypto import CHUNK, _ingest, _restore, _snapshot

    repo = Repository.init(tmp_path / "r", chunk_size=CHUNK, pack_target_bytes=200_000)  # about three chunks a pack
    first = os.urandom(10 * CHUNK)
    second = first[: 5 * CHUNK] + os.urandom(CHUNK) + first[6 * CHUNK :]  # a chunk amid live ones dies
    with repo.writing("snapshot"):
        _snapshot(repo, _ingest(repo, first), first)
    with repo.writing("snapshot"):
        kept = _ingest(repo, second)
        _snapshot(repo, kept, second)
    events: list[tuple[str, dict[str, Any]]] = []
    with repo.writing("prune"):
        report = prune(
            repo, Policy(last=1), now=datetime.now(UTC), repack_below=0.99, progress=lambda k, d: events.append((k, d))
        )
    assert report.packs_repacked > 0
    assert events[0][0] == "plan" and events[0][1]["bytes"] > 0
    assert {k for k, _ in events[1:]} == {"bytes"}
    assert sum(d["n"] for _, d in events[1:]) == events[0][1]["bytes"]
    assert _restore(repo, kept) == second
    repo.close()

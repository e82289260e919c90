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

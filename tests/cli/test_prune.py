"""prune: retention, protection of deleted volumes, space actually freed, repository still sound, readers."""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from catalog.prune import ReadersActive
from toolkit.lab.corpus import make_volume

from ..conftest import Toolkit


def pack_bytes(repo: Path) -> int:
    return sum(p.stat().st_size for p in (repo / "packs").rglob("*") if p.is_file())


def test_prune_frees_space_keeps_deleted_volumes_and_verifies(toolkit: Toolkit, tmp_path: Path) -> None:
    root = tmp_path / "ds1"
    keep = make_volume(root, "cloudvolumes/apps/Keep.vmdk", size_mib=8, seed=1, real=False)
    gone = make_volume(root, "cloudvolumes/apps/Gone.vmdk", size_mib=8, seed=2, real=False)
    toolkit("init")
    assert toolkit("snapshot", str(root)).exit_code == 0
    # Three more versions of Keep, each with fresh random blocks that later snapshots no longer use.
    for _ in range(3):
        with keep.flat.open("r+b") as f:
            f.seek(1 << 20)
            f.write(os.urandom(2 << 20))
        assert toolkit("snapshot", str(root)).exit_code == 0
    for p in gone.files:
        p.unlink()
    assert toolkit("snapshot", str(root)).exit_code == 0
    before = pack_bytes(toolkit.repo)
    snaps = toolkit.json("snapshots")["snapshots"]
    assert len(snaps) == 5

    dry = toolkit.json("prune", "--keep-last", "1", "--dry-run")
    assert pack_bytes(toolkit.repo) == before
    assert len(toolkit.json("snapshots")["snapshots"]) == 5
    assert dry["bytes_freed"] > 0

    report = toolkit.json("prune", "--keep-last", "1")
    assert report["removed"] == dry["removed"]
    kept = report["kept"]
    # The snapshot holding Gone's last version stays, whatever the policy.
    assert any("last version of deleted volume ds1/cloudvolumes/apps/Gone.vmdk" in why for why in kept.values())
    assert len(kept) == 2
    after = pack_bytes(toolkit.repo)
    assert after < before - (3 << 20)  # the overwritten random blocks of older versions are gone
    assert report["bytes_freed"] == before - after

    assert toolkit("verify", "--read-data").exit_code == 0
    out = tmp_path / "out"
    r = toolkit("restore", "--as-of", datetime.now(UTC).isoformat(), "--to", str(out))
    assert r.exit_code == 0
    assert (out / "cloudvolumes/apps/Keep-flat.vmdk").read_bytes() == keep.flat.read_bytes()
    first = snaps[0]["id"]
    r = toolkit("restore", "--as-of", first, "--volume", "Gone", "--to", str(tmp_path / "gone"))
    assert r.exit_code == 2  # that snapshot was pruned
    assert "no snapshot has an id starting with" in r.stderr
    r = toolkit("restore", "--as-of", snaps[3]["id"], "--volume", "Gone", "--to", str(tmp_path / "gone2"))
    assert r.exit_code == 0, r.stdout + r.stderr
    assert (tmp_path / "gone2/cloudvolumes/apps/Gone.vmdk").exists()


def test_prune_needs_a_policy(toolkit: Toolkit, tmp_path: Path) -> None:
    toolkit("init")
    r = toolkit("prune")
    assert r.exit_code == 2
    assert "keeps no snapshot" in r.stderr


def other_host_reader(toolkit: Toolkit, since: timedelta, refreshed: timedelta | None) -> Path:
    """A reader file as a restore on another host writes it, ``since`` and ``refreshed`` ago (None: without
    ``refreshed``, as written before reader files were refreshed); its path."""
    now = datetime.now(UTC)
    info: dict[str, object] = {"owner": "backup", "pid": 4343, "host": "restore-host", "command": "restore"}
    info["since"] = (now - since).isoformat()
    if refreshed is not None:
        info |= {"token": "", "refreshed": (now - refreshed).isoformat()}
    path = toolkit.repo / "locks" / f"reader-{'7e' * 16}"
    path.write_text(json.dumps(info))
    return path


@pytest.mark.parametrize("field", ["refreshed", "since"])
def test_a_reader_of_another_host_blocks_prune_until_its_file_is_no_longer_refreshed(
    toolkit: Toolkit, tmp_path: Path, field: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A restore on another host sharing the directory (NFS) blocks prune while it refreshes its reader file;
    once that host died the file goes stale, and the next prune removes it, says whose it was, and runs. A file
    without ``refreshed`` (an older toolkit's) ages from ``since``."""
    root = tmp_path / "ds1"
    make_volume(root, "cloudvolumes/apps/Keep.vmdk", size_mib=4, seed=1, real=False)
    toolkit("init")
    for _ in range(2):
        assert toolkit("snapshot", "--rehash", str(root)).exit_code == 0
    first, second = (s["id"] for s in toolkit.json("snapshots")["snapshots"])
    recent, old = timedelta(minutes=5), timedelta(minutes=50)  # the limit is 45 minutes
    age = {"refreshed": (timedelta(days=3), recent), "since": (recent, None)}[field]
    reader = other_host_reader(toolkit, *age)
    r = toolkit("prune", "--keep-last", "1")
    assert r.exit_code == ReadersActive.exit_code == 3, r.stdout + r.stderr
    assert "restore pid 4343 on restore-host" in r.stderr
    assert reader.exists() and len(toolkit.json("snapshots")["snapshots"]) == 2

    age = {"refreshed": (timedelta(days=3), old), "since": (old, None)}[field]
    reader = other_host_reader(toolkit, *age)
    caplog.set_level(logging.WARNING, logger="catalog.lock")
    r = toolkit("prune", "--keep-last", "1", json_out=True)
    assert r.exit_code == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["removed"] == [first]
    assert not reader.exists() and not list((toolkit.repo / "locks").iterdir()), "prune's own files are gone too"
    assert "removing the reader announcement of pid 4343 on restore-host (restore, since" in caplog.text
    assert "more than 45 minutes ago, so that reader is gone" in caplog.text
    assert [s["id"] for s in toolkit.json("snapshots")["snapshots"]] == [second]
    assert toolkit("verify", "--read-data").exit_code == 0

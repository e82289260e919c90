"""`toolkit repair`: salvage of damaged packs, what it lists as lost, exit codes; healing by the next snapshot."""

from __future__ import annotations

import json
import os
import random
from datetime import UTC, datetime
from pathlib import Path

import pytest

from catalog import pack
from catalog.assemble import load_manifest
from catalog.errors import Locked
from catalog.keys import unlock
from catalog.lock import writer_lock
from catalog.repo import Repository, read_config
from catalog.salvage import PackNotFound
from catalog.types import HOLE_ID, TYPE_DATA
from toolkit.lab.corpus import make_volume

from ..conftest import Toolkit

APPS = "cloudvolumes/apps"
VISIO = f"ds1/{APPS}/Visio.vmdk"
PROJECT = f"ds1/{APPS}/Project.vmdk"
MIB = 1 << 20


def random_volume(root: Path, name: str, size_mib: int, seed: int) -> None:
    make_volume(root, f"{APPS}/{name}.vmdk", size_mib=size_mib, seed=seed, real=False)
    rng = random.Random(seed)
    with (root / f"{APPS}/{name}-flat.vmdk").open("r+b") as f:
        for off in range(0, size_mib * MIB, MIB):
            f.seek(off)
            f.write(rng.randbytes(MIB))


@pytest.fixture
def site(toolkit: Toolkit, tmp_path: Path) -> Path:
    root = tmp_path / "ds1"
    random_volume(root, "Visio", 4, seed=1)
    random_volume(root, "Project", 4, seed=2)
    assert toolkit("init", "--chunk-size", "64K").exit_code == 0
    assert toolkit("snapshot", str(root)).exit_code == 0
    return root


def open_repo(path: Path) -> Repository:
    """Open read-only, unlocking an encrypted repository with TOOLKIT_PASSPHRASE."""
    config = read_config(path)
    if config.encryption is None:
        return Repository.open(path, readonly=True)
    keys, _slot = unlock(path, config.id, config.encryption, os.environ["TOOLKIT_PASSPHRASE"])
    return Repository.open(path, readonly=True, keys=keys)


def chunk_of(toolkit: Toolkit, name: str, index: int = 5) -> tuple[str, int, int, bytes]:
    """(pack id, offset, stored size, chunk id) of one data chunk of a volume's flat file (newest version)."""
    repo = open_repo(toolkit.repo)
    try:
        version = [v for v in repo.index.all_versions() if v.name == name][-1]
        flat = next(f for f in repo.index.files(version.version_id) if f.role == "extent")
        ids = [c for c in load_manifest(repo.index, repo.reader, flat.manifest_id).chunk_ids if c != HOLE_ID]
        loc = repo.index.locate(ids[index])
        assert loc is not None
        return loc.pack_id, loc.offset, loc.stored_size, ids[index]
    finally:
        repo.close()


def pack_file(toolkit: Toolkit, pack_id: str) -> Path:
    return toolkit.repo / "packs" / pack_id[:2] / pack_id


def flip(path: Path, offset: int) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x20]))


def repair_json(toolkit: Toolkit, *args: str, code: int) -> dict:
    r = toolkit("--json", "repair", *args)
    assert r.exit_code == code, r.stdout + r.stderr
    return json.loads(r.stdout)


def test_a_bit_flip_is_salvaged_listed_as_lost_and_healed_by_the_next_snapshot(toolkit: Toolkit, site: Path) -> None:
    pack_id, offset, stored, cid = chunk_of(toolkit, "Visio")
    records = len(pack.parse_pack(pack_id, pack_file(toolkit, pack_id).read_bytes()))
    flip(pack_file(toolkit, pack_id), offset + stored // 3)
    snap = toolkit.json("snapshots")["snapshots"][0]["id"]

    # Human output names the pack, what was recovered, and each lost version with its size.
    r = toolkit("repair")
    assert r.exit_code == 1, r.stdout + r.stderr
    assert f"DAMAGED pack {pack_id[:12]}" in r.stdout
    assert f"{records - 1} chunk(s) recovered" in r.stdout and "1 lost" in r.stdout
    assert f"moved to quarantine/{pack_id}" in r.stdout
    assert (
        f"LOST {VISIO} in snapshot {snap[:12]}" in r.stdout
        and f"{APPS}/Visio-flat.vmdk: 1 chunk(s), 64.0 KiB" in r.stdout
    )
    assert (toolkit.repo / "quarantine" / pack_id).exists() and not pack_file(toolkit, pack_id).exists()

    # JSON says the same; a second run has nothing left to salvage but still reports the loss.
    report = repair_json(toolkit, code=1)
    assert report["damaged"] == [] and report["lost_chunks"] == 1
    assert report["lost"] == [
        {
            "volume": VISIO,
            "snapshot": snap,
            "created_at": report["lost"][0]["created_at"],
            "path": f"{APPS}/Visio-flat.vmdk",
            "lost_chunks": 1,
            "lost_bytes": 65536,
            "manifest_lost": False,
        }
    ]

    # verify names the lost version (at every level), Project restores, Visio does not.
    for args in ((), ("--read-data",)):
        r = toolkit("--json", "verify", *args)
        assert r.exit_code == 1
        (problem,) = json.loads(r.stdout)["problems"]
        assert problem["kind"] == "lost" and problem["chunk_ids"] == [cid.hex()]
        assert [(a["volume"], a["snapshot"]) for a in problem["affected"]] == [(VISIO, snap)]
    out = toolkit.repo.parent / "out"
    when = datetime.now(UTC).isoformat()
    assert toolkit("restore", "--as-of", when, "--volume", "Project", "--to", str(out)).exit_code == 0
    assert toolkit("restore", "--as-of", when, "--volume", "Visio", "--to", str(out)).exit_code == 1

    # The volume is still on the datastore: the next snapshot reads it again (although unchanged) and heals.
    r = toolkit("--json", "snapshot", str(site))
    assert r.exit_code == 0, r.stdout + r.stderr
    stats = json.loads(r.stdout)["stats"]
    assert stats["new_chunks"] == 1 and stats["bytes_read"] >= 4 * MIB
    assert toolkit("verify", "--read-data").exit_code == 0
    assert repair_json(toolkit, code=0)["lost"] == []
    assert toolkit("restore", "--as-of", when, "--volume", "Visio", "--to", str(out)).exit_code == 0
    assert (out / f"{APPS}/Visio-flat.vmdk").read_bytes() == (site / f"{APPS}/Visio-flat.vmdk").read_bytes()


def test_a_version_whose_data_is_gone_from_the_datastore_stays_damaged(toolkit: Toolkit, site: Path) -> None:
    """Visio changed after the first snapshot: the old chunk is on no datastore, so the old version stays lost."""
    first = toolkit.json("snapshots")["snapshots"][0]["id"]
    pack_id, offset, stored, cid = chunk_of(toolkit, "Visio", index=7)
    flat = site / f"{APPS}/Visio-flat.vmdk"
    with flat.open("r+b") as f:  # overwrite exactly that chunk's range on the datastore
        f.seek(7 * 65536)
        f.write(random.Random(99).randbytes(65536))
    assert toolkit("snapshot", str(site)).exit_code == 0
    flip(pack_file(toolkit, pack_id), offset + stored // 2)

    report = repair_json(toolkit, code=1)
    assert [(f["volume"], f["snapshot"]) for f in report["lost"]] == [(VISIO, first)]
    assert toolkit("snapshot", str(site)).exit_code == 0  # nothing on the datastore has that chunk any more
    r = toolkit("--json", "verify", "--read-data")
    assert r.exit_code == 1
    (problem,) = json.loads(r.stdout)["problems"]
    assert problem["kind"] == "lost" and problem["chunk_ids"] == [cid.hex()]
    assert [(a["volume"], a["snapshot"]) for a in problem["affected"]] == [(VISIO, first)]
    text = toolkit("verify", "--read-data").stdout
    assert f"affects {VISIO} in snapshot {first[:12]}" in text and "LOST:" in text


def test_a_truncated_trailer_is_salvaged_whole(toolkit: Toolkit, site: Path) -> None:
    pack_id, *_ = chunk_of(toolkit, "Project")
    path = pack_file(toolkit, pack_id)
    os.truncate(path, path.stat().st_size - 30)
    report = repair_json(toolkit, code=0)
    (damaged,) = report["damaged"]
    assert damaged["pack_id"] == pack_id and damaged["chunks_lost"] == []
    assert report["ok"] and report["lost"] == [] and len(report["new_packs"]) >= 1
    assert damaged["quarantined"] == f"quarantine/{pack_id}"
    assert toolkit("verify", "--read-data").exit_code == 0


def test_a_torn_tail_loses_only_what_was_torn(toolkit: Toolkit, site: Path) -> None:
    pack_id, *_ = chunk_of(toolkit, "Project", index=9)
    path = pack_file(toolkit, pack_id)
    entries = pack.parse_pack(pack_id, path.read_bytes())
    assert len(entries) >= 3 and all(e.type == TYPE_DATA for e in entries)
    os.truncate(path, entries[-2].offset + 100)  # torn inside the second last record
    report = repair_json(toolkit, code=1)
    (damaged,) = report["damaged"]
    assert sorted(damaged["chunks_lost"]) == sorted(e.chunk_id.hex() for e in entries[-2:])
    assert damaged["chunks_recovered"] == len(entries) - 2
    assert report["lost_chunks"] == 2
    assert {f["volume"] for f in report["lost"]} == {PROJECT}
    assert sum(f["lost_bytes"] for f in report["lost"]) == sum(e.raw_size for e in entries[-2:])
    assert toolkit("snapshot", str(site)).exit_code == 0
    assert toolkit("verify", "--read-data").exit_code == 0


def test_dry_run_reports_and_changes_nothing(toolkit: Toolkit, site: Path) -> None:
    pack_id, offset, _stored, _cid = chunk_of(toolkit, "Visio")
    flip(pack_file(toolkit, pack_id), offset + 9)
    before = sorted(p.relative_to(toolkit.repo) for p in toolkit.repo.rglob("*") if "catalog.db" not in p.name)
    report = repair_json(toolkit, "--dry-run", code=1)
    assert report["dry_run"] and [d["pack_id"] for d in report["damaged"]] == [pack_id]
    assert report["new_packs"] == [] and report["damaged"][0]["quarantined"] is None
    assert [f["volume"] for f in report["lost"]] == [VISIO]
    after = sorted(p.relative_to(toolkit.repo) for p in toolkit.repo.rglob("*") if "catalog.db" not in p.name)
    assert after == before
    assert "would be recovered" in toolkit("repair", "--dry-run").stdout


def test_lost_state_survives_rebuilding_the_catalog(toolkit: Toolkit, site: Path) -> None:
    pack_id, offset, _stored, cid = chunk_of(toolkit, "Visio")
    flip(pack_file(toolkit, pack_id), offset + 9)
    assert toolkit("repair").exit_code == 1
    for p in toolkit.repo.glob("catalog.db*"):
        p.unlink()
    r = toolkit("--json", "repair", "--rebuild-catalog")
    assert r.exit_code == 0, r.stderr  # the rebuild itself succeeded; it says what is lost
    result = json.loads(r.stdout)
    assert (result["quarantined_packs"], result["lost_chunks"]) == (1, 1)
    assert "run: toolkit repair" in toolkit("repair", "--rebuild-catalog").stdout
    r = toolkit("--json", "verify")
    assert r.exit_code == 1
    (problem,) = json.loads(r.stdout)["problems"]
    assert (problem["kind"], problem["pack_id"], problem["chunk_ids"]) == ("lost", pack_id, [cid.hex()])
    both = repair_json(toolkit, "--rebuild-catalog", "--salvage", code=1)
    assert both["rebuild"]["lost_chunks"] == 1 and both["lost_chunks"] == 1
    assert toolkit("snapshot", str(site)).exit_code == 0  # heals after a rebuild too
    assert toolkit("verify", "--read-data").exit_code == 0


def test_bad_usage_and_a_busy_repository(toolkit: Toolkit, site: Path) -> None:
    assert toolkit("repair", "--rebuild-catalog", "--dry-run").exit_code == 2
    r = toolkit("--json", "repair", "--pack", "feedfacefeedface")
    assert r.exit_code == PackNotFound.exit_code == 2
    assert json.loads(r.stdout.splitlines()[0])["code"] == "pack_not_found"
    pack_id, *_ = chunk_of(toolkit, "Visio")
    one = repair_json(toolkit, "--pack", pack_id[:12], code=0)
    assert one["packs_checked"] == 1
    with writer_lock(toolkit.repo, "snapshot"):
        assert toolkit("repair").exit_code == Locked.exit_code == 3


# -- storage health --------------------------------------------------------------------------------


@pytest.fixture
def flaky_pack(toolkit: Toolkit, site: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """One pack whose first read of one chunk returns a flipped bit; every later read is sound."""
    import catalog.check as check

    pack_id, offset, stored, cid = chunk_of(toolkit, "Visio")
    target = offset + stored // 2
    fired = {"n": 0}
    real_open = check.open_pack_file

    class Flaky:
        def __init__(self, path: Path) -> None:
            self.inner = real_open(path)
            self.path = path

        def size(self) -> int:
            return self.inner.size()

        def read(self, off: int, size: int) -> bytes:
            data = self.inner.read(off, size)
            if self.path.name == pack_id and off <= target < off + len(data) and fired["n"] == 0:
                fired["n"] += 1
                i = target - off
                data = data[:i] + bytes([data[i] ^ 0x80]) + data[i + 1 :]
            return data

        def close(self) -> None:
            self.inner.close()

    monkeypatch.setattr(check, "open_pack_file", Flaky)
    return cid.hex()


def test_a_read_that_fails_once_is_a_storage_health_warning(toolkit: Toolkit, flaky_pack: str) -> None:
    r = toolkit("verify", "--read-data")
    assert r.exit_code == 0, r.stdout
    assert "warning: storage health: chunk " + flaky_pack[:12] in r.stdout
    assert "1 storage-health warning(s)" in r.stdout and "DAMAGED" not in r.stdout
    runs = toolkit.json("verify", "--history")["runs"]
    assert runs[0]["ok"] and runs[0]["problems"] == 0
    assert len(runs[0]["detail"]["storage_health"]) == 1 and flaky_pack[:12] in runs[0]["detail"]["storage_health"][0]


def test_strict_makes_a_storage_health_warning_fail(toolkit: Toolkit, flaky_pack: str) -> None:
    r = toolkit("--json", "verify", "--read-data", "--strict")
    assert r.exit_code == 1
    report = json.loads(r.stdout)
    assert report["ok"] and report["problems"] == []
    assert [w["chunk_id"] for w in report["storage_health"]] == [flaky_pack]


def test_an_encrypted_repository_is_salvaged_and_healed(
    toolkit: Toolkit, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records are checked with the repository's keys; recovered ones keep their ciphertext."""
    monkeypatch.setenv("TOOLKIT_TESTONLY_WEAKEN_KDF", "1")
    monkeypatch.setenv("TOOLKIT_PASSPHRASE", "salvage passphrase")
    root = tmp_path / "ds1"
    random_volume(root, "Visio", 4, seed=1)
    assert toolkit("init", "--encryption", "aes-256-gcm", "--chunk-size", "64K").exit_code == 0
    assert toolkit("snapshot", str(root)).exit_code == 0
    pack_id, offset, stored, cid = chunk_of(toolkit, "Visio")
    records = len(pack.parse_pack(pack_id, pack_file(toolkit, pack_id).read_bytes()))
    flip(pack_file(toolkit, pack_id), offset + stored // 2)

    report = repair_json(toolkit, code=1)
    (damaged,) = report["damaged"]
    assert damaged["chunks_lost"] == [cid.hex()] and damaged["chunks_recovered"] == records - 1
    assert [f["volume"] for f in report["lost"]] == [VISIO]
    assert toolkit("verify", "--read-data").exit_code == 1
    assert toolkit("snapshot", str(root)).exit_code == 0
    assert toolkit("verify", "--read-data").exit_code == 0

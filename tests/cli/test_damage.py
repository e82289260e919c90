"""Damage to the repository: verify names it, exits 1, and repair rebuilds what can be rebuilt."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from toolkit.lab.corpus import make_volume

from ..conftest import Toolkit, run_toolkit

APP = "cloudvolumes/apps/Visio.vmdk"
OTHER = "cloudvolumes/apps/Project.vmdk"


@pytest.fixture
def filled(toolkit: Toolkit, tmp_path: Path) -> Toolkit:
    root = tmp_path / "ds1"
    make_volume(root, APP, size_mib=16, seed=3, real=True)
    make_volume(root, OTHER, size_mib=16, seed=4, real=True)
    toolkit("init")
    assert toolkit("snapshot", str(root)).exit_code == 0
    return toolkit


def _data_pack_of(toolkit: Toolkit, volume_path: str) -> tuple[str, int]:
    """A pack holding a data chunk of the volume's flat file, and that chunk's offset."""
    from catalog.assemble import load_manifest
    from catalog.repo import Repository
    from catalog.types import HOLE_ID

    repo = Repository.open(toolkit.repo, readonly=True)
    try:
        version = next(v for v in repo.index.all_versions() if v.path == volume_path)
        flat = next(f for f in repo.index.files(version.version_id) if f.role == "extent")
        manifest = load_manifest(repo.index, repo.reader, flat.manifest_id)
        cid = next(c for c in manifest.chunk_ids if c != HOLE_ID)
        loc = repo.index.locate(cid)
        return loc.pack_id, loc.offset
    finally:
        repo.close()


def _damaged(toolkit: Toolkit, *args: str) -> dict:
    r = toolkit("--json", "verify", *args)
    assert r.exit_code == 1, r.stdout + r.stderr
    import json

    return json.loads(r.stdout)


def test_a_clean_repository_verifies(filled: Toolkit) -> None:
    for args in ((), ("--read-data",), ("--read-data-subset", "50")):
        r = filled("verify", *args)
        assert r.exit_code == 0, r.stdout
        assert "ok:" in r.stdout


def test_a_flipped_byte_in_a_pack_names_pack_and_volume(filled: Toolkit) -> None:
    pack_id, offset = _data_pack_of(filled, APP)
    path = filled.repo / "packs" / pack_id[:2] / pack_id
    with path.open("r+b") as f:
        f.seek(offset + 100)
        b = f.read(1)
        f.seek(offset + 100)
        f.write(bytes([b[0] ^ 0x01]))
    assert filled("verify").exit_code == 0  # metadata level does not read data, and says so
    report = _damaged(filled, "--read-data")
    assert report["level"] == "data"
    kinds = {p["kind"] for p in report["problems"]}
    assert kinds == {"pack", "chunk"}
    chunk = next(p for p in report["problems"] if p["kind"] == "chunk")
    assert chunk["pack_id"] == pack_id
    assert {a["volume"] for a in chunk["affected"]} == {f"ds1/{APP}"}
    text = filled("verify", "--read-data").stdout
    assert pack_id[:12] in text and f"ds1/{APP}" in text


def test_a_truncated_pack(filled: Toolkit) -> None:
    pack_id, _ = _data_pack_of(filled, APP)
    path = filled.repo / "packs" / pack_id[:2] / pack_id
    os.truncate(path, path.stat().st_size // 2)
    report = _damaged(filled)  # even the metadata level sees the size change
    assert any(p["pack_id"] == pack_id for p in report["problems"])
    affected = {a["volume"] for p in report["problems"] for a in p["affected"]}
    assert f"ds1/{APP}" in affected


def test_a_deleted_pack(filled: Toolkit, tmp_path: Path) -> None:
    pack_id, _ = _data_pack_of(filled, APP)
    (filled.repo / "packs" / pack_id[:2] / pack_id).unlink()
    report = _damaged(filled)
    assert any("missing" in p["message"] for p in report["problems"])
    affected = {a["volume"] for p in report["problems"] for a in p["affected"]}
    assert f"ds1/{APP}" in affected
    # Restoring fails loudly for exactly the volumes verify named; no damaged file is left in place.
    r = filled("--json", "restore", "--as-of", datetime.now(UTC).isoformat(), "--to", str(tmp_path / "o"))
    assert r.exit_code == 1
    import json

    statuses = {v["key"]: v["status"] for v in json.loads(r.stdout)["volumes"]}
    assert statuses == {k: ("failed" if k in affected else "restored") for k in statuses}
    assert not (tmp_path / "o" / APP.replace(".vmdk", "-flat.vmdk")).exists()
    assert not [p for p in (tmp_path / "o").rglob("*") if "partial" in p.name]


def test_a_deleted_catalog_is_rebuilt_from_packs_and_documents(filled: Toolkit, tmp_path: Path) -> None:
    before = filled.json("volumes")["volumes"]
    snaps = filled.json("snapshots")["snapshots"]
    for p in filled.repo.glob("catalog.db*"):
        p.unlink()
    r = filled("repair", "--rebuild-catalog")
    assert r.exit_code == 0, r.stderr
    assert filled.json("snapshots")["snapshots"] == snaps
    assert filled.json("volumes")["volumes"] == before
    assert filled("verify", "--read-data").exit_code == 0
    out = tmp_path / "o"
    assert filled("restore", "--as-of", datetime.now(UTC).isoformat(), "--to", str(out)).exit_code == 0


def test_a_corrupt_catalog_gives_a_clear_error_and_rebuilds(filled: Toolkit) -> None:
    db = filled.repo / "catalog.db"
    for p in filled.repo.glob("catalog.db-*"):
        p.unlink()
    db.write_bytes(b"not a database" * 1000)
    proc = run_toolkit("--repo", str(filled.repo), "snapshots")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "repair --rebuild-catalog" in proc.stderr
    assert filled("repair", "--rebuild-catalog").exit_code == 0
    assert len(filled.json("snapshots")["snapshots"]) == 1


def test_subset_verification_rotates_through_every_pack(filled: Toolkit) -> None:
    from catalog.repo import Repository

    total = len(list((filled.repo / "packs").rglob("*/*")))
    seen_runs = 0
    while True:
        assert filled("verify", "--read-data-subset", "30").exit_code == 0
        seen_runs += 1
        repo = Repository.open(filled.repo, readonly=True)
        unverified = [p for p in repo.index.packs() if p[3] is None]
        repo.close()
        if not unverified:
            break
        assert seen_runs < 5, "30 % per run must cover everything within four runs"
    assert total > 3 and seen_runs >= 3


@pytest.mark.slow
def test_kill_9_during_snapshot_loses_nothing_committed(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    root = tmp_path / "ds1"
    make_volume(root, APP, size_mib=16, seed=5, real=True)
    env = {"TOOLKIT_PACK_MAX_BYTES": "1048576"}
    assert run_toolkit("--repo", str(repo), "init", env=env).returncode == 0
    assert run_toolkit("--repo", str(repo), "snapshot", str(root), env=env).returncode == 0
    t1 = datetime.now(UTC).isoformat()
    first_copy = {p.name: p.read_bytes() for p in (root / "cloudvolumes/apps").iterdir()}
    # A big incompressible volume makes the second snapshot slow enough to be killed mid-way.
    big = root / "cloudvolumes/apps/Big.vmdk"
    make_volume(root, "cloudvolumes/apps/Big.vmdk", size_mib=400, seed=6, real=False)
    with (root / "cloudvolumes/apps/Big-flat.vmdk").open("r+b") as f:
        for i in range(0, 400, 2):
            f.seek(i << 20)
            f.write(os.urandom(1 << 20))
    kills = 0
    for delay in (0.4, 0.8, 1.3):
        proc = subprocess.Popen(
            [sys.executable, "-m", "toolkit", "--repo", str(repo), "-q", "snapshot", str(root)],
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 1
    assert big.exists()
    # Earlier snapshots are intact; the next run finishes; everything verifies.
    out = tmp_path / "o"
    r = run_toolkit("--repo", str(repo), "restore", "--as-of", t1, "--to", str(out))
    assert r.returncode == 0, r.stderr
    for name, data in first_copy.items():
        assert (out / "cloudvolumes/apps" / name).read_bytes() == data
    r = run_toolkit("--repo", str(repo), "snapshot", str(root), env=env)
    assert r.returncode == 0, r.stderr
    r = run_toolkit("--repo", str(repo), "verify", "--read-data")
    assert r.returncode == 0, r.stdout + r.stderr
    assert not list((repo / "tmp").iterdir())

"""verify levels, the time budget, coverage, restore-path checks and the run history."""

from __future__ import annotations

from pathlib import Path

import pytest

from toolkit.lab.corpus import make_volume

from ..conftest import Toolkit


@pytest.fixture
def filled(toolkit: Toolkit, tmp_path: Path) -> Toolkit:
    root = tmp_path / "ds1"
    make_volume(root, "cloudvolumes/apps/Alpha.vmdk", size_mib=6, seed=11, real=False)
    make_volume(root, "cloudvolumes/apps/Beta.vmdk", size_mib=6, seed=12, real=False)
    toolkit("init")
    assert toolkit("snapshot", str(root)).exit_code == 0
    return toolkit


def test_budget_coverage_and_history(filled: Toolkit) -> None:
    none = filled.json("verify", "--max-duration", "0", "--coverage", "30")
    assert none["level"] == "data-subset"
    assert none["packs_read"] == 0
    assert "time budget reached" in none["warnings"][0]
    assert none["coverage"]["share"] == 0
    full = filled.json("verify", "--read-data", "--coverage", "30")
    assert full["level"] == "data"
    assert full["packs_read"] == full["packs_total"] > 3
    assert full["coverage"]["share"] == 1.0
    runs = filled.json("verify", "--history")["runs"]
    assert [r["level"] for r in runs] == ["data", "data-subset"]
    assert all(r["ok"] for r in runs)


def test_restore_path_check_names_exactly_the_damaged_volume(filled: Toolkit) -> None:
    from catalog.assemble import load_manifest
    from catalog.repo import Repository
    from catalog.types import HOLE_ID

    repo = Repository.open(filled.repo, readonly=True)
    version = next(v for v in repo.index.all_versions() if v.name == "Alpha")
    flat = next(f for f in repo.index.files(version.version_id) if f.role == "extent")
    cid = next(c for c in load_manifest(repo.index, repo.reader, flat.manifest_id).chunk_ids if c != HOLE_ID)
    loc = repo.index.locate(cid)
    repo.close()
    path = filled.repo / "packs" / loc.pack_id[:2] / loc.pack_id
    with path.open("r+b") as f:
        f.seek(loc.offset + 7)
        b = f.read(1)
        f.seek(loc.offset + 7)
        f.write(bytes([b[0] ^ 0x40]))
    ok = filled("--json", "verify", "--volume", "Beta")
    assert ok.exit_code == 0, ok.stdout
    bad = filled("--json", "verify", "--volume", "Alpha")
    assert bad.exit_code == 1
    import json

    report = json.loads(bad.stdout)
    assert report["level"] == "restore-path"
    assert report["problems"][0]["affected"][0]["volume"] == "ds1/cloudvolumes/apps/Alpha.vmdk"
    runs = filled.json("verify", "--history")["runs"]
    assert [(r["level"], r["ok"]) for r in runs] == [("restore-path", False), ("restore-path", True)]


def test_conflicting_options_are_usage_errors(filled: Toolkit) -> None:
    assert filled("verify", "--read-data", "--volume", "x").exit_code == 2
    assert filled("verify", "--as-of", "2026-01-01").exit_code == 2


def test_drill_restores_checks_times_cleans_up_and_rotates(toolkit: Toolkit, tmp_path: Path) -> None:
    root = tmp_path / "ds1"
    for i, name in enumerate(["One", "Two", "Three"]):
        make_volume(root, f"cloudvolumes/apps/{name}.vmdk", size_mib=16, seed=i, real=True)
    toolkit("init")
    assert toolkit("snapshot", str(root)).exit_code == 0
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    first = toolkit.json("verify", "--drill", "--sample", "2", "--scratch", str(scratch))
    assert first["ok"]
    drilled = [r["volume"] for r in first["results"]]
    assert len(drilled) == 2
    checks = " ".join(first["results"][0]["checks"])
    assert "qemu-img check passes" in checks or "qemu-img opens it" in checks
    assert "ntfs file system signature" in checks
    assert first["results"][0]["seconds_per_gib"] > 0
    assert list(scratch.iterdir()) == []  # always cleaned up
    second = toolkit.json("verify", "--drill", "--sample", "2", "--scratch", str(scratch))
    assert second["results"][0]["volume"] not in drilled  # the one never drilled goes first
    history = toolkit.json("verify", "--history")["runs"]
    assert [r["level"] for r in history] == ["drill", "drill"]


def test_a_drill_fails_on_a_disk_a_hypervisor_could_not_open(toolkit: Toolkit, tmp_path: Path) -> None:
    root = tmp_path / "ds1" / "cloudvolumes/apps"
    root.mkdir(parents=True)
    (root / "Broken.vmdk").write_text(
        '# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType="twoGbMaxExtentSparse"\n'
        'RW 8192 SPARSE "Broken-s001.vmdk"\n'
    )
    (root / "Broken-s001.vmdk").write_bytes(b"not a sparse extent header" * 200)
    toolkit("init")
    assert toolkit("snapshot", str(tmp_path / "ds1")).exit_code == 0
    r = toolkit("--json", "verify", "--drill", "--all")
    import json

    out = json.loads(r.stdout)
    assert r.exit_code == 1
    assert "qemu-img check failed" in " ".join(out["results"][0]["problems"])
    assert toolkit.json("verify", "--history")["runs"][0]["ok"] is False


def test_live_verify_finds_drift_missing_and_replica_mismatch(toolkit: Toolkit, tmp_path: Path) -> None:
    import json
    import os
    import shutil

    ds1, ds2 = tmp_path / "ds1", tmp_path / "ds2"
    a = make_volume(ds1, "cloudvolumes/apps/Alpha.vmdk", size_mib=4, seed=1, real=False)
    b = make_volume(ds1, "cloudvolumes/apps/Beta.vmdk", size_mib=4, seed=2, real=False)
    shutil.copytree(ds1, ds2)  # a storage-group replica
    toolkit("init")
    assert toolkit("snapshot", str(ds1), str(ds2)).exit_code == 0
    clean = toolkit("--json", "verify", "--live", "--rehash", "--source", str(ds1), "--source", str(ds2))
    assert clean.exit_code == 0, clean.stdout
    # Tampering that keeps size and time is found only by --rehash.
    st = a.flat.stat()
    with a.flat.open("r+b") as f:
        f.seek(1 << 20)
        f.write(b"tampered")
    os.utime(a.flat, ns=(st.st_atime_ns, st.st_mtime_ns))
    for p in b.files:
        p.unlink()
    quick = json.loads(toolkit("--json", "verify", "--live", "--source", str(ds1)).stdout)
    assert {(p["kind"], p["volume"]) for p in quick["problems"]} == {("missing", "ds1/cloudvolumes/apps/Beta.vmdk")}
    deep = toolkit("--json", "verify", "--live", "--rehash", "--source", str(ds1))
    assert deep.exit_code == 1
    kinds = {(p["kind"], p["volume"]) for p in json.loads(deep.stdout)["problems"]}
    assert ("drift", "ds1/cloudvolumes/apps/Alpha.vmdk") in kinds
    # Once a --rehash snapshot captures the tampered copy, the replicas differ.
    assert toolkit("snapshot", "--rehash", str(ds1), str(ds2)).exit_code == 0
    rep = json.loads(toolkit("--json", "verify", "--live", "--source", str(ds1), "--source", str(ds2)).stdout)
    found = {(p["kind"], p["volume"]) for p in rep["problems"]}
    assert ("replica-mismatch", "cloudvolumes/apps/Alpha.vmdk") in found
    assert toolkit.json("verify", "--history")["runs"][0]["level"] == "live"

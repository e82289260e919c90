"""The nightly, weekly and disaster jobs end to end, on real NTFS-in-VMDK volumes."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from catalog.errors import StoreExists, StoreNotFound
from toolkit.errors import BadTime, DestinationExists, SourceNotFound
from toolkit.lab.corpus import VolumeFiles, make_volume, modify_volume

from ..conftest import Toolkit, run_toolkit

APP = "cloudvolumes/apps/Office!20!2016.vmdk"
PKG = "appvolumes/packages/Chrome 120.vmdk"


@pytest.fixture
def datastore(tmp_path: Path) -> tuple[Path, dict[str, VolumeFiles]]:
    root = tmp_path / "ds1"
    vols = {
        APP: make_volume(root, APP, size_mib=24, seed=1, kind="appstack", real=True),
        PKG: make_volume(root, PKG, size_mib=16, seed=2, kind="package", real=True),
    }
    return root, vols


def _copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _same_tree(a: Path, b: Path, paths: list[str]) -> None:
    for rel in paths:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


def _files_of(vol: VolumeFiles, root: Path) -> list[str]:
    return [p.relative_to(root).as_posix() for p in vol.files]


def test_snapshot_change_snapshot_restore_as_of_first(toolkit: Toolkit, datastore, tmp_path: Path) -> None:
    root, vols = datastore
    assert toolkit("init").exit_code == 0
    first = toolkit.json("snapshot", str(root))
    assert {v["state"] for v in first["volumes"]} == {"new"}
    assert {v["kind"] for v in first["volumes"]} == {"appstack", "package"}
    v1 = _copy_tree(root, tmp_path / "v1-copy")
    time.sleep(0.01)
    t1 = datetime.now(UTC).isoformat()
    time.sleep(0.01)

    modify_volume(vols[APP], seed=7, fraction=0.1)
    second = toolkit.json("snapshot", str(root))
    states = {v["key"]: v["state"] for v in second["volumes"]}
    assert states == {f"ds1/{APP}": "changed", f"ds1/{PKG}": "unchanged"}
    # Only the changed volume was read, and only its new blocks were stored.
    assert second["stats"]["bytes_read"] < 25 << 20
    assert 0 < second["stats"]["new_raw_bytes"] < 12 << 20

    out = tmp_path / "restore"
    r = toolkit("restore", "--as-of", t1, "--to", str(out))
    assert r.exit_code == 0, r.stderr
    paths = _files_of(vols[APP], root) + _files_of(vols[PKG], root)
    _same_tree(v1, out, paths)
    flat = out / vols[APP].flat.relative_to(root)
    assert flat.stat().st_blocks * 512 < flat.stat().st_size  # zero chunks stayed holes
    check = subprocess.run(["qemu-img", "check", str(out / APP)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    ls = subprocess.run(["ntfsls", "-f", str(flat)], capture_output=True, text=True, check=False)
    assert ls.returncode == 0 and ls.stdout.strip()

    # The newest version comes back too, and a re-run finds everything in place.
    out2 = tmp_path / "restore-now"
    assert toolkit("restore", "--as-of", datetime.now(UTC).isoformat(), "--to", str(out2)).exit_code == 0
    _same_tree(root, out2, paths)
    again = toolkit.json("restore", "--as-of", datetime.now(UTC).isoformat(), "--to", str(out2))
    assert {v["status"] for v in again["volumes"]} == {"in place"}


def test_unchanged_snapshot_reads_nothing(toolkit: Toolkit, datastore) -> None:
    root, _ = datastore
    toolkit("init")
    toolkit("snapshot", str(root))
    before = len(list((toolkit.repo / "packs").rglob("*")))
    again = toolkit.json("snapshot", str(root))
    assert again["stats"]["bytes_read"] == 0
    assert {v["state"] for v in again["volumes"]} == {"unchanged"}
    assert len(list((toolkit.repo / "packs").rglob("*"))) == before


def test_rehash_reads_again_but_stores_nothing(toolkit: Toolkit, datastore) -> None:
    root, _ = datastore
    toolkit("init")
    toolkit("snapshot", str(root))
    again = toolkit.json("snapshot", "--rehash", str(root))
    assert again["stats"]["bytes_read"] > 0
    assert again["stats"]["new_chunks"] == 0
    assert {v["state"] for v in again["volumes"]} == {"unchanged"}


def test_a_deleted_volume_is_recorded_and_stays_restorable(toolkit: Toolkit, datastore, tmp_path: Path) -> None:
    root, vols = datastore
    toolkit("init")
    toolkit("snapshot", str(root))
    t1 = datetime.now(UTC).isoformat()
    for p in vols[PKG].files:
        p.unlink()
    second = toolkit.json("snapshot", str(root))
    assert {v["key"]: v["state"] for v in second["volumes"]}[f"ds1/{PKG}"] == "deleted"
    hist = toolkit.json("history", "Chrome*")
    assert [v["state"] for v in hist["versions"]] == ["new", "deleted"]
    # Restoring "now" leaves the deleted volume out and says so; as of t1 brings it back.
    now = toolkit.json("restore", "--as-of", datetime.now(UTC).isoformat(), "--to", str(tmp_path / "a"), "--dry-run")
    assert {v["key"]: v["status"] for v in now["volumes"]}[f"ds1/{PKG}"] == "not present"
    r = toolkit("restore", "--as-of", t1, "--volume", "Chrome*", "--to", str(tmp_path / "b"))
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "b" / PKG).exists()
    assert not (tmp_path / "b" / APP).exists()


def test_restore_refuses_to_overwrite_a_different_file(toolkit: Toolkit, datastore, tmp_path: Path) -> None:
    root, vols = datastore
    toolkit("init")
    toolkit("snapshot", str(root))
    out = tmp_path / "out"
    (out / "cloudvolumes/apps").mkdir(parents=True)
    (out / APP).write_text("something else")
    r = toolkit("restore", "--as-of", datetime.now(UTC).isoformat(), "--volume", "Office*", "--to", str(out))
    assert r.exit_code == DestinationExists.exit_code or r.exit_code == 1
    assert (out / APP).read_text() == "something else"
    assert "already exists" in r.stdout + r.stderr
    r = toolkit(
        "restore",
        "--as-of",
        datetime.now(UTC).isoformat(),
        "--volume",
        "Office*",
        "--to",
        str(out),
        "--overwrite",
    )
    assert r.exit_code == 0
    assert (out / APP).read_bytes() == vols[APP].descriptor.read_bytes()
    assert not [p for p in out.rglob("*") if "partial" in p.name]


def test_snapshot_id_works_as_a_time(toolkit: Toolkit, datastore, tmp_path: Path) -> None:
    root, _ = datastore
    toolkit("init")
    snap = toolkit.json("snapshot", str(root))["snapshot"]
    r = toolkit.json("restore", "--as-of", snap[:10], "--to", str(tmp_path / "o"), "--dry-run")
    assert {v["status"] for v in r["volumes"]} == {"planned"}


# -- bad input: one clear line, exit 2, never a traceback ---------------------------


def _one_line_error(proc: subprocess.CompletedProcess[str], code: int) -> None:
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith(("error:", "Error:"))]
    assert len(errors) == 1, proc.stderr


def test_bad_input_gives_one_line_and_exit_2(tmp_path: Path, datastore) -> None:
    root, _ = datastore
    repo = tmp_path / "repo"
    _one_line_error(run_toolkit("--repo", str(tmp_path / "nope"), "snapshots"), StoreNotFound.exit_code)
    (tmp_path / "notrepo").mkdir()
    (tmp_path / "notrepo" / "x").write_text("x")
    _one_line_error(run_toolkit("--repo", str(tmp_path / "notrepo"), "verify"), StoreNotFound.exit_code)
    assert run_toolkit("--repo", str(repo), "init").returncode == 0
    _one_line_error(run_toolkit("--repo", str(repo), "init"), StoreExists.exit_code)
    _one_line_error(run_toolkit("--repo", str(repo), "snapshot", str(tmp_path / "missing")), SourceNotFound.exit_code)
    _one_line_error(run_toolkit("--repo", str(repo), "snapshot", str(root / APP)), 2)
    _one_line_error(
        run_toolkit("--repo", str(repo), "restore", "--as-of", "last tuesday", "--to", str(tmp_path / "o")),
        BadTime.exit_code,
    )
    _one_line_error(run_toolkit("--repo", str(repo), "restore", "--to", str(tmp_path / "o")), 2)
    _one_line_error(run_toolkit("snapshots"), 2)
    as_json = run_toolkit("--repo", str(tmp_path / "nope"), "--json", "snapshots")
    assert json.loads(as_json.stdout)["code"] == "store_not_found"


def test_a_garbage_vmdk_fails_that_volume_only(toolkit: Toolkit, datastore) -> None:
    root, _ = datastore
    (root / "cloudvolumes/apps/Broken.vmdk").write_bytes(b"\x00\xff garbage " * 100)
    toolkit("init")
    r = toolkit("--json", "snapshot", str(root))
    assert r.exit_code == 1
    out = json.loads(r.stdout)
    states = {v["key"]: (v["state"], v["reason"]) for v in out["volumes"]}
    assert states["ds1/cloudvolumes/apps/Broken.vmdk"][0] == "failed"
    assert "not a VMDK descriptor" in states["ds1/cloudvolumes/apps/Broken.vmdk"][1]
    assert states[f"ds1/{APP}"][0] == "new"


def test_a_busy_repository_exits_3_naming_the_holder(toolkit: Toolkit, datastore) -> None:
    from catalog.lock import writer_lock

    root, _ = datastore
    toolkit("init")
    with writer_lock(toolkit.repo, "prune"):
        proc = run_toolkit("--repo", str(toolkit.repo), "snapshot", str(root))
    _one_line_error(proc, 3)
    assert f"pid {__import__('os').getpid()}" in proc.stderr
    assert "toolkit unlock" in proc.stderr
    # Readers are not blocked by a writer.
    with writer_lock(toolkit.repo, "snapshot"):
        assert toolkit("verify").exit_code == 0
        assert toolkit("snapshots").exit_code == 0


def test_previous_n_counts_changes_not_snapshots(toolkit: Toolkit, tmp_path: Path) -> None:
    root = tmp_path / "dsp"
    vol = make_volume(root, "cloudvolumes/apps/Doc.vmdk", size_mib=4, seed=1, real=False)
    toolkit("init")
    contents = []
    for step in range(3):
        if step:
            with vol.flat.open("r+b") as f:
                f.seek(step << 20)
                f.write(bytes([step]) * 4096)
        contents.append(vol.flat.read_bytes())
        assert toolkit("snapshot", str(root)).exit_code == 0
        assert toolkit("snapshot", str(root)).exit_code == 0  # an unchanged capture is not a version
    for n, expected in ((1, contents[1]), (2, contents[0])):
        out = tmp_path / f"prev{n}"
        r = toolkit("restore", "--previous", str(n), "--to", str(out))
        assert r.exit_code == 0, r.stdout + r.stderr
        assert (out / "cloudvolumes/apps/Doc-flat.vmdk").read_bytes() == expected
    r = toolkit("restore", "--previous", "3", "--to", str(tmp_path / "prev3"))
    assert r.exit_code == 2
    assert "no stored volume matches" in r.stderr
    assert toolkit("restore", "--to", str(tmp_path / "x")).exit_code == 2

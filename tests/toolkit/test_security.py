"""Secrets stay secret, repository files stay private, restores stay inside their destination."""

from __future__ import annotations

import json
import os
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest

from catalog.repo import Repository
from toolkit.lab.avm_sim import AvmSimulator
from toolkit.lab.corpus import make_volume

from ..conftest import Toolkit, run_toolkit

SECRET = "Planted-S3cret-4f9c2e"  # noqa: S105 (a test secret that must never leak)


@pytest.mark.lab
def test_a_planted_password_appears_in_no_output_and_no_file(tmp_path: Path) -> None:
    ds1 = tmp_path / "ds1"
    make_volume(ds1, "cloudvolumes/apps/App.vmdk", size_mib=4, seed=1, real=False)
    with AvmSimulator({"ds1": ds1}, flavour="2.x", password=SECRET) as sim:
        sim.import_folder_now("ds1", "cloudvolumes/apps")
        cfg = tmp_path / "config.toml"
        cfg.write_text(
            f'repository = "{tmp_path / "repo"}"\n[sites.s]\n[sites.s.manager]\nurl = "{sim.url}"\nuser = "admin"\n'
            f'password_env = "AVM_PW"\n[sites.s.datastores.ds1]\npath = "{ds1}"\n'
        )
        env = {"AVM_PW": SECRET}
        outputs = []
        for args in (
            ["init"],
            ["-v", "-v", "snapshot"],
            ["--json", "snapshot"],
            ["volumes"],
            ["--json", "snapshots"],
            ["verify", "--read-data"],
            ["--json", "restore", "--as-of", "2100-01-01", "--to", str(tmp_path / "out")],
        ):
            proc = run_toolkit("--config", str(cfg), *args, env=env)
            assert proc.returncode == 0, proc.stderr
            outputs += [proc.stdout, proc.stderr]
        wrong = run_toolkit("--config", str(cfg), "-v", "-v", "snapshot", env={"AVM_PW": SECRET + "-wrong"})
        assert wrong.returncode == 1
        assert "refused the login" in wrong.stdout + wrong.stderr
        outputs += [wrong.stdout, wrong.stderr]
    for text in outputs:
        assert SECRET not in text
    for path in (tmp_path / "repo").rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_repository_files_are_private(toolkit: Toolkit, tmp_path: Path) -> None:
    root = tmp_path / "ds1"
    make_volume(root, "cloudvolumes/apps/App.vmdk", size_mib=4, seed=1, real=False)
    toolkit("init")
    assert toolkit("snapshot", str(root)).exit_code == 0
    assert toolkit("verify").exit_code == 0
    for path in [toolkit.repo, *toolkit.repo.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, (path, oct(mode))


def test_a_repository_of_another_user_is_refused_unless_told(toolkit: Toolkit) -> None:
    toolkit("init")
    os.chown(toolkit.repo, 4242, -1)
    r = toolkit("snapshots")
    assert r.exit_code == 2
    assert "belongs to user id 4242" in r.stderr
    assert toolkit("--allow-other-owner", "snapshots").exit_code == 0


def test_restore_does_not_follow_a_symlink_out_of_the_destination(toolkit: Toolkit, tmp_path: Path) -> None:
    root = tmp_path / "ds1"
    make_volume(root, "cloudvolumes/apps/App.vmdk", size_mib=4, seed=1, real=False)
    toolkit("init")
    toolkit("snapshot", str(root))
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "cloudvolumes").symlink_to(elsewhere)
    r = toolkit("--json", "restore", "--as-of", datetime.now(UTC).isoformat(), "--to", str(out))
    assert r.exit_code == 1
    assert "leaves the destination" in json.loads(r.stdout)["volumes"][0]["error"]
    assert list(elsewhere.rglob("*")) == []


def test_a_hostile_snapshot_document_cannot_write_outside(toolkit: Toolkit, tmp_path: Path) -> None:
    root = tmp_path / "ds1"
    make_volume(root, "cloudvolumes/apps/App.vmdk", size_mib=4, seed=1, real=False)
    toolkit("init")
    toolkit("snapshot", str(root))
    repo = Repository.open(toolkit.repo)
    try:
        version = repo.index.all_versions()[0]
        f = repo.index.files(version.version_id)[0]
        evil = {
            "created_at": datetime.now(UTC).isoformat(timespec="microseconds"),
            "hostname": "x",
            "sources": ["ds1"],
            "stats": {},
            "volumes": [
                {
                    "key": "ds1/evil.vmdk",
                    "datastore": "ds1",
                    "path": "../../evil.vmdk",
                    "name": "evil",
                    "kind": "unmanaged",
                    "state": "new",
                    "reason": None,
                    "avm": None,
                    "files": [
                        {
                            "path": "../../evil.vmdk",
                            "role": "descriptor",
                            "size": f.size,
                            "mtime_ns": 0,
                            "manifest": f.manifest_id.hex(),
                            "digest": f.digest,
                        }
                    ],
                }
            ],
        }
        repo.write_snapshot(evil)
    finally:
        repo.close()
    out = tmp_path / "deep" / "out"
    r = toolkit("--json", "restore", "--as-of", datetime.now(UTC).isoformat(), "--volume", "evil", "--to", str(out))
    assert r.exit_code == 1
    assert "leaves the destination" in json.loads(r.stdout)["volumes"][0]["error"]
    assert not (tmp_path / "evil.vmdk").exists()

"""Restore onto a configured datastore and register with App Volumes Manager again."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from toolkit.lab.avm_sim import AvmSimulator
from toolkit.lab.corpus import make_datastore

from ..conftest import run_toolkit
from .test_discovery import FOLDERS, write_config

pytestmark = pytest.mark.lab


@pytest.fixture(params=["2.x", "4.x"])
def site(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[AvmSimulator, Path, Path]]:
    flavour = request.param
    ds1 = tmp_path / "ds1"
    make_datastore(ds1, flavour=flavour, count=2, size_mib=8, real=False)
    with AvmSimulator({"ds1": ds1}, flavour=flavour, job_delay_s=0.01) as sim:
        for folder in FOLDERS[flavour]:
            sim.import_folder_now("ds1", folder)
        cfg = write_config(tmp_path, sim.url, extra_site='writables = "copy"')
        env = {"TEST_AVM_PASSWORD": "admin"}
        assert run_toolkit("--config", str(cfg), "init", env=env).returncode == 0
        assert run_toolkit("--config", str(cfg), "snapshot", env=env).returncode == 0
        yield sim, tmp_path, cfg


def toolkit(cfg: Path, *args: str) -> tuple[int, dict, str]:
    proc = run_toolkit("--config", str(cfg), "--json", *args, env={"TEST_AVM_PASSWORD": "admin"})
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, (json.loads(proc.stdout) if proc.stdout.strip() else {}), proc.stderr


def test_a_deleted_volume_comes_back_registered_with_its_guid(site) -> None:
    sim, _tmp, cfg = site
    office = next(v for v in sim.volumes() if v.name == "Office 2016")
    sim.admin_delete_volume(office.id)  # record and files gone, as after an accidental delete
    assert "Office 2016" not in {v.name for v in sim.volumes()}
    now = datetime.now(UTC).isoformat()
    rc, report, err = toolkit(
        cfg, "restore", "--as-of", now, "--volume", "Office 2016", "--to", "dc1/ds1", "--register"
    )
    assert rc == 0, err
    [entry] = report["volumes"]
    assert entry["status"] == "registered"
    back = next(v for v in sim.volumes() if v.name == "Office 2016")
    assert back.guid == office.guid
    assert back.status == "enabled"


def test_a_volume_attached_to_desktops_is_never_replaced(site) -> None:
    sim, tmp, cfg = site
    office = next(v for v in sim.volumes() if v.name == "Office 2016")
    sim.admin_attach(office.id)
    flat = next(p for p in (tmp / "ds1").rglob("Office!20!2016-flat.vmdk"))
    with flat.open("r+b") as f:
        f.write(b"damaged by someone")
    now = datetime.now(UTC).isoformat()
    rc, report, _ = toolkit(cfg, "restore", "--as-of", now, "--volume", "Office 2016", "--to", "ds1", "--overwrite")
    assert rc == 1
    [entry] = report["volumes"]
    assert entry["status"] == "failed"
    assert "in use" in entry["error"]
    assert "never replaced while desktops use it" in entry["error"]
    assert flat.read_bytes().startswith(b"damaged by someone")
    # Beside it (another directory) works, and says nothing is in the way.
    rc, report, _ = toolkit(cfg, "restore", "--as-of", now, "--volume", "Office 2016", "--to", str(tmp / "beside"))
    assert rc == 0


def test_register_without_a_manager_is_refused_before_writing(tmp_path: Path) -> None:
    proc = run_toolkit(
        "--repo", str(tmp_path / "r"), "restore", "--as-of", "2026-01-01", "--to", str(tmp_path / "o"), "--register"
    )
    assert proc.returncode == 2
    assert "--register needs the App Volumes Manager" in proc.stderr
    assert not (tmp_path / "o").exists()

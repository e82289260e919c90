"""Restore onto a configured datastore and register with App Volumes Manager again."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests

from toolkit.avm import AvmAssignment, recorded_assignments
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
    assert report["landed_check"] == "readback"  # what the manager imports was read back whole
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


# --- assignments recorded at capture, created again ------------------------------------------------

JDOE = {"entity_type": "User", "path": "CN=jdoe,OU=Users,DC=lab,DC=example"}
DESIGNERS = {"entity_type": "Group", "path": "CN=Designers,OU=Groups,DC=lab,DC=example"}


def manager_session(sim: AvmSimulator) -> requests.Session:
    s = requests.Session()
    r = s.post(f"{sim.url}/cv_api/sessions", json={"username": "admin", "password": "admin"}, timeout=10)
    assert r.status_code == 200, r.text
    return s


def assign(sim: AvmSimulator, s: requests.Session, volume_id: int, product_id: int | None) -> None:
    """2.x: a user (for computers named VDI*) and a group; 4.x: a group through CURRENT, a user pinned."""
    if sim.flavour == "2.x":
        for entity, prefix in ((JDOE, "VDI"), (DESIGNERS, "")):
            body = {"action_type": "assign", "id": volume_id, "assignments": [entity], "mount_prefix": prefix}
            assert s.post(f"{sim.url}/cv_api/assignments", json=body, timeout=10).json()["successes"]
        return
    url = f"{sim.url}/app_volumes/app_products/{product_id}/app_markers/CURRENT"
    marker = s.put(url, params={"data[app_package_id]": volume_id}, timeout=10).json()["data"]
    items = [
        {"app_product_id": product_id, "entities": [DESIGNERS], "app_package_id": None, "app_marker_id": marker["id"]},
        {
            "app_product_id": product_id,
            "entities": [JDOE],
            "app_package_id": volume_id,
            "app_marker_id": None,
            "filters": [{"type": "ComputerPrefixFilter", "value": "VDI"}],
        },
    ]
    r = s.post(f"{sim.url}/app_volumes/app_assignments", json={"data": items}, timeout=10)
    assert r.status_code == 200, r.text


def assignments_of(sim: AvmSimulator, s: requests.Session, volume_id: int) -> set[tuple[object, ...]]:
    """What the manager says delivers the volume: (how, entity type, directory path, prefix or filter)."""
    if sim.flavour == "2.x":
        rows = s.get(f"{sim.url}/cv_api/assignments", timeout=10).json()["assignments"]
        return {
            ("appstack", r["entity_type"], r["entity_dn"], r["mount_prefix"])
            for r in rows
            if r["snapvol_id"] == volume_id
        }
    url = f"{sim.url}/app_volumes/app_packages/{volume_id}/assignments"
    rows = s.get(url, params={"include": "entities,filters"}, timeout=10).json()["data"]
    return {
        (
            "marker" if r.get("app_marker_id") else "package",
            e["entity_type"],
            e["distinguished_name"],
            tuple(f["value"] for f in r["filters"]),
        )
        for r in rows
        for e in r["entities"]
    }


def test_assignments_recorded_at_capture_are_created_again(site) -> None:
    sim, _tmp, cfg = site
    s = manager_session(sim)
    office = next(v for v in sim.volumes() if v.name == "Office 2016")
    assign(sim, s, office.id, office.product_id)
    before = assignments_of(sim, s, office.id)
    assert len(before) == 2
    assert run_toolkit("--config", str(cfg), "snapshot", env={"TEST_AVM_PASSWORD": "admin"}).returncode == 0
    # Deleted in the manager: the record, its assignments and its files are gone.
    r = s.post(f"{sim.url}/cv_api/volumes/delete", data={"volumes[]": [str(office.id)]}, timeout=10)
    assert r.json()["snapvols"]["success"]
    assert "Office 2016" not in {v.name for v in sim.volumes()}
    assert not any(p.exists() for p in office.paths)

    now = datetime.now(UTC).isoformat()
    args = ("restore", "--as-of", now, "--volume", "Office 2016", "--to", "dc1/ds1", "--register")
    rc, report, err = toolkit(cfg, *args, "--restore-assignments")
    assert rc == 0, (err, report)
    [entry] = report["volumes"]
    assert entry["status"] == "registered"
    assert sorted(a["status"] for a in entry["assignments"]) == ["created", "created"]
    back = next(v for v in sim.volumes() if v.name == "Office 2016")
    assert back.id != office.id and back.guid == office.guid
    assert assignments_of(sim, s, back.id) == before

    # A second run finds the files in place and every assignment already there.
    rc, report, err = toolkit(cfg, *args, "--restore-assignments")
    assert rc == 0, err
    [entry] = report["volumes"]
    assert entry["status"] == "registered"
    assert [a["status"] for a in entry["assignments"]] == ["present", "present"]
    assert assignments_of(sim, s, back.id) == before


def test_restore_assignments_needs_register(tmp_path: Path) -> None:
    proc = run_toolkit(
        "--repo", str(tmp_path / "r"), "restore", "--as-of", "now", "--to", str(tmp_path / "o"), "--restore-assignments"
    )
    assert proc.returncode == 2
    assert "--restore-assignments needs --register" in proc.stderr


def test_recorded_assignments_read_both_shapes() -> None:
    link = '<a href="/directory#/Users/1" title="LAB\\jdoe">LAB\\jdoe</a>'
    two = recorded_assignments(
        {
            "id": 7,
            "assignments": [
                {"name": link, "entity_type": "user", "mount_prefix": "VDI", "entity_dn": JDOE["path"]},
                {"name": link, "entity_type": "group", "mount_prefix": ""},  # recorded without a directory path
            ],
        }
    )
    assert two[0] == AvmAssignment("LAB\\jdoe", (("User", JDOE["path"]),), "VDI")
    assert two[1].entities == () and two[1].who == "LAB\\jdoe"
    entity = {"entity_type": "Group", "distinguished_name": DESIGNERS["path"], "upn": "LAB\\Designers"}
    four = recorded_assignments(
        {
            "id": 7,
            "assignments": [
                {"app_package_id": 7, "app_marker_id": 3, "app_marker_name": "CURRENT", "entities": [entity]},
                {
                    "app_package_id": 7,
                    "entities": [entity],
                    "filters": [{"type": "ComputerPrefixFilter", "value": "V"}],
                },
                {"app_package_id": 9, "entities": [entity]},
            ],
        }
    )
    assert [(a.via, a.other_package) for a in four] == [("marker", None), ("package", None), ("package", 9)]
    assert four[1].filters == (("ComputerPrefixFilter", "V"),)
    assert four[0].entities == (("Group", DESIGNERS["path"]),) and four[0].who == "LAB\\Designers"

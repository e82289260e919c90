"""toolkit switch: desktops move from a damaged volume to its restored twin, through the manager's own API.

Everything runs against the AVM simulator over real HTTP, for both flavours: the runbook's flow
(restore beside with --rename --register --restore-assignments, then switch), the dry run, the
refusals, and a manager that refuses an assignment half-way.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from toolkit.lab.avm_sim import AvmSimulator
from toolkit.lab.corpus import make_datastore
from toolkit.ops.switch import SwitchMismatch, SwitchSameVolume, SwitchVolumeAmbiguous, SwitchVolumeNotFound
from toolkit.sites import SiteUnknown, SiteWithoutManager

from ..conftest import run_toolkit
from .test_discovery import FOLDERS, write_config
from .test_register import DESIGNERS, JDOE, assign, assignments_of, manager_session

pytestmark = [pytest.mark.lab, pytest.mark.timeout(300)]

OFFICE, RESTORED = "Office 2016", "Office 2016 restored"


@pytest.fixture(params=["2.x", "4.x"])
def site(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[AvmSimulator, Path, requests.Session]]:
    """A site whose 'Office 2016' is assigned (4.x: a group through CURRENT, a user pinned), captured once."""
    flavour = request.param
    make_datastore(tmp_path / "ds1", flavour=flavour, count=2, size_mib=6, real=False)
    with AvmSimulator({"ds1": tmp_path / "ds1"}, flavour=flavour, job_delay_s=0.01) as sim:
        for folder in FOLDERS[flavour]:
            sim.import_folder_now("ds1", folder)
        s = manager_session(sim)
        office = volume(sim, OFFICE)
        assign(sim, s, office.id, office.product_id)
        cfg = write_config(tmp_path, sim.url)
        assert cli(cfg, "init")[0] == 0
        assert cli(cfg, "snapshot")[0] == 0
        yield sim, cfg, s
        s.close()


def cli(cfg: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    proc = run_toolkit("--config", str(cfg), "--json", *args, env={"TEST_AVM_PASSWORD": "admin"})
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, (json.loads(proc.stdout) if proc.stdout.strip() else {}), proc.stderr


def volume(sim: AvmSimulator, name: str) -> Any:
    return next(v for v in sim.volumes() if v.name == name)


def current_package(sim: AvmSimulator, s: requests.Session, product_id: int) -> int | None:
    url = f"{sim.url}/app_volumes/app_products/{product_id}/app_packages"
    rows = s.get(url, params={"include": "app_markers"}, timeout=10).json()["data"]
    return next((r["id"] for r in rows for m in r["app_markers"] if m["name"] == "CURRENT"), None)


def restore_beside(sim: AvmSimulator, cfg: Path, *, assignments: bool = True) -> Any:
    """The runbook's step 3: the good version beside the damaged one, registered (and assigned)."""
    now = datetime.now(UTC).isoformat()
    rc, report, err = cli(
        cfg, "restore", "--as-of", now, "--volume", OFFICE, "--to", "ds1", "--rename", "{name} restored",
        "--register", *(["--restore-assignments"] if assignments else []),
    )  # fmt: skip
    assert rc == 0, (err, report)
    assert [v["status"] for v in report["volumes"]] == ["registered"]
    if assignments:
        given = {a["who"]: a for a in report["volumes"][0]["assignments"]}
        if sim.flavour == "2.x":  # an entity may have both AppStacks
            assert {a["status"] for a in given.values()} == {"created"}
        else:  # one assignment per entity and application: the pinned user stays on the damaged one until the switch
            assert (given["LAB\\jdoe"]["status"], given["LAB\\Designers"]["status"]) == ("present", "present")
            assert f"pinned to package {OFFICE!r}" in given["LAB\\jdoe"]["detail"]
            assert f"toolkit switch --from {OFFICE!r} --to {RESTORED!r}" in given["LAB\\jdoe"]["detail"]
    return volume(sim, RESTORED)


def test_the_runbook_flow_leaves_desktops_on_the_restored_volume_only(site) -> None:
    sim, cfg, s = site
    office = volume(sim, OFFICE)
    sim.admin_attach(office.id)  # desktops use it: it is never replaced, only switched away from
    before = assignments_of(sim, s, office.id)
    assert len(before) == 2
    restored = restore_beside(sim, cfg)
    marker_before = current_package(sim, s, office.product_id) if sim.flavour == "4.x" else None
    assert marker_before in (None, office.id)

    # The dry run says what would happen and changes nothing.
    rc, plan, err = cli(cfg, "switch", "--from", OFFICE, "--to", RESTORED, "--dry-run")
    assert rc == 0, (err, plan)
    assert plan["dry_run"] and plan["from"]["id"] == office.id and plan["to"]["id"] == restored.id
    if sim.flavour == "2.x":
        assert sorted((a["via"], a["status"], a["to"]) for a in plan["assignments"]) == [
            ("appstack", "would move", "present"),
            ("appstack", "would move", "present"),
        ]
        assert plan["marker"] is None
    else:
        assert sorted((a["via"], a["status"]) for a in plan["assignments"]) == [
            ("marker", "would keep"),
            ("package", "would move"),
        ]
        assert (plan["marker"]["status"], plan["marker"]["package_id"]) == ("would move", office.id)
        assert current_package(sim, s, office.product_id) == office.id
    assert assignments_of(sim, s, office.id) == before
    text = run_toolkit("--config", str(cfg), "switch", "--from", OFFICE, "--to", RESTORED, "--dry-run",
                       env={"TEST_AVM_PASSWORD": "admin"})  # fmt: skip
    assert text.returncode == 0 and "dry run: nothing was changed" in text.stdout
    assert "LAB\\jdoe" in text.stdout
    if sim.flavour == "4.x":
        assert f"CURRENT marker: points at FROM (package id {office.id}); would move to TO" in text.stdout
    assert assignments_of(sim, s, office.id) == before

    rc, report, err = cli(cfg, "switch", "--from", OFFICE, "--to", RESTORED)
    assert rc == 0, (err, report)
    assert report["ok"] and not report["dry_run"]
    assert assignments_of(sim, s, office.id) == set()  # nothing gives desktops the damaged one any more
    assert assignments_of(sim, s, restored.id) == before  # the same entities, prefixes and filters, on the restored one
    statuses = sorted((a["via"], a["status"], a["from"]) for a in report["assignments"])
    if sim.flavour == "2.x":
        assert statuses == [("appstack", "moved", "removed")] * 2
    else:
        assert statuses == [("marker", "kept", "kept"), ("package", "moved", "removed")]
        assert report["marker"]["status"] == "moved" and report["marker"]["package_id"] == restored.id
        assert current_package(sim, s, office.product_id) == restored.id
    assert any("next logon" in n for n in report["notes"])  # the damaged one is still attached

    # Run again: nothing left on the damaged one; the marker is already on the restored one.
    rc, again, err = cli(cfg, "switch", "--from", OFFICE, "--to", RESTORED)
    assert rc == 0, (err, again)
    assert again["assignments"] == []
    if sim.flavour == "4.x":
        assert again["marker"]["status"] == "on TO"
    assert assignments_of(sim, s, restored.id) == before


def test_switch_gives_the_restored_volume_what_it_lacks(site) -> None:
    """Without --restore-assignments, the switch itself assigns the restored volume first."""
    sim, cfg, s = site
    office = volume(sim, OFFICE)
    before = assignments_of(sim, s, office.id)
    restored = restore_beside(sim, cfg, assignments=False)
    assert assignments_of(sim, s, restored.id) == set()  # 4.x: the CURRENT marker still points at the damaged one
    rc, report, err = cli(
        cfg, "switch", "--from", f"ds1/{office.file_locations[0].split('] ', 1)[1]}", "--to", RESTORED
    )
    assert rc == 0, (err, report)
    assert {a["to"] for a in report["assignments"] if a["via"] != "marker"} == {"created"}
    assert assignments_of(sim, s, office.id) == set()
    assert assignments_of(sim, s, restored.id) == before


def test_a_refused_assignment_leaves_the_damaged_volume_assigned(site) -> None:
    sim, cfg, s = site
    office = volume(sim, OFFICE)
    before = assignments_of(sim, s, office.id)
    restored = restore_beside(sim, cfg, assignments=False)
    # The manager fails to save the user's assignment (2.x: the group's is saved; 4.x: the user is the pinned one,
    # refused on the restored package only, so the switch deletes it from FROM, is refused on TO and puts it back).
    pinned_to = {"package_id": restored.id} if sim.flavour == "4.x" else {}
    sim.admin_refuse_assignments(JDOE["path"], **pinned_to)

    rc, report, err = cli(cfg, "switch", "--from", OFFICE, "--to", RESTORED)
    assert rc == 1, (err, report)
    assert not report["ok"]
    by_who = {a["who"]: a for a in report["assignments"]}
    assert by_who["LAB\\jdoe"]["status"] == "failed"
    assert by_who["LAB\\jdoe"]["from"] == ("kept" if sim.flavour == "2.x" else "put back")
    assert "Unable to save assignment" in by_who["LAB\\jdoe"]["detail"]
    assert assignments_of(sim, s, office.id) == before  # the damaged one keeps (or has back) every assignment
    if sim.flavour == "2.x":
        designers = by_who["LAB\\Designers"]
        assert (designers["to"], designers["from"], designers["status"]) == ("created", "kept", "not switched")
        assert {d[2] for d in assignments_of(sim, s, restored.id)} == {DESIGNERS["path"]}
    else:
        assert "put back on FROM" in by_who["LAB\\jdoe"]["detail"]
        assert by_who["LAB\\Designers"]["status"] == "not switched"
        assert report["marker"]["status"] == "not moved"
        assert current_package(sim, s, office.product_id) == office.id
        assert assignments_of(sim, s, restored.id) == set()
    text = run_toolkit("--config", str(cfg), "switch", "--from", OFFICE, "--to", RESTORED,
                       env={"TEST_AVM_PASSWORD": "admin"})  # fmt: skip
    assert text.returncode == 1 and "not finished" in text.stdout
    assert assignments_of(sim, s, office.id) == before

    # Once the manager takes it, a second run finishes the switch.
    sim.admin_refuse_assignments(JDOE["path"], refuse=False, **pinned_to)
    rc, report, err = cli(cfg, "switch", "--from", OFFICE, "--to", RESTORED)
    assert rc == 0, (err, report)
    assert assignments_of(sim, s, office.id) == set()
    assert assignments_of(sim, s, restored.id) == before


def test_a_refused_removal_from_the_damaged_volume_keeps_it_assigned(site) -> None:
    """The manager refuses to take the user's assignment off FROM: FROM keeps it, the switch says so, a re-run ends it.

    2.x: the user is refused on FROM only after TO has it (it has both; the group moves). 4.x: the delete of
    the assignment pinned to FROM is refused, so nothing is created on TO and the marker stays on FROM.
    """
    sim, cfg, s = site
    office = volume(sim, OFFICE)
    before = assignments_of(sim, s, office.id)
    users = {a for a in before if a[2] == JDOE["path"]}
    restored = restore_beside(sim, cfg, assignments=False)
    if sim.flavour == "2.x":
        fault: dict[str, Any] = {"distinguished_name": JDOE["path"]}
    else:
        fault = {"volume_id": office.id}  # every assignment pinned to FROM: the user's
    sim.admin_refuse_unassignments(**fault)

    rc, report, err = cli(cfg, "switch", "--from", OFFICE, "--to", RESTORED)
    assert rc == 1, (err, report)
    assert not report["ok"]
    by_who = {a["who"]: a for a in report["assignments"]}
    jdoe, designers = by_who["LAB\\jdoe"], by_who["LAB\\Designers"]
    if sim.flavour == "2.x":
        assert (jdoe["to"], jdoe["from"], jdoe["status"]) == ("created", "failed", "failed")
        assert jdoe["detail"] == (
            f'on TO too, but not removed from FROM: Unable to remove assignment of "User <LAB\\jdoe>" from "{OFFICE}"'
        )
        assert (designers["to"], designers["from"], designers["status"]) == ("created", "removed", "moved")
        assert assignments_of(sim, s, office.id) == users  # kept on FROM
        assert assignments_of(sim, s, restored.id) == before  # and given to TO, with the group
    else:
        assert (jdoe["via"], jdoe["to"], jdoe["from"], jdoe["status"]) == ("package", "failed", "kept", "failed")
        assert jdoe["detail"].startswith("not removed from FROM, so not given to TO: ")
        assert "DELETE /app_volumes/app_assignments" in jdoe["detail"] and "HTTP 500" in jdoe["detail"]
        assert "Unable to delete assignment(s)" in jdoe["detail"]  # the manager's own reason
        assert (designers["via"], designers["from"], designers["status"]) == ("marker", "kept", "not switched")
        assert report["marker"]["status"] == "not moved"
        assert current_package(sim, s, office.product_id) == office.id
        assert assignments_of(sim, s, office.id) == before
        assert assignments_of(sim, s, restored.id) == set()

    # The text says the same, and a second run with the fault still there changes nothing more.
    text = run_toolkit("--config", str(cfg), "switch", "--from", OFFICE, "--to", RESTORED,
                       env={"TEST_AVM_PASSWORD": "admin"})  # fmt: skip
    assert text.returncode == 1, text.stdout + text.stderr
    rows = [line for line in text.stdout.splitlines() if line.startswith("LAB\\jdoe ")]
    assert len(rows) == 1 and "not removed from FROM" in rows[0] and " failed " in rows[0], text.stdout
    assert text.stdout.rstrip().splitlines()[-1].startswith("not finished: what failed is listed above")
    if sim.flavour == "4.x":
        assert "CURRENT marker: still points at FROM" in text.stdout
    assert assignments_of(sim, s, office.id) == (users if sim.flavour == "2.x" else before)

    # Once the manager lets go, a second run finishes the switch.
    sim.admin_refuse_unassignments(**fault, refuse=False)
    rc, report, err = cli(cfg, "switch", "--from", OFFICE, "--to", RESTORED)
    assert rc == 0, (err, report)
    assert report["ok"]
    moved = {a["who"]: (a["from"], a["status"]) for a in report["assignments"]}
    assert moved["LAB\\jdoe"] == ("removed", "moved")
    if sim.flavour == "4.x":
        assert moved["LAB\\Designers"] == ("kept", "kept")  # through the marker, which moved
        assert current_package(sim, s, office.product_id) == restored.id
    assert assignments_of(sim, s, office.id) == set()
    assert assignments_of(sim, s, restored.id) == before


@pytest.mark.parametrize("site", ["4.x"], indirect=True)  # 2.x gives TO before it takes FROM: nothing is put back
def test_4x_a_refused_put_back_is_said_loudly(site) -> None:
    """The manager refuses the user's assignment on TO and again on FROM: it has neither, and the switch says so."""
    sim, cfg, s = site
    office = volume(sim, OFFICE)
    before = assignments_of(sim, s, office.id)
    restored = restore_beside(sim, cfg, assignments=False)
    sim.admin_refuse_assignments(JDOE["path"])

    text = run_toolkit("--config", str(cfg), "switch", "--from", OFFICE, "--to", RESTORED,
                       env={"TEST_AVM_PASSWORD": "admin"})  # fmt: skip
    assert text.returncode == 1
    assert "NOT ASSIGNED" in text.stdout and "ASSIGN BY HAND: LAB\\jdoe now has neither" in text.stdout
    assert {a[2] for a in assignments_of(sim, s, office.id)} == {DESIGNERS["path"]}  # through the marker, not moved
    assert assignments_of(sim, s, restored.id) == set()
    assert current_package(sim, s, office.product_id) == office.id
    rc, report, _ = cli(cfg, "switch", "--from", OFFICE, "--to", RESTORED)
    assert rc == 0 and report["marker"]["status"] == "moved"  # nothing pinned to FROM is left to move
    sim.admin_refuse_assignments(JDOE["path"], refuse=False)
    assert before - assignments_of(sim, s, restored.id) == {a for a in before if a[0] == "package"}


def refused(cfg: Path, *args: str) -> tuple[str, str]:
    """(the JSON code, the error line) of a refused switch; it exits 2 with one error line."""
    proc = run_toolkit("--config", str(cfg), "switch", *args, env={"TEST_AVM_PASSWORD": "admin"})
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    as_json = run_toolkit("--config", str(cfg), "--json", "switch", *args, env={"TEST_AVM_PASSWORD": "admin"})
    assert as_json.returncode == 2
    return json.loads(as_json.stdout)["code"], errors[0]


def test_refusals_exit_2_with_one_line_and_change_nothing(site, tmp_path: Path) -> None:
    sim, cfg, s = site
    office = volume(sim, OFFICE)
    before = assignments_of(sim, s, office.id)
    kind = "appstack" if sim.flavour == "2.x" else "package"
    other = sim.admin_create_volume(kind, OFFICE, folder="twins", current=False)  # the same name again
    writable = next(v for v in sim.volumes() if v.kind == "writable")
    adobe = volume(sim, "Adobe Reader DC")

    code, line = refused(cfg, "--from", "Nothing Like It", "--to", OFFICE)
    assert code == SwitchVolumeNotFound.code and "'Nothing Like It'" in line
    code, line = refused(cfg, "--from", OFFICE, "--to", "Adobe Reader DC")
    assert code == SwitchVolumeAmbiguous.code and "2 volumes" in line and "ds1/twins/Office!20!2016.vmdk" in line
    key = f"ds1/{office.file_locations[0].split('] ', 1)[1]}"
    code, line = refused(cfg, "--from", key, "--to", key)
    assert code == SwitchSameVolume.code
    code, line = refused(cfg, "--from", key, "--to", writable.name)
    assert code == SwitchMismatch.code and "writable" in line
    if sim.flavour == "4.x":  # a package of another application
        code, line = refused(cfg, "--from", key, "--to", adobe.name)
        assert code == SwitchMismatch.code and "different applications" in line
    code, _ = refused(cfg, "--site", "dc9", "--from", key, "--to", adobe.name)
    assert code == SiteUnknown.code
    bare = tmp_path / "bare.toml"
    bare.write_text(f'[sites.dc1.datastores.ds1]\ntransport = "local"\npath = "{tmp_path / "ds1"}"\n')
    bare.chmod(0o600)
    code, _ = refused(bare, "--site", "dc1", "--from", key, "--to", adobe.name)
    assert code == SiteWithoutManager.code
    assert assignments_of(sim, s, office.id) == before
    assert assignments_of(sim, s, other.id) == set()

"""restore --rename: a volume written beside the live one under a new name, and the plan's sidecar warnings."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests

from catalog.chunker import file_digest_of
from catalog.repo import Repository
from toolkit.errors import DestinationExists
from toolkit.lab.avm_sim import AvmSimulator
from toolkit.lab.corpus import make_datastore, make_volume
from toolkit.ops.restore import BadRename, RenameClash
from toolkit.vmdk import parse_descriptor

from ..conftest import Toolkit, run_toolkit
from ..toolkit.test_discovery import FOLDERS, write_config

OFFICE = "Office!20!2016"
RESTORED = "Office!20!2016!20!restored"


def folder_of(flavour: str) -> str:
    return "cloudvolumes/apps" if flavour == "2.x" else "appvolumes/packages"


@pytest.fixture(params=["2.x", "4.x"])
def stored(request: pytest.FixtureRequest, toolkit: Toolkit, tmp_path: Path) -> tuple[Toolkit, Path, str]:
    flavour = request.param
    ds1 = tmp_path / "ds1"
    make_datastore(ds1, flavour=flavour, count=2, size_mib=6, real=False)
    toolkit("init")
    assert toolkit("snapshot", str(ds1)).exit_code == 0
    return toolkit, ds1, flavour


def chunk_size(toolkit: Toolkit) -> int:
    repo = Repository.open(toolkit.repo, readonly=True)
    try:
        return repo.config.chunk_size
    finally:
        repo.close()


def digest(path: Path, size: int) -> str:
    with path.open("rb") as f:
        return file_digest_of(f, size)


def test_a_volume_restored_under_a_new_name_names_its_own_files(stored, tmp_path: Path) -> None:
    toolkit, ds1, flavour = stored
    out = tmp_path / "out"
    args = ("restore", "--as-of", "now", "--volume", "Office 2016", "--to", str(out), "--rename", "{name} restored")
    report = toolkit.json(*args)
    [entry] = report["volumes"]
    assert entry["status"] == "restored", entry
    folder = folder_of(flavour)
    assert entry["renamed_from"] == f"{folder}/{OFFICE}.vmdk"
    assert entry["path"] == f"{folder}/{RESTORED}.vmdk"
    assert entry["name"] == "Office 2016 restored"
    src, new = ds1 / folder, out / folder
    names = {p.name for p in new.iterdir()}
    expected = {f"{RESTORED}.vmdk", f"{RESTORED}-flat.vmdk", f"{RESTORED}.vmdk.metadata"}
    assert names == expected | ({f"{RESTORED}.json"} if flavour == "4.x" else set())
    assert not (new / f"{OFFICE}.vmdk").exists()

    # The descriptor names the new flat file and is otherwise the captured one, byte for byte.
    old_text, new_text = (src / f"{OFFICE}.vmdk").read_text(), (new / f"{RESTORED}.vmdk").read_text()
    desc = parse_descriptor("d", new_text.encode())
    assert desc is not None and [e.filename for e in desc.extents] == [f"{RESTORED}-flat.vmdk"]
    changed = [(a, b) for a, b in zip(old_text.splitlines(), new_text.splitlines(), strict=True) if a != b]
    assert changed == [(f'RW 12288 FLAT "{OFFICE}-flat.vmdk" 0', f'RW 12288 FLAT "{RESTORED}-flat.vmdk" 0')]
    assert (new / f"{RESTORED}-flat.vmdk").read_bytes() == (src / f"{OFFICE}-flat.vmdk").read_bytes()

    # The sidecars carry the new name and a new GUID; the template they were made from stays.
    old_meta = (src / f"{OFFICE}.vmdk.metadata").read_text().splitlines()
    new_meta = (new / f"{RESTORED}.vmdk.metadata").read_text().splitlines()
    meta_changes = {a.split(":")[1]: (a, b) for a, b in zip(old_meta, new_meta, strict=True) if a != b}
    assert sorted(meta_changes) == ["name", "volume_guid"]
    assert meta_changes["name"][1] == ':name: "Office 2016 restored"'
    new_guid = entry["guid"].strip("{}")
    assert new_guid in meta_changes["volume_guid"][1] and new_guid not in meta_changes["volume_guid"][0]
    if flavour == "4.x":
        old_doc = json.loads((src / f"{OFFICE}.json").read_text())
        new_doc = json.loads((new / f"{RESTORED}.json").read_text())
        assert new_doc["package"] == {**old_doc["package"], "name": "Office 2016 restored", "guid": new_guid}
        assert new_doc["application"] == old_doc["application"]  # still a package of the same application
        assert {k: v for k, v in new_doc.items() if k != "package"} == {
            k: v for k, v in old_doc.items() if k != "package"
        }

    # Rewritten files declare the digest of their new content, and that is what landed; the flat
    # extent is not rewritten: it landed with the digest recorded at capture.
    size = chunk_size(toolkit)
    rewritten = {r["path"]: r for r in entry["rewritten"]}
    assert set(rewritten) == {f"{folder}/{n}" for n in names if not n.endswith("-flat.vmdk")}
    for path, r in rewritten.items():
        assert digest(out / path, size) == r["digest"] != r["recorded_digest"]
        assert r["recorded_digest"] == digest(ds1 / r["from"], size)
    assert digest(new / f"{RESTORED}-flat.vmdk", size) == digest(src / f"{OFFICE}-flat.vmdk", size)
    if shutil.which("qemu-img"):
        check = subprocess.run(["qemu-img", "check", str(new / f"{RESTORED}.vmdk")], capture_output=True, check=False)
        assert check.returncode in (0, 63), check.stderr

    # Restoring the same again finds everything in place (the new GUID does not change run to run).
    again = toolkit.json(*args)
    assert [v["status"] for v in again["volumes"]] == ["in place"]
    assert again["volumes"][0]["guid"] == entry["guid"]


def test_existing_files_are_replaced_only_with_overwrite(stored, tmp_path: Path) -> None:
    toolkit, _ds1, flavour = stored
    out = tmp_path / "out"
    args = ("restore", "--as-of", "now", "--volume", "Office 2016", "--to", str(out), "--rename", "{name} restored")
    assert toolkit(*args).exit_code == 0
    metadata = out / folder_of(flavour) / f"{RESTORED}.vmdk.metadata"
    metadata.write_text(metadata.read_text() + ":note: changed by hand\n")
    kept = toolkit("--json", *args)
    assert kept.exit_code == 1  # the job ran and left a volume unrestored
    [entry] = json.loads(kept.stdout)["volumes"]
    assert entry["status"] == "failed"
    assert entry["error"] == str(DestinationExists(path=f"{out}/{folder_of(flavour)}/{RESTORED}.vmdk.metadata"))
    assert "changed by hand" in metadata.read_text()
    replaced = toolkit.json(*args, "--overwrite")
    assert replaced["volumes"][0]["status"] == "restored"
    assert "changed by hand" not in metadata.read_text()


def test_bad_rename_templates_are_refused_before_writing(stored, tmp_path: Path) -> None:
    toolkit, _ds1, _flavour = stored
    out = tmp_path / "out"
    for template, code in (
        ("{nme} restored", BadRename.code),
        ("{name", BadRename.code),
        ("{name}", BadRename.code),  # its own name: that is a restore in place, not beside
        ("{date}", BadRename.code),  # the name would be empty
        ("copy {date}", RenameClash.code),  # every volume to the same name
    ):
        r = toolkit("--json", "restore", "--as-of", "now", "--to", str(out), "--rename", template)
        assert r.exit_code == 2, (template, r.stdout)
        assert json.loads(r.stdout)["code"] == code, template
    assert not out.exists()


def test_the_plan_says_which_versions_lack_their_sidecars(toolkit: Toolkit, tmp_path: Path) -> None:
    ds1 = tmp_path / "ds1"
    make_volume(ds1, "cloudvolumes/apps/Bare.vmdk", size_mib=4, seed=1, sidecars=False, real=False)
    make_volume(ds1, "cloudvolumes/apps/Whole.vmdk", size_mib=4, seed=2, real=False)
    make_volume(ds1, "appvolumes/packages/Half.vmdk", size_mib=4, seed=3, kind="package", real=False)
    (ds1 / "appvolumes/packages/Half.json").unlink()
    toolkit("init")
    assert toolkit("snapshot", str(ds1)).exit_code == 0
    out = tmp_path / "out"
    plan = {v["name"]: v for v in toolkit.json("restore", "--as-of", "now", "--to", str(out), "--dry-run")["volumes"]}
    assert plan["Bare"]["sidecars"] == [] and "may import it as Legacy" in plan["Bare"]["warnings"][0]
    assert plan["Whole"]["sidecars"] == ["metadata"] and plan["Whole"]["warnings"] == []
    assert plan["Half"]["sidecars"] == ["metadata"] and "without its .json sidecar" in plan["Half"]["warnings"][0]
    text = toolkit("restore", "--as-of", "now", "--to", str(out), "--dry-run").stdout
    assert "warning: ds1/cloudvolumes/apps/Bare.vmdk: captured without sidecars" in text
    assert "warning: ds1/cloudvolumes/apps/Whole.vmdk" not in text
    done = toolkit("restore", "--as-of", "now", "--to", str(out))
    assert done.exit_code == 0
    assert "the manager may import it as Legacy" in done.stdout


# --- beside a volume desktops use, with the manager ---------------------------------------------


@pytest.fixture(params=["2.x", "4.x"])
def site(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[AvmSimulator, Path, Path]]:
    flavour = request.param
    ds1 = tmp_path / "ds1"
    make_datastore(ds1, flavour=flavour, count=2, size_mib=6, real=False)
    with AvmSimulator({"ds1": ds1}, flavour=flavour, job_delay_s=0.01) as sim:
        for folder in FOLDERS[flavour]:
            sim.import_folder_now("ds1", folder)
        cfg = write_config(tmp_path, sim.url)
        yield sim, tmp_path, cfg


def cli(cfg: Path, *args: str) -> tuple[int, dict, str]:
    proc = run_toolkit("--config", str(cfg), "--json", *args, env={"TEST_AVM_PASSWORD": "admin"})
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, (json.loads(proc.stdout) if proc.stdout.strip() else {}), proc.stderr


@pytest.mark.lab
def test_beside_a_volume_in_use_as_a_volume_of_its_own(site) -> None:
    sim, _tmp, cfg = site
    s = requests.Session()
    assert s.post(f"{sim.url}/cv_api/sessions", json={"username": "admin", "password": "admin"}, timeout=10).ok
    office = next(v for v in sim.volumes() if v.name == "Office 2016")
    user = {"entity_type": "User", "path": "CN=jdoe,OU=Users,DC=lab,DC=example"}
    if sim.flavour == "2.x":
        body = {"action_type": "assign", "id": office.id, "assignments": [user], "mount_prefix": "VDI"}
        assert s.post(f"{sim.url}/cv_api/assignments", json=body, timeout=10).ok
    else:
        item = {"app_product_id": office.product_id, "entities": [user], "app_package_id": office.id}
        body = {"data": [{**item, "app_marker_id": None}]}
        assert s.post(f"{sim.url}/app_volumes/app_assignments", json=body, timeout=10).ok
    assert cli(cfg, "init")[0] == 0
    assert cli(cfg, "snapshot")[0] == 0
    sim.admin_attach(office.id)
    flat = next(p for p in office.paths).with_name(f"{OFFICE}-flat.vmdk")
    original = flat.read_bytes()
    with flat.open("r+b") as f:
        f.write(b"damaged")
    now = datetime.now(UTC).isoformat()

    rc, report, _ = cli(cfg, "restore", "--as-of", now, "--volume", "Office 2016", "--to", "ds1", "--overwrite")
    assert rc == 1
    [entry] = report["volumes"]
    assert "never replaced while desktops use it" in entry["error"]
    assert "--rename '{name} restored'" in entry["error"] and "toolkit switch" in entry["error"]
    assert flat.read_bytes().startswith(b"damaged")

    rc, report, err = cli(
        cfg, "restore", "--as-of", now, "--volume", "Office 2016", "--to", "ds1",
        "--rename", "{name} restored", "--register", "--restore-assignments",
    )  # fmt: skip
    assert rc == 0, (err, report)
    [entry] = report["volumes"]
    assert entry["status"] == "registered"
    [given] = entry["assignments"]
    if sim.flavour == "2.x":
        assert given["status"] == "created"
    else:  # the manager takes one assignment per entity and application: the user stays pinned to the live one
        assert given["status"] == "present"
        assert f"pinned to package 'Office 2016' (id {office.id})" in given["detail"]
        assert "toolkit switch --from 'Office 2016' --to 'Office 2016 restored'" in given["detail"]
    volumes = {v.name: v for v in sim.volumes()}
    restored = volumes["Office 2016 restored"]
    assert restored.id != office.id and restored.guid == entry["guid"] != office.guid
    assert restored.paths[0] == flat.with_name(f"{RESTORED}.vmdk")
    assert restored.paths[0].with_name(f"{RESTORED}-flat.vmdk").read_bytes() == original
    assert volumes["Office 2016"].guid == office.guid and volumes["Office 2016"].attached  # the live one untouched
    assert flat.read_bytes().startswith(b"damaged")
    if sim.flavour == "2.x":
        rows = s.get(f"{sim.url}/cv_api/assignments", timeout=10).json()["assignments"]
        assert {(r["snapvol_id"], r["entity_dn"], r["mount_prefix"]) for r in rows} == {
            (office.id, user["path"], "VDI"),
            (restored.id, user["path"], "VDI"),
        }
    else:
        assert restored.product_id == office.product_id  # a package of the same application
        url = f"{sim.url}/app_volumes/app_products/{office.product_id}/assignments"
        rows = s.get(url, params={"include": "entities"}, timeout=10).json()["data"]
        assert [(r["app_package_id"], [e["distinguished_name"] for e in r["entities"]]) for r in rows] == [
            (office.id, [user["path"]])
        ]

"""The App Volumes Manager simulator, exercised over real HTTP on loopback."""

from __future__ import annotations

import hashlib
import json
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from toolkit.lab.avm_sim import AvmSimulator, escape_volume_name, unescape_volume_name
from toolkit.lab.avm_sim.errors import BadVolumeRequest, UnknownDatastore
from toolkit.lab.avm_sim.params import Params, parse_pairs
from toolkit.lab.avm_sim.tls import create_certificate
from toolkit.lab.avm_sim.vmdk import (
    is_descriptor_name,
    parse_descriptor,
    parse_metadata,
    read_descriptor,
)

PASSWORD = "lab-pass-1"  # noqa: S105 - same as conftest.PASSWORD
MIB = 1 << 20


def wait_for(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def wait_no_pending(session: requests.Session, sim: AvmSimulator) -> None:
    """Poll ``jobs/pending`` like a real client until it reports 0."""
    wait_for(lambda: session.get(f"{sim.url}/cv_api/jobs/pending").json()["pending"] == 0)


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


# --- pure pieces (no server) -------------------------------------------------------------------


def test_volume_names_escape_like_the_manager() -> None:
    assert escape_volume_name("Google Chrome 104-update") == "Google!20!Chrome!20!104-update"
    assert escape_volume_name("PHARMAX\\jocolon") == "PHARMAX!5C!jocolon"
    for name in ("Google Chrome 104-update", "PHARMAX\\jocolon", "Notepad++ 8.6 (x64) é"):
        assert unescape_volume_name(escape_volume_name(name)) == name


@pytest.mark.parametrize(
    ("name", "is_descriptor"),
    [
        ("app.vmdk", True),
        ("app-flat.vmdk", False),
        ("app-delta.vmdk", False),
        ("app-ctk.vmdk", False),
        ("app-sesparse.vmdk", False),
        ("app-s001.vmdk", False),
        ("app-f012.vmdk", False),
        ("app.vmdk.metadata", False),
        ("app.json", False),
        ("my-flatland.vmdk", True),
    ],
)
def test_only_descriptors_count_as_volumes(name: str, is_descriptor: bool) -> None:
    assert is_descriptor_name(name) is is_descriptor


def test_descriptor_extent_lines_are_parsed() -> None:
    text = (
        '# Disk DescriptorFile\nCID=fffffffe\ncreateType="monolithicFlat"\n'
        'RW 524288 FLAT "base-flat.vmdk" 0\n'
        'RW 2048 VMFS "other-flat.vmdk"\n'
        'RW 83886080 VSANSPARSE "vsan://f252ae55-2577"\n'
        "RW 100 ZERO\n"
    )
    d = parse_descriptor(text)
    assert d.create_type == "monolithicFlat"
    assert d.cid == "fffffffe"
    assert [(e.kind, e.filename, e.sectors) for e in d.extents] == [
        ("FLAT", "base-flat.vmdk", 524288),
        ("VMFS", "other-flat.vmdk", 2048),
        ("VSANSPARSE", "vsan://f252ae55-2577", 83886080),
        ("ZERO", None, 100),
    ]
    assert d.extents[2].is_remote
    assert d.size_bytes == (524288 + 2048 + 83886080 + 100) * 512


def test_metadata_sidecar_reads_ruby_symbol_yaml() -> None:
    text = (
        "---\n"
        ':template_file_name: "[ds1] cloudvolumes/apps_templates/template.vmdk"\n'
        ":volume_guid: '{ab-cd}'\n"
        ':name: "Office \\"Pro\\""\n'
        ":size_mb: 2048\n:protected: false\n:owner: nil\n:unknown_key: some value\n"
        "  nested: ignored\n"
    )
    meta = parse_metadata(text)
    assert meta == {
        "template_file_name": "[ds1] cloudvolumes/apps_templates/template.vmdk",
        "volume_guid": "{ab-cd}",
        "name": 'Office "Pro"',
        "size_mb": 2048,
        "protected": False,
        "owner": None,
        "unknown_key": "some value",
    }


def test_rails_style_parameters_from_every_source() -> None:
    assert parse_pairs([("volumes[]", "1"), ("volumes[]", "2"), ("data[path]", "x")]) == {
        "volumes": ["1", "2"],
        "data": {"path": "x"},
    }
    assert parse_pairs([("a[0][b]", "y"), ("a[1][b]", "z")]) == {"a": [{"b": "y"}, {"b": "z"}]}
    query = Params.from_request("volumes%5B%5D=3&size_mb=10", b"", "")
    form = Params.from_request("", b"volumes%5B%5D=3&size_mb=10", "application/x-www-form-urlencoded")
    body = Params.from_request("", b'{"volumes": [3], "size_mb": 10}', "application/json")
    for params in (query, form, body):
        assert params.int_list("volumes") == [3]
        assert params.integer("size_mb") == 10


# --- sessions ------------------------------------------------------------------------------------


@pytest.mark.lab
@pytest.mark.parametrize(("flavour", "namespace"), [("2.x", "cv_api"), ("4.x", "app_volumes")])
def test_login_cookie_and_logout(start_avm: Callable[..., AvmSimulator], flavour: str, namespace: str) -> None:
    sim = start_avm(flavour)
    s = requests.Session()
    protected = f"{sim.url}/cv_api/datastores"
    assert s.get(protected).status_code == 403
    r = s.post(f"{sim.url}/{namespace}/sessions", json={"username": "admin", "password": PASSWORD})
    assert r.status_code == 200
    assert r.json()["success"].lower() == "ok"
    assert "_session_id" in s.cookies
    assert s.get(protected).status_code == 200
    r = s.delete(f"{sim.url}/{namespace}/sessions")
    assert r.json() == {"success": 'Destroying session for "LAB\\admin"'}
    assert s.get(protected).status_code == 403
    assert s.delete(f"{sim.url}/{namespace}/sessions").json() == {"warning": "No valid session to remove"}


@pytest.mark.lab
def test_login_accepts_form_bodies_and_account_forms(avm2: AvmSimulator) -> None:
    for username in ("admin", "LAB\\admin", "admin@lab.example", "ADMIN"):
        s = requests.Session()
        r = s.post(f"{avm2.url}/cv_api/sessions", data={"username": username, "password": PASSWORD})
        assert r.status_code == 200, username
        assert s.get(f"{avm2.url}/cv_api/appstacks").status_code == 200


@pytest.mark.lab
def test_bad_logins_are_400(avm4: AvmSimulator) -> None:
    url = f"{avm4.url}/app_volumes/sessions"
    r = requests.post(url, json={"password": PASSWORD}, timeout=10)
    assert (r.status_code, r.json()) == (400, {"error": "User name is required"})
    r = requests.post(url, json={"username": "admin", "password": "wrong"}, timeout=10)
    assert r.status_code == 400
    assert "error" in r.json()
    r = requests.post(url, json={"username": "someone", "password": PASSWORD}, timeout=10)
    assert r.status_code == 400


@pytest.mark.lab
def test_missing_session_answers_per_flavour(start_avm: Callable[..., AvmSimulator]) -> None:
    expired = "Session expired. Please login again."
    avm2 = start_avm("2.x")
    r = requests.get(f"{avm2.url}/cv_api/appstacks", timeout=10)
    assert (r.status_code, r.json()) == (403, {"error": expired})
    assert requests.get(f"{avm2.url}/app_volumes/version", timeout=10).status_code == 404
    avm4 = start_avm("4.x")
    r = requests.get(f"{avm4.url}/app_volumes/app_packages", timeout=10)
    assert (r.status_code, r.json()) == (403, {"error": expired})
    r = requests.get(f"{avm4.url}/app_volumes/app_packages/1", timeout=10)
    assert (r.status_code, r.json()) == (403, {"errors": [{"error": expired}]})
    sim401 = start_avm("4.x", session_error_status=401)
    assert requests.get(f"{sim401.url}/app_volumes/app_packages", timeout=10).status_code == 401
    assert requests.get(f"{sim401.url}/cv_api/datastores", timeout=10).status_code == 403


@pytest.mark.lab
def test_idle_sessions_expire(
    start_avm: Callable[..., AvmSimulator], avm_login: Callable[..., requests.Session]
) -> None:
    sim = start_avm("4.x", session_idle_s=0.6)
    s = avm_login(sim, namespace="app_volumes")
    for _ in range(3):  # use keeps the session alive
        time.sleep(0.25)
        assert s.get(f"{sim.url}/app_volumes/app_products").status_code == 200
    time.sleep(0.8)
    assert s.get(f"{sim.url}/app_volumes/app_products").status_code == 403


@pytest.mark.lab
def test_admin_hook_expires_sessions(avm2: AvmSimulator, avm_login: Callable[..., requests.Session]) -> None:
    s = avm_login(avm2)
    assert requests.post(f"{avm2.url}/_sim/sessions/expire", timeout=10).json() == {"expired": 1}
    assert s.get(f"{avm2.url}/cv_api/appstacks").status_code == 403


@pytest.mark.lab
def test_one_cookie_serves_both_namespaces(avm4: AvmSimulator, avm_login: Callable[..., requests.Session]) -> None:
    s = avm_login(avm4, namespace="cv_api")
    assert s.get(f"{avm4.url}/app_volumes/app_packages").status_code == 200
    s = avm_login(avm4, namespace="app_volumes")
    assert s.get(f"{avm4.url}/cv_api/storages").status_code == 200


# --- version and shapes ------------------------------------------------------------------------


@pytest.mark.lab
def test_version_shapes(start_avm: Callable[..., AvmSimulator]) -> None:
    nested = requests.get(f"{start_avm('2.x').url}/cv_api/version", timeout=10).json()
    assert nested["version"]["internal"].startswith("2.")
    flat = requests.get(f"{start_avm('2.x', version_shape='flat').url}/cv_api/version", timeout=10).json()
    assert isinstance(flat["version"], str)
    assert flat["internal"].startswith("2.")
    avm4 = start_avm("4.x")
    for path in ("/app_volumes/version", "/cv_api/version"):
        record = requests.get(f"{avm4.url}{path}", timeout=10).json()["version"]
        assert record["internal"].startswith("4.")
        assert "App Volumes 4" in record["version"]
    health = requests.get(f"{avm4.url}/health_check", timeout=10)
    assert health.headers["Content-Type"].startswith("text/plain")


@pytest.mark.lab
def test_2x_appstack_shapes(start_avm: Callable[..., AvmSimulator], avm_login: Callable[..., requests.Session]) -> None:
    sim = start_avm("2.x")
    programs = [{"name": "7-Zip", "publisher": "Igor Pavlov", "version": "23.01"}]
    info = sim.admin_create_volume("appstack", "Zipper Tool", programs=programs)
    s = avm_login(sim)
    listing = s.get(f"{sim.url}/cv_api/appstacks").json()
    assert isinstance(listing, list)
    assert [a["name"] for a in listing] == ["Zipper Tool"]
    detail = s.get(f"{sim.url}/cv_api/appstacks/{info.id}").json()["appstack"]
    assert detail["file_location"] == "[ds1] cloudvolumes/apps/Zipper!20!Tool.vmdk"
    assert detail["volume_guid"] == info.guid
    assert detail["status"] == "enabled"
    files = s.get(f"{sim.url}/cv_api/appstacks/{info.id}/files").json()
    assert files[0]["storage_location"] == "ds1"
    assert files[0]["reachable"] is True
    assert files[0]["missing"] is False
    apps = s.get(f"{sim.url}/cv_api/appstacks/{info.id}/applications").json()["applications"]
    assert [a["name"] for a in apps] == ["7-Zip"]
    missing = s.get(f"{sim.url}/cv_api/appstacks/999")
    assert (missing.status_code, missing.json()) == (404, {"error": "Unable to locate the Volume ID 999"})
    old = start_avm("2.x", appstacks_shape="currentappstacks", datastores={"ds9": sim.datastore_root("ds1")})
    wrapped = avm_login(old).get(f"{old.url}/cv_api/appstacks").json()
    assert wrapped == {"currentappstacks": {"appstacks": []}}


@pytest.mark.lab
def test_4x_products_packages_programs(avm4: AvmSimulator, avm_login: Callable[..., requests.Session]) -> None:
    programs = [{"name": "Mozilla Firefox", "publisher": "Mozilla", "version": "121.0"}]
    pkg = avm4.admin_create_volume("package", "Firefox 121", product="Firefox", programs=programs)
    s = avm_login(avm4, namespace="app_volumes")
    products = s.get(f"{avm4.url}/app_volumes/app_products").json()["data"]
    assert [(p["name"], [a["name"] for a in p["app_packages"]]) for p in products] == [("Firefox", ["Firefox 121"])]
    url = f"{avm4.url}/app_volumes/app_packages/{pkg.id}"
    detail = s.get(url, params={"include": "app_markers,app_product,lifecycle_stage"}).json()["data"]
    assert detail["volume_guid"] == pkg.guid
    assert detail["path"] == "appvolumes/packages"
    assert detail["app_markers"][0]["name"] == "CURRENT"
    assert detail["app_product"]["name"] == "Firefox"
    assert detail["lifecycle_stage"]["name"] == "Published"
    assert s.get(f"{url}/programs").json()["data"][0]["name"] == "Mozilla Firefox"
    assert s.get(f"{url}/files").json()["data"][0]["storage_location"] == "ds1"
    assert s.get(f"{avm4.url}/app_volumes/app_programs").json()["data"][0]["app_package_id"] == pkg.id
    r = s.get(f"{avm4.url}/app_volumes/app_packages/999")
    assert r.status_code == 404
    assert "errors" in r.json()
    r = s.put(url, json={"data": {"note": "for HR", "lifecycle_stage_name": "Tested"}})
    assert (r.json()["data"]["note"], r.json()["data"]["lifecycle_stage_id"]) == ("for HR", 2)


@pytest.mark.lab
def test_storage_endpoints(avm4: AvmSimulator, avm_login: Callable[..., requests.Session]) -> None:
    s = avm_login(avm4)
    ds = s.get(f"{avm4.url}/cv_api/datastores").json()
    assert ds["package_path"] == "appvolumes/packages"
    assert ds["package_storage"] == "ds1|DC0|1"
    assert [d["uniq_string"] for d in ds["datastores"]] == ["ds1|DC0|1", "ds2|DC0|1"]
    storages = s.get(f"{avm4.url}/cv_api/storages").json()["storages"]
    assert {st["name"] for st in storages} == {"ds1", "ds2"}
    r = s.put(f"{avm4.url}/cv_api/storages/mark_attach_action?ids[]=2&mark_attach_action=no_attach")
    assert r.status_code == 200
    assert [st["attachable"] for st in s.get(f"{avm4.url}/cv_api/storages").json()["storages"]] == [True, False]
    groups = s.get(f"{avm4.url}/cv_api/storage_groups").json()["storage_groups"]
    assert groups[0]["name"] == "sg1"
    group = s.get(f"{avm4.url}/cv_api/storage_groups/{groups[0]['id']}").json()["storage_group"]
    assert [m["name"] for m in group["storages"]] == ["ds1", "ds2"]
    assert s.get(f"{avm4.url}/cv_api/storage_groups/99").status_code == 404


# --- import ---------------------------------------------------------------------------------------


@pytest.mark.lab
def test_2x_import_scans_files_and_marks_legacy(avm2: AvmSimulator, avm_login: Callable[..., requests.Session]) -> None:
    avm2.admin_create_volume("appstack", "Office 2019", register=False, description="office")
    avm2.admin_create_volume("appstack", "No Sidecar", register=False, sidecar=False)
    s = avm_login(avm2)
    assert s.get(f"{avm2.url}/cv_api/appstacks").json() == []
    form = {"datacenter": "DC0", "datastore": "ds1|DC0|1", "path": "cloudvolumes/apps", "delay": "true"}
    r = s.post(f"{avm2.url}/cv_api/volumes/import", data=form)
    assert r.status_code == 200
    wait_no_pending(s, avm2)
    stacks = {a["name"]: a for a in s.get(f"{avm2.url}/cv_api/appstacks").json()}
    assert set(stacks) == {"Office 2019", "No Sidecar"}  # extents and sidecars are not volumes
    assert stacks["Office 2019"]["status"] == "enabled"
    assert stacks["No Sidecar"]["status"] == "legacy"
    office = s.get(f"{avm2.url}/cv_api/appstacks/{stacks['Office 2019']['id']}").json()["appstack"]
    assert office["description"] == "office"
    assert office["volume_guid"].startswith("{")
    # a second import of the same files finds the same volumes
    s.post(f"{avm2.url}/cv_api/volumes/import", data={**form, "delay": "false"})
    assert len(s.get(f"{avm2.url}/cv_api/appstacks").json()) == 2


@pytest.mark.lab
def test_2x_import_of_writables_keeps_the_owner(avm2: AvmSimulator, avm_login: Callable[..., requests.Session]) -> None:
    avm2.admin_create_volume("writable", "LAB\\kwhite", register=False, size_mb=8)
    s = avm_login(avm2)
    form = {"datastore": "ds1", "path": "cloudvolumes/writable", "delay": "false"}
    assert s.post(f"{avm2.url}/cv_api/volumes/import", data=form).status_code == 200
    [item] = s.get(f"{avm2.url}/cv_api/writables").json()["datastores"]["writable_volumes"]
    assert (item["name"], item["owner_upn"], item["status"]) == ("LAB\\kwhite", "LAB\\kwhite", "enabled")
    assert s.get(f"{avm2.url}/cv_api/appstacks").json() == []


@pytest.mark.lab
def test_import_reads_hand_written_files(avm2: AvmSimulator, avm_login: Callable[..., requests.Session]) -> None:
    folder = avm2.datastore_root("ds2") / "cloudvolumes/apps"
    (folder / "Visio!20!2021.vmdk").write_text(
        '# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType="monolithicFlat"\n'
        '\n# Extent description\nRW 524288 FLAT "Visio!20!2021-flat.vmdk" 0\n'
    )
    with (folder / "Visio!20!2021-flat.vmdk").open("wb") as f:
        f.truncate(524288 * 512)
    (folder / "Visio!20!2021.vmdk.metadata").write_text(
        '---\n:template_file_name: "[ds2] cloudvolumes/apps_templates/template.vmdk"\n'
        ":volume_guid: '{11111111-2222-3333-4444-555555555555}'\n:future_key: 42\n"
    )
    (folder / "Visio!20!2021-ctk.vmdk").write_bytes(b"\0" * 512)
    (folder / "Broken.vmdk").write_text('createType="vmfs"\nRW 2048 VMFS "Broken-flat.vmdk"\n')
    (folder / "junk-s001.vmdk").write_bytes(b"\0" * 512)
    s = avm_login(avm2)
    r = s.post(f"{avm2.url}/cv_api/volumes/import", data={"datastore": "ds2", "path": "cloudvolumes/apps"})
    assert r.status_code == 200
    assert avm2.drain_jobs()
    [stack] = s.get(f"{avm2.url}/cv_api/appstacks").json()
    assert stack["name"] == "Visio 2021"  # no :name: key: the file name, unescaped
    assert stack["size_mb"] == 256
    assert stack["datastore_name"] == "ds2"
    results = {j["name"].rsplit("/", 1)[-1]: j for j in avm2.job_history()}
    assert results["Broken.vmdk"]["state"] == "failed"
    assert "Broken-flat.vmdk" in results["Broken.vmdk"]["result"]
    detail = s.get(f"{avm2.url}/cv_api/appstacks/{stack['id']}").json()["appstack"]
    assert detail["volume_guid"] == "{11111111-2222-3333-4444-555555555555}"


@pytest.mark.lab
def test_4x_package_import_restores_application_and_locations(
    avm4: AvmSimulator, avm_login: Callable[..., requests.Session]
) -> None:
    programs = [{"name": "Notepad++", "publisher": "Don Ho", "version": "8.6"}]
    avm4.admin_create_volume("package", "Notepad++ 8.6", product="Notepad++", programs=programs, register=False)
    s = avm_login(avm4, namespace="app_volumes")
    form = {"data[datacenter]": "DC0", "data[datastore]": "ds1|DC0|1", "data[path]": "appvolumes/packages"}
    r = s.post(f"{avm4.url}/app_volumes/app_products/import", data={**form, "data[delay]": "true"})
    assert r.status_code == 200
    wait_no_pending(s, avm4)
    [product] = s.get(f"{avm4.url}/app_volumes/app_products").json()["data"]
    assert product["name"] == "Notepad++"
    [package] = product["app_packages"]
    assert package["name"] == "Notepad++ 8.6"
    assert package["status"] == "enabled"
    url = f"{avm4.url}/app_volumes/app_packages/{package['id']}"
    assert s.get(f"{url}/programs").json()["data"][0]["publisher"] == "Don Ho"
    assert s.get(url, params={"include": "app_markers"}).json()["data"]["app_markers"] == []  # not imported
    # a copy on another datastore is another location of the same package, not a new one
    avm4.replicate_now()
    r = s.post(f"{avm4.url}/app_volumes/app_products/import", data={**form, "data[datastore]": "ds2"})
    wait_no_pending(s, avm4)
    assert len(s.get(f"{avm4.url}/app_volumes/app_packages").json()["data"]) == 1
    assert {f["storage_location"] for f in s.get(f"{url}/files").json()["data"]} == {"ds1", "ds2"}


@pytest.mark.lab
def test_4x_import_refuses_a_second_package_with_the_same_name(avm4: AvmSimulator) -> None:
    avm4.admin_create_volume("package", "Tool 1", product="Tool")
    avm4.admin_create_volume("package", "Tool 1", product="Tool", datastore="ds2", register=False)
    [result] = avm4.import_folder_now("ds2", "appvolumes/packages")
    assert result.startswith("failed:")
    assert "already exists" in result
    assert len(avm4.volumes("package")) == 1


@pytest.mark.lab
def test_import_errors(avm2: AvmSimulator, avm_login: Callable[..., requests.Session]) -> None:
    s = avm_login(avm2)
    r = s.post(f"{avm2.url}/cv_api/volumes/import", data={"datastore": "nope", "path": "cloudvolumes/apps"})
    assert r.status_code == 400
    r = s.post(f"{avm2.url}/cv_api/volumes/import", data={"datastore": "ds1", "path": "not/here"})
    assert r.status_code == 400
    with pytest.raises(UnknownDatastore):
        avm2.import_folder("nope", "cloudvolumes/apps")


@pytest.mark.lab
def test_jobs_drain_after_the_delay(
    start_avm: Callable[..., AvmSimulator], avm_login: Callable[..., requests.Session]
) -> None:
    sim = start_avm("2.x", job_delay_s=0.5)
    for i in range(3):
        sim.admin_create_volume("appstack", f"App {i}", register=False)
    s = avm_login(sim)
    s.post(f"{sim.url}/cv_api/volumes/import", json={"datastore": "ds1", "path": "cloudvolumes/apps"})
    assert s.get(f"{sim.url}/cv_api/jobs/pending").json()["pending"] == 3
    activities = s.get(f"{sim.url}/cv_api/pending_activities").json()["allactivities"]["pending_activities"]
    assert len(activities) == 3
    assert s.get(f"{sim.url}/cv_api/appstacks").json() == []
    wait_no_pending(s, sim)
    assert len(s.get(f"{sim.url}/cv_api/appstacks").json()) == 3


# --- writables ----------------------------------------------------------------------------------


@pytest.mark.lab
def test_2x_writable_attach_enable_disable(avm2: AvmSimulator, avm_login: Callable[..., requests.Session]) -> None:
    w = avm2.admin_create_volume("writable", "jdoe", size_mb=32)
    s = avm_login(avm2)
    [item] = s.get(f"{avm2.url}/cv_api/writables").json()["datastores"]["writable_volumes"]
    assert (item["name"], item["attached"], item["status"]) == ("LAB\\jdoe", "Detached", "enabled")
    assert item["filename"] == "LAB!5C!jdoe.vmdk"
    assert item["path"] == "cloudvolumes/writable"
    avm2.admin_attach(w.id, machine="DESKTOP-07")
    detail = s.get(f"{avm2.url}/cv_api/writables/{w.id}").json()["writable"]
    assert detail["attached"] == "Attached"
    assert "DESKTOP-07" in detail["mounted_on"]
    assert requests.post(f"{avm2.url}/_sim/volumes/{w.id}/detach", timeout=10).json() == {"detached": 1}
    assert s.get(f"{avm2.url}/cv_api/writables/{w.id}").json()["writable"]["attached"] == "Detached"
    r = s.post(f"{avm2.url}/cv_api/writables/disable?volumes%5B%5D={w.id}")  # query string (FLING style)
    assert "was disabled" in r.text
    assert s.get(f"{avm2.url}/cv_api/writables/{w.id}").json()["writable"]["status"] == "disabled"
    r = s.post(f"{avm2.url}/cv_api/writables/enable", data={"volumes[]": str(w.id)})  # form body
    assert "was enabled" in r.text
    assert s.get(f"{avm2.url}/cv_api/writables/{w.id}").json()["writable"]["status"] == "enabled"


@pytest.mark.lab
def test_writable_grow_changes_the_files(avm4: AvmSimulator, avm_login: Callable[..., requests.Session]) -> None:
    w = avm4.admin_create_volume("writable", "LAB\\asmith", size_mb=16)
    other = avm4.admin_create_volume("writable", "bjones", size_mb=16)
    avm4.admin_attach(other.id)
    s = avm_login(avm4, namespace="app_volumes")
    r = s.post(f"{avm4.url}/app_volumes/writables/grow?bg=0&size_mb=64&volumes%5B%5D={w.id}&volumes%5B%5D={other.id}")
    body = r.json()
    assert len(body["successes"]) == 1
    assert "is attached" in body["warnings"][0]
    descriptor = w.paths[0]
    assert read_descriptor(descriptor).size_bytes == 64 * MIB
    assert (descriptor.parent / "LAB!5C!asmith-flat.vmdk").stat().st_size == 64 * MIB
    assert s.get(f"{avm4.url}/app_volumes/writables/{w.id}").json()["writable"]["size_mb"] == 64
    assert s.get(f"{avm4.url}/app_volumes/writables/{other.id}").json()["writable"]["size_mb"] == 16
    r = s.post(f"{avm4.url}/app_volumes/writables/grow", json={"size_mb": 32, "volumes": [w.id]})
    assert r.json()["errors"]
    assert s.post(f"{avm4.url}/app_volumes/writables/grow", json={"size_mb": 99, "volumes": [999]}).status_code == 404
    assert s.post(f"{avm4.url}/app_volumes/writables/grow", json={"volumes": [w.id]}).status_code == 400


@pytest.mark.lab
def test_writable_update_and_delete(avm4: AvmSimulator, avm_login: Callable[..., requests.Session]) -> None:
    w = avm4.admin_create_volume("writable", "cdavis")
    busy = avm4.admin_create_volume("writable", "ebrown")
    avm4.admin_attach(busy.id)
    s = avm_login(avm4, namespace="app_volumes")
    r = s.put(
        f"{avm4.url}/app_volumes/writables/{w.id}",
        json={"description": "profile", "block_login": 1, "mount_prefix": "VDI", "error_action": ""},
    )
    assert (r.status_code, r.text) == (200, "Saved Writable changes.")
    detail = s.get(f"{avm4.url}/app_volumes/writables/{w.id}").json()["writable"]
    assert (detail["description"], detail["block_login"], detail["mount_prefix"]) == ("profile", True, "VDI")
    folder = w.paths[0].parent
    expected = [f"LAB!5C!{user}{suffix}" for user in ("cdavis", "ebrown") for suffix in (".vmdk", "-flat.vmdk")]
    expected += [f"LAB!5C!{user}.vmdk.metadata" for user in ("cdavis", "ebrown")]
    assert files_in(folder) == sorted(expected)
    r = s.delete(f"{avm4.url}/app_volumes/writables/{w.id}")
    assert r.json()["success"] == "Deleted 1 volume"
    assert r.json()["snapvols"]["success"][0]["id"] == w.id
    assert all("cdavis" not in name for name in files_in(folder))
    r = s.delete(f"{avm4.url}/app_volumes/writables/{busy.id}")
    assert r.json()["snapvols"]["error"][0]["id"] == busy.id
    assert busy.paths[0].exists()
    assert s.delete(f"{avm4.url}/app_volumes/writables/{w.id}").status_code == 404


@pytest.mark.lab
def test_volumes_delete_removes_every_file(avm4: AvmSimulator, avm_login: Callable[..., requests.Session]) -> None:
    pkg = avm4.admin_create_volume("package", "Gimp 2.10", product="Gimp")
    avm4.replicate_now()
    copies = [avm4.datastore_root(ds) / "appvolumes/packages" for ds in ("ds1", "ds2")]
    assert all(len(files_in(c)) == 4 for c in copies)
    s = avm_login(avm4)
    r = s.post(f"{avm4.url}/cv_api/volumes/delete", data={"volumes[]": [str(pkg.id), "999"]})
    assert r.json()["snapvols"]["not_found"] == [999]
    assert r.json()["success"] == "Deleted 1 volume(s)"
    assert all(files_in(c) == [] for c in copies)


# --- assignments and attachments ----------------------------------------------------------------


@pytest.mark.lab
def test_2x_assignments(avm2: AvmSimulator, avm_login: Callable[..., requests.Session]) -> None:
    app = avm2.admin_create_volume("appstack", "Acrobat")
    s = avm_login(avm2)
    body = {
        "action_type": "assign",
        "id": app.id,
        "assignments": [{"entity_type": "Group", "path": "CN=Designers,OU=Groups,DC=lab,DC=example"}],
        "mount_prefix": "VDI",
        "rtime": False,
    }
    r = s.post(f"{avm2.url}/cv_api/assignments", json=body)
    assert r.json()["success"] == "Assigned 1 AppStack(s)"
    [a] = s.get(f"{avm2.url}/cv_api/appstacks/{app.id}/assignments").json()
    assert (a["entity_type"], a["mount_prefix"]) == ("group", "VDI")
    assert "Designers" in a["name"]
    assert s.get(f"{avm2.url}/cv_api/appstacks").json()[0]["assignments_total"] == 1
    form = {
        "action_type": "unassign",
        "ids[]": str(app.id),
        "assignments[0][entity_type]": "Group",
        "assignments[0][path]": "CN=Designers,OU=Groups,DC=lab,DC=example",
    }
    assert s.post(f"{avm2.url}/cv_api/assignments", data=form).json()["success"] == "Unassigned 1 AppStack(s)"
    assert s.get(f"{avm2.url}/cv_api/assignments").json() == {"assignments": []}
    r = s.post(f"{avm2.url}/cv_api/assignments", json={"action_type": "assign", "id": app.id, "assignments": []})
    assert (r.status_code, r.json()) == (400, {"error": "No entities provided"})
    avm2.admin_attach(app.id, machine="DESKTOP-01", user_upn="LAB\\jdoe")
    [att] = s.get(f"{avm2.url}/cv_api/appstacks/{app.id}/attachments").json()
    assert att["entity_type"] == "Computer"
    assert s.get(f"{avm2.url}/cv_api/attachments").json()["attachments"][0]["machine_name"] == "DESKTOP-01"


@pytest.mark.lab
def test_4x_assignments(avm4: AvmSimulator, avm_login: Callable[..., requests.Session]) -> None:
    pkg = avm4.admin_create_volume("package", "VLC 3", product="VLC")
    s = avm_login(avm4, namespace="app_volumes")
    entity = {"path": "CN=jdoe,OU=Users,DC=lab,DC=example", "entity_type": "User"}
    item = {"app_product_id": pkg.product_id, "entities": [entity], "app_package_id": None, "app_marker_id": 1}
    r = s.post(f"{avm4.url}/app_volumes/app_assignments", json={"data": [item]})
    [created] = r.json()["data"]
    assert (created["app_marker_name"], created["app_product_name"]) == ("CURRENT", "VLC")
    flat = s.get(f"{avm4.url}/app_volumes/app_assignments").json()["data"]
    assert flat[0]["entities"][0]["account_name"] == "jdoe"
    paged = s.get(f"{avm4.url}/app_volumes/app_assignments", params={"api_version": 4040}).json()
    assert paged["meta"]["total"] == 1
    assert paged["data"][0]["type"] == "app_assignments"
    by_package = s.get(f"{avm4.url}/app_volumes/app_packages/{pkg.id}/assignments").json()["data"]
    assert by_package[0]["app_package_id"] == pkg.id
    by_product = s.get(f"{avm4.url}/app_volumes/app_products/{pkg.product_id}/assignments").json()["data"]
    assert by_product[0]["app_package_id"] is None
    r = s.delete(f"{avm4.url}/app_volumes/app_assignments", json={"ids": [created["id"], 77]})
    assert r.json() == {"data": {"deleted": [{"id": str(created["id"])}], "not_deleted": [{"id": "77"}]}}
    bad = s.post(f"{avm4.url}/app_volumes/app_assignments", json={"data": [{**item, "app_product_id": 99}]})
    assert bad.status_code == 400
    avm4.admin_attach(pkg.id, machine="DESKTOP-02")
    [att] = s.get(f"{avm4.url}/app_volumes/app_attachments").json()["data"]
    assert (att["app_package_id"], att["machine_name"]) == (pkg.id, "DESKTOP-02")


JDOE = {"entity_type": "User", "path": "CN=jdoe,OU=Users,DC=lab,DC=example"}


@pytest.mark.lab
def test_2x_a_duplicate_assignment_is_ignored_with_a_warning(
    avm2: AvmSimulator, avm_login: Callable[..., requests.Session]
) -> None:
    app = avm2.admin_create_volume("appstack", "Acrobat")
    other = avm2.admin_create_volume("appstack", "Acrobat restored")
    s = avm_login(avm2)

    def post(action: str, volume_id: int, prefix: str = "") -> dict[str, Any]:
        body = {"action_type": action, "id": volume_id, "assignments": [JDOE], "mount_prefix": prefix}
        r = s.post(f"{avm2.url}/cv_api/assignments", json=body)
        assert r.status_code == 200, r.text
        return dict(r.json())

    assert post("assign", app.id, "VDI")["success"] == "Assigned 1 AppStack(s)"
    again = post("assign", app.id)
    assert again["success"] == "Assigned 0 AppStack(s)"
    assert again["warnings"] == ["jdoe is already assigned to Acrobat"]
    assert post("assign", other.id)["success"] == "Assigned 1 AppStack(s)"  # the same entity, another AppStack
    rows = s.get(f"{avm2.url}/cv_api/assignments").json()["assignments"]
    assert sorted((r["snapvol_id"], r["mount_prefix"]) for r in rows) == [(app.id, "VDI"), (other.id, "")]
    assert post("unassign", app.id)["success"] == "Unassigned 1 AppStack(s)"
    assert post("unassign", app.id)["warnings"] == ["jdoe is not assigned to Acrobat"]
    assert [r["snapvol_id"] for r in s.get(f"{avm2.url}/cv_api/assignments").json()["assignments"]] == [other.id]


@pytest.mark.lab
def test_4x_a_duplicate_assignment_is_refused(avm4: AvmSimulator, avm_login: Callable[..., requests.Session]) -> None:
    first = avm4.admin_create_volume("package", "VLC 3", product="VLC")
    second = avm4.admin_create_volume("package", "VLC 4", product="VLC", current=False)
    s = avm_login(avm4, namespace="app_volumes")
    url = f"{avm4.url}/app_volumes/app_assignments"
    pinned = {"app_product_id": first.product_id, "entities": [JDOE], "app_package_id": first.id}
    marker = {"app_product_id": first.product_id, "entities": [JDOE], "app_package_id": None, "app_marker_id": None}
    assert s.post(url, json={"data": [pinned]}).status_code == 200
    r = s.post(url, json={"data": [pinned]})
    assert r.status_code == 400
    duplicate = "Unable to create duplicate assignment with entity LAB\\jdoe to the same application"
    assert r.json()["errors"][0]["title"] == duplicate
    # An entity has an application once: pinned to another of its packages, or through its marker, is a duplicate too
    # (the 2512 document's example), so moving it between packages takes a delete, then a create.
    for again in ({**pinned, "app_package_id": second.id}, marker):
        r = s.post(url, json={"data": [again]})
        assert (r.status_code, r.json()["errors"][0]["title"]) == (400, duplicate)
    [row] = s.get(url).json()["data"]
    assert s.delete(url, json={"ids": [row["id"]]}).json()["data"]["deleted"] == [{"id": str(row["id"])}]
    assert s.post(url, json={"data": [{**pinned, "app_package_id": second.id}]}).status_code == 200
    # A batch with a duplicate in it creates nothing, nor does one giving an entity the application twice.
    designers = {"path": "CN=Designers,OU=Groups,DC=lab,DC=example", "entity_type": "Group"}
    r = s.post(url, json={"data": [{**pinned, "entities": [designers]}, pinned]})
    assert r.status_code == 400
    r = s.post(url, json={"data": [{**marker, "entities": [designers]}, {**pinned, "entities": [designers]}]})
    assert (r.status_code, r.json()["errors"][0]["title"]) == (400, duplicate.replace("jdoe", "Designers"))
    assert [a["app_package_id"] for a in s.get(url).json()["data"]] == [second.id]


@pytest.mark.lab
def test_4x_deleting_the_current_package_clears_the_marker_and_its_assignments(
    avm4: AvmSimulator, avm_login: Callable[..., requests.Session]
) -> None:
    current = avm4.admin_create_volume("package", "VLC 3", product="VLC")
    older = avm4.admin_create_volume("package", "VLC 2", product="VLC", current=False)
    s = avm_login(avm4)
    url = f"{avm4.url}/app_volumes/app_assignments"
    by_marker = {"app_product_id": current.product_id, "entities": [JDOE], "app_package_id": None}
    designers = {"path": "CN=Designers,OU=Groups,DC=lab,DC=example", "entity_type": "Group"}
    on_older = {"app_product_id": current.product_id, "entities": [designers], "app_package_id": older.id}
    assert s.post(url, json={"data": [by_marker, on_older]}).status_code == 200
    r = s.post(f"{avm4.url}/cv_api/volumes/delete", data={"volumes[]": [str(current.id)]})
    assert r.json()["snapvols"]["success"]
    rows = s.get(url).json()["data"]
    assert [(a["app_package_id"], a.get("app_marker_id")) for a in rows] == [(older.id, None)]
    product = f"{avm4.url}/app_volumes/app_products/{current.product_id}/app_packages"
    packages = s.get(product, params={"include": "app_markers"}).json()["data"]
    assert [(p["id"], p["app_markers"]) for p in packages] == [(older.id, [])]
    # The application has no marker now: a marker assignment is refused until one is set again.
    assert s.post(url, json={"data": [by_marker]}).status_code == 400
    marker = f"{avm4.url}/app_volumes/app_products/{current.product_id}/app_markers/CURRENT"
    assert s.put(marker, params={"data[app_package_id]": older.id}).status_code == 200
    assert s.post(url, json={"data": [by_marker]}).status_code == 200


@pytest.mark.lab
@pytest.mark.parametrize("flavour", ["2.x", "4.x"])
def test_an_entity_can_be_made_to_fail_its_assignments(
    start_avm: Callable[..., AvmSimulator], avm_login: Callable[..., requests.Session], flavour: str
) -> None:
    sim = start_avm(flavour)
    kind = "appstack" if flavour == "2.x" else "package"
    volume = sim.admin_create_volume(kind, "Editor 1", **({"product": "Editor"} if flavour == "4.x" else {}))
    s = avm_login(sim)
    r = requests.post(f"{sim.url}/_sim/entities/refuse", json={"path": JDOE["path"]}, timeout=10)
    assert r.json() == {"path": JDOE["path"], "refused": True}
    if flavour == "2.x":
        url, body = f"{sim.url}/cv_api/assignments", {"action_type": "assign", "id": volume.id, "assignments": [JDOE]}
    else:
        item = {"app_product_id": volume.product_id, "entities": [JDOE], "app_package_id": volume.id}
        url, body = f"{sim.url}/app_volumes/app_assignments", {"data": [item]}
    r = s.post(url, json=body)
    if flavour == "2.x":
        assert r.status_code == 500
        assert r.json() == {
            "error": "Assigned AppStacks failed",
            "errors": ['Unable to save assignment of "User <LAB\\jdoe>" to "Editor 1"'],
        }
        assert s.get(f"{sim.url}/cv_api/assignments").json()["assignments"] == []
    else:
        assert (r.status_code, r.json()["errors"][0]["title"]) == (400, "Unable to save assignment")
        assert s.get(f"{sim.url}/app_volumes/app_assignments").json()["data"] == []
    requests.post(f"{sim.url}/_sim/entities/refuse", json={"path": JDOE["path"], "refuse": False}, timeout=10)
    assert s.post(url, json=body).status_code == 200
    if flavour == "4.x":  # refused pinned to one package only: the entity's other assignments are saved
        other = sim.admin_create_volume(kind, "Editor 2", product="Editor", current=False)
        [row] = s.get(url).json()["data"]
        assert s.delete(url, json={"ids": [row["id"]]}).status_code == 200
        sim.admin_refuse_assignments(JDOE["path"], package_id=other.id)
        r = s.post(url, json={"data": [{**item, "app_package_id": other.id}]})
        assert (r.status_code, r.json()["errors"][0]["title"]) == (400, "Unable to save assignment")
        assert s.post(url, json=body).status_code == 200


@pytest.mark.lab
@pytest.mark.parametrize("flavour", ["2.x", "4.x"])
def test_removing_assignments_can_be_made_to_fail(
    start_avm: Callable[..., AvmSimulator], avm_login: Callable[..., requests.Session], flavour: str
) -> None:
    sim = start_avm(flavour)
    kind = "appstack" if flavour == "2.x" else "package"
    product = {"product": "Editor"} if flavour == "4.x" else {}
    one = sim.admin_create_volume(kind, "Editor 1", **product)
    two = sim.admin_create_volume(kind, "Editor 2", **product, **({"current": False} if product else {}))
    group = {"entity_type": "Group", "path": "CN=Designers,OU=Groups,DC=lab,DC=example"}
    s = avm_login(sim)
    with pytest.raises(BadVolumeRequest):
        sim.admin_refuse_unassignments()
    if flavour == "2.x":
        url = f"{sim.url}/cv_api/assignments"
        for v in (one, two):
            assert s.post(url, json={"action_type": "assign", "id": v.id, "assignments": [JDOE, group]}).ok

        def held() -> set[tuple[int, str]]:
            return {(r["snapvol_id"], r["entity_dn"]) for r in s.get(url).json()["assignments"]}

        def remove(v: Any, *entities: dict[str, str]) -> requests.Response:
            return s.post(url, json={"action_type": "unassign", "id": v.id, "assignments": list(entities)})

        sim.admin_refuse_unassignments(JDOE["path"], volume_id=one.id)  # that entity on that AppStack only
        r = remove(one, JDOE, group)
        assert r.status_code == 500
        assert r.json() == {
            "error": "Unassigned AppStacks failed",
            "errors": ['Unable to remove assignment of "User <LAB\\jdoe>" from "Editor 1"'],
        }
        assert len(held()) == 4  # nothing changed
        assert remove(two, JDOE).ok and remove(one, group).ok
        assert held() == {(one.id, JDOE["path"]), (two.id, group["path"])}
        assert remove(two, JDOE).json()["warnings"]  # not assigned: still a warning, not a refusal
        sim.admin_refuse_unassignments(JDOE["path"], volume_id=one.id, refuse=False)
        assert remove(one, JDOE).ok and remove(two, group).ok and held() == set()
        return
    url = f"{sim.url}/app_volumes/app_assignments"
    by_marker = {"app_product_id": one.product_id, "entities": [group], "app_package_id": None}
    pinned = {"app_product_id": one.product_id, "entities": [JDOE], "app_package_id": two.id}
    ids = [a["id"] for a in s.post(url, json={"data": [by_marker, pinned]}).json()["data"]]

    def held_ids() -> set[int]:
        return {a["id"] for a in s.get(url).json()["data"]}

    sim.admin_refuse_unassignments(volume_id=one.id)  # pinned to Editor 1: neither assignment is
    sim.admin_refuse_unassignments(volume_id=two.id)  # pinned to Editor 2: the user's
    r = s.delete(url, json={"ids": ids})
    assert (r.status_code, r.json()) == (
        500,
        {"error": "Server Error", "detail": f"Unable to delete assignment(s) {ids[1]}"},
    )
    assert held_ids() == set(ids)  # none deleted
    sim.admin_refuse_unassignments(volume_id=two.id, refuse=False)
    sim.admin_refuse_unassignments(group["path"])  # the group, wherever
    r = s.delete(url, json={"ids": ids})
    assert r.status_code == 500 and r.json()["detail"] == f"Unable to delete assignment(s) {ids[0]}"
    assert s.delete(url, json={"ids": [ids[1]]}).json()["data"]["deleted"] == [{"id": str(ids[1])}]
    sim.admin_refuse_unassignments(group["path"], refuse=False)
    assert s.delete(url, json={"ids": [ids[0]]}).ok and held_ids() == set()


# --- storage-group replication ------------------------------------------------------------------


@pytest.mark.lab
def test_replication_copies_new_volumes_whole(avm4: AvmSimulator, avm_login: Callable[..., requests.Session]) -> None:
    content = os.urandom(4096)
    pkg = avm4.admin_create_volume("package", "Paint 1", product="Paint", size_mb=16, content=content)
    avm4.admin_create_volume("writable", "noreplica")  # writables stay where they are
    report = avm4.replicate_now()
    assert report.copied == ("[ds2] appvolumes/packages/Paint!20!1.vmdk",)
    src = avm4.datastore_root("ds1") / "appvolumes/packages"
    dst = avm4.datastore_root("ds2") / "appvolumes/packages"
    assert (
        files_in(dst)
        == files_in(src)
        == ["Paint!20!1-flat.vmdk", "Paint!20!1.json", "Paint!20!1.vmdk", "Paint!20!1.vmdk.metadata"]
    )
    for name in files_in(src):
        assert hashlib.sha256((dst / name).read_bytes()).digest() == hashlib.sha256((src / name).read_bytes()).digest()
    flat = dst / "Paint!20!1-flat.vmdk"
    assert flat.stat().st_size == 16 * MIB
    assert flat.stat().st_blocks * 512 < 4 * MIB  # the copy stays thin
    assert files_in(avm4.datastore_root("ds2") / "appvolumes/writables") == []
    s = avm_login(avm4, namespace="app_volumes")
    files = s.get(f"{avm4.url}/app_volumes/app_packages/{pkg.id}/files").json()["data"]
    assert [f["storage_location"] for f in files] == ["ds1", "ds2"]
    assert avm4.replicate_now().copied == ()  # settled


@pytest.mark.lab
def test_replication_propagates_deletions(avm2: AvmSimulator, avm_login: Callable[..., requests.Session]) -> None:
    keep = avm2.admin_create_volume("appstack", "Keep")
    gone = avm2.admin_create_volume("appstack", "Gone")
    avm2.replicate_now()
    ds1 = avm2.datastore_root("ds1") / "cloudvolumes/apps"
    ds2 = avm2.datastore_root("ds2") / "cloudvolumes/apps"
    assert "Gone.vmdk" in files_in(ds2)
    for name in ("Gone.vmdk", "Gone-flat.vmdk", "Gone.vmdk.metadata"):
        (ds2 / name).unlink()  # someone deletes one copy by hand, on the other member
    report = avm2.replicate_now()
    assert report.deleted == ("[ds1] cloudvolumes/apps/Gone.vmdk",)
    assert files_in(ds1) == files_in(ds2) == ["Keep-flat.vmdk", "Keep.vmdk", "Keep.vmdk.metadata"]
    s = avm_login(avm2)
    stacks = {a["name"]: a for a in s.get(f"{avm2.url}/cv_api/appstacks").json()}
    assert stacks["Gone"]["status"] == "missing"
    assert stacks["Keep"]["status"] == "enabled"
    assert avm2.volume(keep.id).file_locations == (
        "[ds1] cloudvolumes/apps/Keep.vmdk",
        "[ds2] cloudvolumes/apps/Keep.vmdk",
    )
    assert avm2.volume(gone.id).file_locations == ()


@pytest.mark.lab
def test_volume_restored_after_a_manager_delete_is_replicated_not_deleted(avm4: AvmSimulator) -> None:
    pkg = avm4.admin_create_volume(
        "package", "Restored 1", product="Restored", guid="{00000000-0000-0000-0000-00000000abcd}"
    )
    avm4.replicate_now()
    assert avm4.delete_volumes([pkg.id]).deleted
    avm4.admin_create_volume(
        "package", "Restored 1", product="Restored", guid="{00000000-0000-0000-0000-00000000abcd}", register=False
    )
    report = avm4.replicate_now()
    assert report.copied == ("[ds2] appvolumes/packages/Restored!20!1.vmdk",)
    assert report.deleted == ()


@pytest.mark.lab
def test_replication_runs_in_the_background(start_avm: Callable[..., AvmSimulator]) -> None:
    sim = start_avm("4.x", storage_groups={"sg1": ["ds1", "ds2"]}, replication_interval_s=0.05)
    sim.admin_create_volume("package", "Late 1", product="Late")
    target = sim.datastore_root("ds2") / "appvolumes/packages/Late!20!1.vmdk"
    wait_for(target.exists)
    (sim.datastore_root("ds1") / "appvolumes/packages/Late!20!1.vmdk").unlink()
    wait_for(lambda: not target.exists())


@pytest.mark.lab
def test_storage_group_endpoints_queue_replication_and_import(
    avm2: AvmSimulator, avm_login: Callable[..., requests.Session]
) -> None:
    avm2.admin_create_volume("appstack", "Shared", register=False)
    s = avm_login(avm2)
    assert s.post(f"{avm2.url}/cv_api/storage_groups/1/replicate").status_code == 200
    wait_no_pending(s, avm2)
    assert (avm2.datastore_root("ds2") / "cloudvolumes/apps/Shared.vmdk").exists()
    assert s.post(f"{avm2.url}/cv_api/storage_groups/1/import").status_code == 200
    wait_no_pending(s, avm2)
    assert s.post(f"{avm2.url}/cv_api/appstacks/storage_groups/1/import").status_code == 200  # older path
    wait_no_pending(s, avm2)
    [stack] = s.get(f"{avm2.url}/cv_api/appstacks").json()
    files = s.get(f"{avm2.url}/cv_api/appstacks/{stack['id']}/files").json()
    assert sorted(f["storage_location"] for f in files) == ["ds1", "ds2"]


# --- admin hooks over HTTP -------------------------------------------------------------------


@pytest.mark.lab
def test_admin_hooks_over_http(avm4: AvmSimulator, avm_login: Callable[..., requests.Session]) -> None:
    admin = requests.Session()
    created = admin.post(
        f"{avm4.url}/_sim/volumes",
        json={"kind": "package", "name": "Hooked 1", "product": "Hooked", "size_mb": 8, "content_hex": "aa" * 16},
    ).json()
    volume_id = created["id"]
    descriptor = Path(created["paths"][0])
    flat = descriptor.with_name("Hooked!20!1-flat.vmdk")
    assert flat.read_bytes()[:16] == b"\xaa" * 16
    cid_before = read_descriptor(descriptor).cid
    admin.put(f"{avm4.url}/_sim/volumes/{volume_id}", json={"writes": [{"offset": 4096, "data_hex": "bb" * 4}]})
    assert flat.read_bytes()[4096:4100] == b"\xbb" * 4
    assert read_descriptor(descriptor).cid != cid_before
    s = avm_login(avm4, namespace="app_volumes")
    url = f"{avm4.url}/app_volumes/app_packages/{volume_id}"
    admin.post(f"{avm4.url}/_sim/volumes/{volume_id}/provisioning", json={"computer": "PKG-01"})
    assert (s.get(url).json()["data"]["status"], s.get(url).json()["data"]["provisioning"]) == ("provisioning", True)
    admin.post(f"{avm4.url}/_sim/volumes/{volume_id}/provisioned")
    assert s.get(url).json()["data"]["status"] == "enabled"
    admin.post(f"{avm4.url}/_sim/volumes/{volume_id}/status", json={"status": "disabled"})
    assert s.get(url).json()["data"]["enabled"] is False
    assert admin.post(f"{avm4.url}/_sim/volumes/{volume_id}/status", json={"status": "bogus"}).status_code == 400
    state = admin.get(f"{avm4.url}/_sim/state").json()
    assert [v["name"] for v in state["volumes"]] == ["Hooked 1"]
    admin.delete(f"{avm4.url}/_sim/volumes/{volume_id}", params={"keep_files": "1"})
    assert s.get(url).status_code == 404
    assert descriptor.exists()  # files kept: importable again
    w = avm4.admin_create_volume("writable", "busyuser")
    admin.post(f"{avm4.url}/_sim/volumes/{w.id}/busy", json={"state": "Backing Up"})
    detail = s.get(f"{avm4.url}/app_volumes/writables/{w.id}").json()["writable"]
    assert (detail["busy"], detail["state"]) == (True, "Backing Up")
    report = admin.post(f"{avm4.url}/_sim/replicate").json()
    assert report["copied"] == ["[ds2] appvolumes/packages/Hooked!20!1.vmdk"]


@pytest.mark.lab
def test_admin_hooks_refuse_bad_requests(avm2: AvmSimulator, avm4: AvmSimulator) -> None:
    with pytest.raises(BadVolumeRequest):
        avm2.admin_create_volume("package", "No packages on 2.x")
    with pytest.raises(BadVolumeRequest):
        avm4.admin_create_volume("appstack", "No AppStacks on 4.x")
    with pytest.raises(BadVolumeRequest):
        avm4.admin_set_busy(avm4.admin_create_volume("writable", "x").id, "Sleeping")
    avm2.admin_create_volume("appstack", "Twice")
    with pytest.raises(BadVolumeRequest):
        avm2.admin_create_volume("appstack", "Twice")


# --- TLS and the process entry point -------------------------------------------------------------


@pytest.mark.lab
def test_tls_verification_and_pinning(start_avm: Callable[..., AvmSimulator], tmp_path: Path) -> None:
    sim = start_avm("4.x", tls=True, cert_dir=tmp_path / "tls")
    assert sim.url.startswith("https://127.0.0.1:")
    assert sim.cert_path is not None
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{sim.url}/app_volumes/version", timeout=10)
    r = requests.get(f"{sim.url}/app_volumes/version", verify=str(sim.cert_path), timeout=10)
    assert r.status_code == 200
    pem = ssl.get_server_certificate(("127.0.0.1", sim.port))
    assert hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest() == sim.thumbprint_sha256
    other = create_certificate(tmp_path / "other")
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{sim.url}/app_volumes/version", verify=str(other.cert_path), timeout=10)


@pytest.mark.lab
@pytest.mark.parametrize("backend", ["cryptography", "openssl"])
def test_certificate_backends(tmp_path: Path, backend: str) -> None:
    cert = create_certificate(tmp_path, backend=backend)  # type: ignore[arg-type]
    ctx = ssl.create_default_context(cafile=str(cert.cert_path))
    assert ctx.cert_store_stats()["x509_ca"] == 1
    assert len(cert.thumbprint_sha256) == 64
    assert cert.key_path.stat().st_mode & 0o777 == 0o600


@pytest.mark.lab
def test_stop_ends_kept_alive_connections(start_avm: Callable[..., AvmSimulator]) -> None:
    sim = start_avm("2.x")
    s = requests.Session()
    assert s.get(f"{sim.url}/cv_api/version").status_code == 200
    url = sim.url
    sim.stop()
    with pytest.raises(requests.exceptions.ConnectionError):
        s.get(f"{url}/cv_api/version", timeout=5)


@pytest.mark.lab
def test_runs_as_a_process(tmp_path: Path) -> None:
    args = [sys.executable, "-m", "toolkit.lab.avm_sim", "--datastore", f"ds1={tmp_path / 'ds1'}"]
    args += ["--flavour", "2.x", "--port", "0", "--json"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        facts = json.loads(proc.stdout.readline())
        version = requests.get(f"{facts['url']}/cv_api/version", timeout=10).json()
        assert version["version"]["internal"].startswith("2.")
        assert (tmp_path / "ds1/cloudvolumes/apps").is_dir()
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


# --- breadth -------------------------------------------------------------------------------------


@pytest.mark.lab
@pytest.mark.parametrize("flavour", ["2.x", "4.x"])
def test_no_route_fails_on_bare_requests(
    start_avm: Callable[..., AvmSimulator], avm_login: Callable[..., requests.Session], flavour: str
) -> None:
    """Every endpoint answers a request without parameters with a 2xx/4xx, never a server error."""
    sim = start_avm(flavour, storage_groups={"sg1": ["ds1", "ds2"]})
    sim.admin_create_volume("appstack" if flavour == "2.x" else "package", "Any 1")
    sim.admin_create_volume("writable", "anyone")
    s = avm_login(sim)
    for method, template in sim.routes():
        if template.endswith("/sessions"):
            continue
        path = template.replace("{id}", "1").replace("{name}", "CURRENT")
        r = s.request(method, f"{sim.url}{path}")
        assert r.status_code < 500, f"{method} {path}: {r.status_code} {r.text}"


@pytest.mark.lab
def test_2x_misc_read_endpoints(avm2: AvmSimulator, avm_login: Callable[..., requests.Session]) -> None:
    programs = [{"name": "Paint.NET", "publisher": "dotPDN", "version": "5.0"}]
    app = avm2.admin_create_volume("appstack", "Paint", programs=programs)
    avm2.admin_create_volume("appstack", "template", folder="cloudvolumes/apps_templates", register=False)
    avm2.admin_attach(app.id, machine="DESKTOP-09")
    s = avm_login(avm2)

    def get(path: str, **kwargs: Any) -> Any:
        return s.get(f"{avm2.url}{path}", **kwargs).json()

    assert get("/cv_api/license")["license"]["invalid"] == "false"
    assert "DESKTOP-09" in get("/cv_api/online_entities")["online"]["records"][0]["entity_name"]
    [program] = get("/cv_api/applications")["applications"]
    assert get(f"/cv_api/applications/{program['id']}")["application"]["publisher"] == "dotPDN"
    assert s.get(f"{avm2.url}/cv_api/applications/999").status_code == 404
    params = {"datastore": "ds1|DC0|1", "path": "cloudvolumes/apps", "templates_path": "cloudvolumes/apps_templates"}
    assert get("/cv_api/templates", params=params)["templates"][0]["name"] == "template.vmdk"
    assert get("/cv_api/machine_managers")["machine_managers"][0]["datacenter"] == "DC0"
    assert get("/cv_api/manager_services")["services"][0]["internal_version"].startswith("2.")
    assert s.post(f"{avm2.url}/cv_api/datastores/rescan").json()["success"]
    assert s.post(f"{avm2.url}/cv_api/storage_groups/1/rescan").json()["success"]
    wait_no_pending(s, avm2)
    actions = [log["action"] for log in get("/cv_api/activity_logs")["actlogs"]["logs"]]
    assert actions[0] == "Login"


@pytest.mark.lab
def test_4x_markers_and_misc(avm4: AvmSimulator, avm_login: Callable[..., requests.Session]) -> None:
    first = avm4.admin_create_volume("package", "Editor 1", product="Editor")
    second = avm4.admin_create_volume("package", "Editor 2", product="Editor", current=False)
    w = avm4.admin_create_volume("writable", "toggler")
    s = avm_login(avm4, namespace="app_volumes")
    url = f"{avm4.url}/app_volumes/app_products/{first.product_id}/app_markers/CURRENT"
    marker = s.put(f"{url}?data%5Bapp_package_id%5D={second.id}").json()["data"]
    assert (marker["name"], marker["app_package_id"]) == ("CURRENT", second.id)
    assert s.put(f"{url}?data%5Bapp_package_id%5D=999").status_code == 400
    include = {"include": "app_markers"}
    assert s.get(f"{avm4.url}/app_volumes/app_packages/{first.id}", params=include).json()["data"]["app_markers"] == []
    oses = s.get(f"{avm4.url}/app_volumes/app_packages/{first.id}/operating_systems").json()["data"]
    assert oses[0]["name"].startswith("Windows")
    r = s.post(f"{avm4.url}/app_volumes/app_assignments/delete_batch?ids%5B%5D=42")
    assert r.json() == {"data": {"deleted": [], "not_deleted": [{"id": "42"}]}}
    assert "was disabled" in s.post(f"{avm4.url}/cv_api/writables/disable", json={"volumes": [w.id]}).text
    assert s.get(f"{avm4.url}/app_volumes/writables/{w.id}").json()["writable"]["status"] == "disabled"
    stages = s.get(f"{avm4.url}/app_volumes/lifecycle_stages").json()["data"]
    assert [st["name"] for st in stages] == ["New", "Tested", "Published", "Retired"]

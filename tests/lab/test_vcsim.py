# mypy: disable-error-code="no-untyped-call"
# (pyvmomi's API carries no annotations)
"""vcsim as built from Debian's govmomi sources: inventory, datastore HTTP, browsing, vSAN type, copies."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from pyVim.connect import Disconnect, SmartConnect
from pyVmomi import vim, vmodl

from toolkit.lab import corpus
from toolkit.lab.vcsim import VcsimServer, build_vcsim, main_go_digest

pytestmark = pytest.mark.lab

TASK_TIMEOUT_S = 30.0


@pytest.fixture
def service_instance(vcsim_server: VcsimServer) -> Iterator[Any]:
    si = vcsim_server.connect()
    yield si
    Disconnect(si)


def _session_cookie(si: Any) -> dict[str, str]:
    name, _, value = si._stub.cookie.split(";")[0].strip().partition("=")
    return {name: value.strip('"')}


def _datacenter(si: Any, name: str) -> Any:
    return next(dc for dc in si.content.rootFolder.childEntity if dc.name == name)


def _datastores(si: Any) -> dict[str, Any]:
    view = si.content.viewManager.CreateContainerView(si.content.rootFolder, [vim.Datastore], True)
    try:
        return {ds.name: ds for ds in view.view}
    finally:
        view.Destroy()


def _wait(si: Any, task: Any) -> Any:
    """Wait for a task through the PropertyCollector (reading task.info directly can fail, see lab-notes)."""
    collector = si.content.propertyCollector
    spec = vmodl.query.PropertyCollector.FilterSpec(
        objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=task)],
        propSet=[
            vmodl.query.PropertyCollector.PropertySpec(
                type=vim.Task, pathSet=["info.state", "info.error", "info.result"]
            )
        ],
    )
    deadline = time.monotonic() + TASK_TIMEOUT_S
    while time.monotonic() < deadline:
        [content] = collector.RetrieveContents([spec])
        values = {prop.name: prop.val for prop in content.propSet}
        if values["info.state"] == "success":
            return values.get("info.result")
        if values["info.state"] == "error":
            pytest.fail(f"task failed: {values.get('info.error')}")
        time.sleep(0.05)
    pytest.fail("task did not finish")


def test_build_is_cached_by_main_go_digest(vcsim_binary: Path) -> None:
    assert vcsim_binary.name == f"vcsim-{main_go_digest()}"
    started = time.monotonic()
    assert build_vcsim() == vcsim_binary
    assert time.monotonic() - started < 1.0, "a cached binary must not be rebuilt"


def test_datastores_have_the_asked_names_and_types(vcsim_server: VcsimServer, service_instance: Any) -> None:
    assert vcsim_server.url == f"http://127.0.0.1:{vcsim_server.port}/sdk"
    assert vcsim_server.datacenter == "DC0"
    datastores = _datastores(service_instance)
    assert set(datastores) == {"ds1", "ds2", "vsanDatastore"}
    assert datastores["vsanDatastore"].summary.type == "vsan"
    assert datastores["ds1"].summary.type == "VMFS"
    assert datastores["ds1"].summary.url == str(vcsim_server.datastores["ds1"].resolve())
    dc = _datacenter(service_instance, "DC0")
    assert {ds.name for ds in dc.datastore} == set(datastores)


def test_wrong_password_is_refused(vcsim_server: VcsimServer) -> None:
    with pytest.raises(vim.fault.InvalidLogin):
        SmartConnect(
            host=vcsim_server.host,
            port=vcsim_server.port,
            user=vcsim_server.user,
            pwd=vcsim_server.password + "-wrong",
            protocol="http",
        )


def test_datastore_http_put_get_and_range(vcsim_server: VcsimServer, service_instance: Any) -> None:
    cookies = _session_cookie(service_instance)
    url = vcsim_server.folder_url("ds1", "cloudvolumes/apps/Office!20!2016.vmdk.metadata")
    body = b"".join(bytes([index % 251]) for index in range(100_000))

    created = requests.put(url, data=body, cookies=cookies, timeout=30)
    assert created.status_code == 201
    backing = vcsim_server.datastores["ds1"] / "cloudvolumes/apps/Office!20!2016.vmdk.metadata"
    assert backing.read_bytes() == body
    replaced = requests.put(url, data=body[::-1], cookies=cookies, timeout=30)
    assert replaced.status_code == 200
    assert backing.read_bytes() == body[::-1]

    whole = requests.get(url, cookies=cookies, timeout=30)
    assert (whole.status_code, whole.content) == (200, body[::-1])
    part = requests.get(url, cookies=cookies, headers={"Range": "bytes=1000-1999"}, timeout=30)
    assert part.status_code == 206
    assert part.content == body[::-1][1000:2000]
    assert part.headers["Content-Range"] == f"bytes 1000-1999/{len(body)}"
    missing = requests.get(vcsim_server.folder_url("ds1", "nope.vmdk"), cookies=cookies, timeout=30)
    assert missing.status_code == 404


def test_datastore_http_needs_a_live_session(vcsim_server: VcsimServer, service_instance: Any) -> None:
    url = vcsim_server.folder_url("ds2", "x.bin")
    (vcsim_server.datastores["ds2"] / "x.bin").write_bytes(b"data")
    assert requests.get(url, timeout=30).status_code == 401
    assert requests.get(url, cookies={"vmware_soap_session": "forged"}, timeout=30).status_code == 401
    assert requests.put(url, data=b"evil", timeout=30).status_code == 401
    assert (vcsim_server.datastores["ds2"] / "x.bin").read_bytes() == b"data"
    basic = requests.get(url, auth=(vcsim_server.user, vcsim_server.password), timeout=30)
    assert (basic.status_code, basic.content) == (200, b"data")
    cookies = _session_cookie(service_instance)
    assert requests.get(url, cookies=cookies, timeout=30).status_code == 200
    Disconnect(service_instance)
    assert requests.get(url, cookies=cookies, timeout=30).status_code == 401


def test_search_subfolders_lists_files_with_sizes(vcsim_server: VcsimServer, service_instance: Any) -> None:
    volumes = corpus.make_datastore(vcsim_server.datastores["ds1"], flavour="2.x", count=2, size_mib=8, real=False)
    expected = {
        path.relative_to(vcsim_server.datastores["ds1"]).as_posix(): path.stat().st_size
        for vol in volumes
        for path in vol.files
    }
    ds = _datastores(service_instance)["ds1"]
    spec = vim.host.DatastoreBrowser.SearchSpec(
        details=vim.host.DatastoreBrowser.FileInfo.Details(fileSize=True, modification=True, fileType=True),
        matchPattern=["*"],
    )
    results = _wait(service_instance, ds.browser.SearchDatastoreSubFolders_Task("[ds1]", spec))

    found = {}
    for result in results:
        folder = result.folderPath.removeprefix("[ds1]").strip().strip("/")
        for info in result.file or []:
            if info.fileSize is not None and not isinstance(info, vim.host.DatastoreBrowser.FolderInfo):
                found[f"{folder}/{info.path}".lstrip("/")] = info.fileSize
                assert info.modification is not None
    assert {name: found.get(name) for name in expected} == expected


def test_make_directory_and_copy_virtual_disk_to_vsan(vcsim_server: VcsimServer, service_instance: Any) -> None:
    root = vcsim_server.datastores["ds1"]
    vol = corpus.make_volume(root, "cloudvolumes/apps/Copy!20!Me.vmdk", size_mib=8, seed=3, real=True)
    content = service_instance.content
    dc = _datacenter(service_instance, "DC0")
    content.fileManager.MakeDirectory(name="[vsanDatastore] staging", datacenter=dc, createParentDirectories=True)
    assert (vcsim_server.datastores["vsanDatastore"] / "staging").is_dir()

    task = content.virtualDiskManager.CopyVirtualDisk_Task(
        sourceName="[ds1] cloudvolumes/apps/Copy!20!Me.vmdk",
        sourceDatacenter=dc,
        destName="[vsanDatastore] staging/Copy!20!Me.vmdk",
        destDatacenter=dc,
    )
    _wait(service_instance, task)
    # As on vSAN: the namespace folder holds only the descriptor; the data is an object it names.
    staged = vcsim_server.datastores["vsanDatastore"] / "staging"
    assert sorted(p.name for p in staged.iterdir()) == ["Copy!20!Me.vmdk"]
    extent = next(line for line in (staged / "Copy!20!Me.vmdk").read_text().splitlines() if line.startswith("RW "))
    sectors, kind, target = extent.split(" ", 3)[1:]
    assert (int(sectors) * 512, kind) == (vol.flat.stat().st_size, "VMFS")
    assert target.startswith('"vsan://')
    [obj] = vcsim_server.vsan_objects["vsanDatastore"].iterdir()
    assert target == f'"vsan://{obj.name}"'
    assert obj.read_bytes() == vol.flat.read_bytes()

    # Copied back out, it is a descriptor and a flat file again; deleting the vSAN disk removes its object.
    back = content.virtualDiskManager.CopyVirtualDisk_Task(
        sourceName="[vsanDatastore] staging/Copy!20!Me.vmdk",
        sourceDatacenter=dc,
        destName="[ds1] Back.vmdk",
        destDatacenter=dc,
    )
    _wait(service_instance, back)
    assert (root / "Back-flat.vmdk").read_bytes() == vol.flat.read_bytes()
    assert 'VMFS "Back-flat.vmdk"' in (root / "Back.vmdk").read_text()
    _wait(
        service_instance,
        content.virtualDiskManager.DeleteVirtualDisk_Task(
            name="[vsanDatastore] staging/Copy!20!Me.vmdk", datacenter=dc
        ),
    )
    assert list(staged.iterdir()) == []
    assert list(vcsim_server.vsan_objects["vsanDatastore"].iterdir()) == []


def test_stop_closes_the_port(vcsim_binary: Path, tmp_path: Path) -> None:
    with VcsimServer({"only": tmp_path / "only"}, binary=vcsim_binary) as server:
        port = server.port
        assert server.running
        with socket.create_connection((server.host, port), timeout=2):
            pass
    assert not server.running
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass

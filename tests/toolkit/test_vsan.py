"""vSAN end to end against vcsim: snapshots and restores through a staging datastore.

The lab's ``vsanDatastore`` behaves like a vSAN namespace: a disk there is a descriptor naming a
``vsan://`` object that neither datastore HTTP nor the browser can reach, so every byte of its data
goes through ``CopyVirtualDisk_Task`` to and from the staging datastore ``ds1``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from catalog.repo import Repository
from toolkit.config import ConfigError, load_config
from toolkit.lab.avm_sim import AvmSimulator
from toolkit.lab.corpus import make_volume
from toolkit.lab.faults import INJECTED, Scripted
from toolkit.lab.vcsim import VcsimServer
from toolkit.ops.restore import parse_as_of, plan_restore
from toolkit.ops.snapshot import Source, snapshot
from toolkit.ops.vsan import (
    EDITED_SUFFIX,
    STAGING_FOLDER,
    THICK_COPIES,
    CopyHostUnsuitable,
    StagingArea,
    VsanDestination,
    VsanNoStaging,
    VsanStager,
    adapter_lines,
    adapter_type_of,
    is_stale,
    run_name,
    with_adapter_line,
)
from toolkit.transports.base import FileInfo, Transport
from toolkit.transports.datastore_http import DatastoreHttpTransport
from toolkit.transports.local import LocalTransport
from toolkit.vsphere import (
    DatastoreNoSpace,
    PyvmomiClient,
    VsphereConfig,
    VsphereLoginFailed,
    VsphereTaskFailed,
    connect,
    parse_datastore_path,
)

from ..conftest import Toolkit

pytestmark = pytest.mark.lab

VSAN = "vsanDatastore"
FOLDER = "cloudvolumes/apps"
NAME = "Office!20!2016.vmdk"
FLAT = "Office!20!2016-flat.vmdk"
REL = f"{FOLDER}/{NAME}"
AVM_PASSWORD = "lab-avm-pass"  # noqa: S105 - the lab manager's password in these tests
VSAN_EXTENT = re.compile(r'^RW (\d+) VMFS "vsan://([0-9a-f-]+)"$', re.MULTILINE)


@pytest.fixture
def client(vcsim_server: VcsimServer) -> Iterator[PyvmomiClient]:
    c = connect(VsphereConfig(vcsim_server.url, vcsim_server.user, vcsim_server.password, vcsim_server.datacenter))
    yield c
    c.close()


@pytest.fixture
def vc_password(vcsim_server: VcsimServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VC_PW", vcsim_server.password)


def put_on_vsan(
    server: VcsimServer, client: PyvmomiClient, relpath: str = REL, *, seed: int = 1, size_mib: int = 8
) -> dict[str, bytes]:
    """An AppStack on the vSAN datastore as App Volumes leaves it: a descriptor naming an object, and its sidecar.

    It is made on ds2 and copied in by vCenter, as nothing else can create a vSAN object. Returns the
    original flat extent's bytes (``"flat"``) and each sidecar's bytes by file name.
    """
    folder, name = relpath.rsplit("/", 1)
    vol = make_volume(server.datastores["ds2"], f"seed/{name}", size_mib=size_mib, seed=seed)
    client.make_directory(f"[{VSAN}] {folder}")
    client.copy_virtual_disk(f"[ds2] seed/{name}", f"[{VSAN}] {relpath}")
    content = {"flat": vol.flat.read_bytes()}
    for side in vol.sidecars:
        shutil.copy2(side, server.datastores[VSAN] / folder / side.name)  # a sidecar is a plain namespace file
        content[side.name] = side.read_bytes()
        side.unlink()
    client.delete_virtual_disk(f"[ds2] seed/{name}")
    return content


def vsan_object(server: VcsimServer, relpath: str = REL) -> bytes:
    """The data of a vSAN disk, read from the simulator's object store (no client can read it)."""
    text = (server.datastores[VSAN] / relpath).read_text()
    match = VSAN_EXTENT.search(text)
    assert match is not None, text
    return (server.vsan_objects[VSAN] / match[2]).read_bytes()


def staging_files(server: VcsimServer, datastore: str = "ds1") -> list[str]:
    root = server.datastores[datastore] / STAGING_FOLDER
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) if root.exists() else []


def write_config(
    tmp_path: Path, server: VcsimServer, *, vsan: str = 'vsan = true\nstaging = "ds1"\n', extra: str = ""
) -> Path:
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        f"""repository = "{tmp_path / "repo"}"
[sites.dc1.vcenter]
url = "{server.url}"
user = "{server.user}"
password_env = "VC_PW"
datacenter = "{server.datacenter}"
[sites.dc1.datastores.ds1]
transport = "http"
[sites.dc1.datastores.{VSAN}]
transport = "http"
{vsan}{extra}"""
    )
    return cfg


def snapshot_doc(repo: Path, snap_id: str) -> dict[str, Any]:
    r = Repository.open(repo, readonly=True)
    try:
        return r.load_snapshot_doc(snap_id)
    finally:
        r.close()


# -- snapshot ------------------------------------------------------------------------------------


def test_a_vsan_appstack_is_captured_through_a_staged_copy_and_restores_byte_for_byte(
    vcsim_server: VcsimServer, client: PyvmomiClient, vc_password: None, toolkit: Toolkit, tmp_path: Path
) -> None:
    original = put_on_vsan(vcsim_server, client)
    cfg = write_config(tmp_path, vcsim_server)
    assert toolkit("--config", str(cfg), "init").exit_code == 0

    first = toolkit.json("--config", str(cfg), "snapshot")
    [vol] = [v for v in first["volumes"] if v["key"] == f"{VSAN}/{REL}"]
    assert first["ok"], first
    assert vol["state"] == "new"
    assert first["stats"]["bytes_read"] >= len(original["flat"])
    assert staging_files(vcsim_server) == []  # the staged copy is gone
    [entry] = [v for v in snapshot_doc(toolkit.repo, first["snapshot"])["volumes"] if v["key"] == f"{VSAN}/{REL}"]
    assert entry["captured_via"] == "staging:ds1"
    assert {f["path"]: f["role"] for f in entry["files"]} == {
        REL: "descriptor",
        f"{FOLDER}/{FLAT}": "extent",
        f"{REL}.metadata": "metadata",
    }

    # The vSAN descriptor kept its size and time: recorded unchanged without a copy (a staging
    # datastore vCenter does not know would fail any copy).
    nfs = tmp_path / "nfs-mount"
    nfs.mkdir()
    no_copy = tmp_path / "no-copy.toml"
    no_copy.write_text(
        cfg.read_text().replace('staging = "ds1"', 'staging = "nfs9"')
        + f'[sites.dc1.datastores.nfs9]\ntransport = "local"\npath = "{nfs}"\n'
    )
    again = toolkit.json("--config", str(no_copy), "snapshot", VSAN)
    [vol] = again["volumes"]
    assert vol["state"] == "unchanged", vol
    assert again["stats"]["bytes_read"] == 0
    # verify --live compares the vSAN descriptor with what was stored from the copy: no false drift ...
    live = toolkit("--config", str(cfg), "--json", "verify", "--live", "--rehash", "--source", VSAN)
    assert live.exit_code == 0, live.stdout + live.stderr

    client.delete_virtual_disk(f"[{VSAN}] {REL}")  # an update of the AppStack: same name, new content
    updated = put_on_vsan(vcsim_server, client, seed=2)
    assert updated["flat"] != original["flat"]
    live = toolkit("--config", str(cfg), "--json", "verify", "--live", "--source", VSAN)
    assert live.exit_code == 1  # ... and a rewritten disk is drift
    problems = json.loads(live.stdout)["problems"]
    assert {p["kind"] for p in problems} == {"drift"}, live.stdout
    assert any(p["detail"].startswith(f"{REL} changed time") for p in problems), live.stdout
    third = toolkit.json("--config", str(cfg), "snapshot", VSAN)
    assert [v["state"] for v in third["volumes"]] == ["changed"]

    out = tmp_path / "out"
    r = toolkit("--config", str(cfg), "restore", "--as-of", first["created_at"], "--datastore", VSAN, "--to", str(out))
    assert r.exit_code == 0, r.stderr
    assert (out / FOLDER / FLAT).read_bytes() == original["flat"]
    newest = tmp_path / "newest"
    r = toolkit("--config", str(cfg), "restore", "--as-of", "now", "--datastore", VSAN, "--to", str(newest))
    assert r.exit_code == 0, r.stderr
    assert (newest / FOLDER / FLAT).read_bytes() == updated["flat"]
    assert (out / f"{REL}.metadata").read_bytes() == original[f"{NAME}.metadata"]
    descriptor = (out / REL).read_text()
    assert f'VMFS "{FLAT}"' in descriptor and "vsan://" not in descriptor  # usable anywhere, not only on vSAN
    qemu = shutil.which("qemu-img")
    if qemu is not None:
        assert subprocess.run([qemu, "info", str(out / REL)], capture_output=True, check=False).returncode == 0


def _stager_source(
    server: VcsimServer, client: PyvmomiClient, staging: Transport, *, host: str | None = None
) -> tuple[Source, StagingArea]:
    area = StagingArea(client, "ds1", staging, host=host)
    stager = VsanStager(client, VSAN, area, host_hashing=True)
    return Source(VSAN, DatastoreHttpTransport(client, VSAN), stager=stager), area


def test_a_failed_read_of_the_staged_copy_fails_the_volume_and_still_deletes_the_copy(
    vcsim_server: VcsimServer, client: PyvmomiClient, tmp_path: Path
) -> None:
    put_on_vsan(vcsim_server, client)
    faulty = Scripted(DatastoreHttpTransport(client, "ds1"), "rE", only=f"*{FLAT}")
    source, area = _stager_source(vcsim_server, client, faulty)
    repo = Repository.init(tmp_path / "repo")
    with repo.writing("snapshot"):
        report = snapshot(repo, [source])
    [vol] = report.volumes
    assert vol["state"] == "failed"
    assert INJECTED in vol["reason"]
    assert faulty.faults_fired
    assert staging_files(vcsim_server) == [area.run.split("/")[1]]  # the volume's copy went at once
    assert report.warnings == []
    area.close()
    assert staging_files(vcsim_server) == []


class Interrupting:
    """Passes every call to ``inner``; the first read of a flat extent raises KeyboardInterrupt (Ctrl-C)."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def open_read(self, path: str) -> Any:
        if not path.endswith("-flat.vmdk"):
            return self.inner.open_read(path)

        class Opened:
            def __enter__(self) -> Any:
                def read_at(offset: int, size: int) -> bytes:
                    raise KeyboardInterrupt

                return read_at

            def __exit__(self, *exc: object) -> None:
                return None

        return Opened()


def test_an_interrupted_snapshot_deletes_the_staged_copy(
    vcsim_server: VcsimServer, client: PyvmomiClient, tmp_path: Path
) -> None:
    put_on_vsan(vcsim_server, client)
    source, area = _stager_source(vcsim_server, client, Interrupting(LocalTransport(vcsim_server.datastores["ds1"])))
    repo = Repository.init(tmp_path / "repo")
    with pytest.raises(KeyboardInterrupt), repo.writing("snapshot"):
        snapshot(repo, [source])
    assert staging_files(vcsim_server) == [area.run.split("/")[1]]
    area.close()
    assert staging_files(vcsim_server) == []


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True)
    return int(proc.stdout)


def test_leftovers_of_a_killed_run_are_deleted_by_the_next_run_and_live_runs_are_left_alone(
    vcsim_server: VcsimServer, client: PyvmomiClient, tmp_path: Path
) -> None:
    put_on_vsan(vcsim_server, client)
    host = socket.gethostname()
    dead = f"{STAGING_FOLDER}/{run_name(host, _dead_pid(), 'deadbeef')}"
    live = f"{STAGING_FOLDER}/{run_name(host, os.getpid(), 'feedf00d')}"  # this process: alive
    other = f"{STAGING_FOLDER}/{run_name('otherhost', 1, 'abcdef01')}"  # another host, recent
    for folder in (dead, live, other):
        client.make_directory(f"[ds1] {folder}/1")
        client.copy_virtual_disk(f"[{VSAN}] {REL}", f"[ds1] {folder}/1/{NAME}")
    source, area = _stager_source(vcsim_server, client, DatastoreHttpTransport(client, "ds1"))
    repo = Repository.init(tmp_path / "repo")
    with repo.writing("snapshot"):
        report = snapshot(repo, [source])
    area.close()
    assert [v["state"] for v in report.volumes] == ["new"]
    left = {p.split("/")[0] for p in staging_files(vcsim_server)}
    assert left == {live.split("/")[1], other.split("/")[1]}


def test_a_run_folder_is_stale_when_its_process_is_gone_or_it_is_old() -> None:
    now = 1_000_000.0
    mine = run_name("backup-01.example.com", 42, "0123abcd")
    assert mine.startswith("backup01examplecom-42-")
    assert is_stale(mine, now, host="backup-01.example.com", now_s=now, alive=lambda pid: False)
    assert not is_stale(mine, now, host="backup-01.example.com", now_s=now, alive=lambda pid: True)
    assert is_stale(mine, now - 27 * 3600, host="backup-01.example.com", now_s=now, alive=lambda pid: True)
    assert not is_stale(mine, now - 3600, host="elsewhere", now_s=now, alive=lambda pid: False)
    assert is_stale(mine, now - 27 * 3600, host="elsewhere", now_s=now, alive=lambda pid: False)
    assert not is_stale("not-ours", 0.0, host="elsewhere", now_s=now, alive=lambda pid: False)


def test_without_staging_a_vsan_volume_is_skipped_with_the_reason(
    vcsim_server: VcsimServer, client: PyvmomiClient, vc_password: None, toolkit: Toolkit, tmp_path: Path
) -> None:
    put_on_vsan(vcsim_server, client)
    for vsan in ("vsan = true\n", ""):  # declared vSAN without staging; or not declared at all
        cfg = write_config(tmp_path, vcsim_server, vsan=vsan)
        if not (tmp_path / "repo").exists():
            assert toolkit("--config", str(cfg), "init").exit_code == 0
        r = toolkit("--config", str(cfg), "--json", "snapshot")
        assert r.exit_code == 1, r.stderr
        [vol] = [v for v in json.loads(r.stdout)["volumes"] if v["key"] == f"{VSAN}/{REL}"]
        assert vol["state"] == "skipped"
        assert "vSAN object" in vol["reason"]
        assert f"staging = DATASTORE for datastore {VSAN}" in vol["reason"]
    assert staging_files(vcsim_server) == []


def test_a_full_staging_datastore_fails_the_volume_before_any_copy(vcsim_binary: Path, tmp_path: Path) -> None:
    stores = {name: tmp_path / "vcsim" / name for name in ("ds1", "ds2", VSAN)}
    with VcsimServer(stores, vsan=[VSAN], capacity={"ds1": 4 << 20}, binary=vcsim_binary) as server:
        client = connect(VsphereConfig(server.url, server.user, server.password, server.datacenter))
        try:
            put_on_vsan(server, client)
            source, area = _stager_source(server, client, DatastoreHttpTransport(client, "ds1"))
            repo = Repository.init(tmp_path / "repo")
            with repo.writing("snapshot"):
                report = snapshot(repo, [source])
            area.close()
            # Had the toolkit not looked first, vCenter would have refused the copy itself.
            with pytest.raises(DatastoreNoSpace) as caught:
                client.copy_virtual_disk(f"[{VSAN}] {REL}", f"[ds1] {NAME}")
            assert caught.value.fields["datastore"] == "ds1"
        finally:
            client.close()
        [vol] = report.volumes
        assert vol["state"] == "failed"
        assert vol["reason"].startswith("staging datastore ds1 has ")
        assert "needs 8.1 MiB" in vol["reason"]
        assert staging_files(server) == []
        assert list(server.datastores["ds1"].iterdir()) == []  # refused before anything was made there


def test_a_staging_datastore_vcenter_does_not_know_fails_the_volume(
    vcsim_server: VcsimServer, client: PyvmomiClient, vc_password: None, toolkit: Toolkit, tmp_path: Path
) -> None:
    put_on_vsan(vcsim_server, client)
    nfs = tmp_path / "nfs-mount"
    nfs.mkdir()
    cfg = write_config(
        tmp_path,
        vcsim_server,
        vsan='vsan = true\nstaging = "nfs9"\n',
        extra=f'[sites.dc1.datastores.nfs9]\ntransport = "local"\npath = "{nfs}"\n',
    )
    assert toolkit("--config", str(cfg), "init").exit_code == 0
    r = toolkit("--config", str(cfg), "--json", "snapshot")
    assert r.exit_code == 1
    [vol] = [v for v in json.loads(r.stdout)["volumes"] if v["key"] == f"{VSAN}/{REL}"]
    assert vol["state"] == "failed"
    assert vol["reason"] == "staging datastore nfs9 cannot be used: vCenter does not list it"


@pytest.mark.parametrize(
    ("datastores", "message"),
    [
        ('[sites.s.datastores.v]\ntransport = "http"\nvsan = true\nstaging = "nope"\n', "is not a datastore"),
        ('[sites.s.datastores.v]\ntransport = "http"\nstaging = "d"\n', "only applies to a vSAN datastore"),
        ('[sites.s.datastores.v]\ntransport = "local"\npath = "/x"\nvsan = true\n', "need transport"),
        ('[sites.s.datastores.v]\ntransport = "http"\nvsan = "yes"\n', "vsan must be true or false"),
        ('[sites.s.datastores.v]\ntransport = "http"\nvsan = true\nstaging = "w"\n', "is vSAN itself"),
    ],
)
def test_bad_vsan_settings_are_refused(tmp_path: Path, datastores: str, message: str) -> None:
    refused(
        tmp_path,
        '[sites.s.datastores.d]\ntransport = "local"\npath = "/d"\n'
        '[sites.s.datastores.w]\ntransport = "http"\nvsan = true\n' + datastores,
        message,
    )


def refused(tmp_path: Path, tables: str, message: str) -> None:
    """A site with a vCenter and these tables is refused with ``message`` (exit 2)."""
    cfg = tmp_path / "config.toml"
    cfg.write_text('[sites.s.vcenter]\nurl = "https://vc"\nuser = "u"\npassword_env = "P"\n' + tables)
    with pytest.raises(ConfigError) as caught:
        load_config(cfg)
    assert message in str(caught.value)
    assert caught.value.exit_code == 2


# -- restore -------------------------------------------------------------------------------------


def _captured(vcsim_server: VcsimServer, client: PyvmomiClient, toolkit: Toolkit, tmp_path: Path) -> Path:
    """A repository holding the vSAN AppStack, then the AppStack deleted from vSAN; the configuration."""
    cfg = write_config(tmp_path, vcsim_server)
    assert toolkit("--config", str(cfg), "init").exit_code == 0
    assert toolkit("--config", str(cfg), "snapshot").exit_code == 0
    client.delete_virtual_disk(f"[{VSAN}] {REL}")
    (vcsim_server.datastores[VSAN] / f"{REL}.metadata").unlink()
    assert list(vcsim_server.vsan_objects[VSAN].iterdir()) == []
    return cfg


def test_restore_onto_vsan_goes_through_staging_and_lands_as_a_vsan_disk(
    vcsim_server: VcsimServer, client: PyvmomiClient, vc_password: None, toolkit: Toolkit, tmp_path: Path
) -> None:
    original = put_on_vsan(vcsim_server, client)
    cfg = _captured(vcsim_server, client, toolkit, tmp_path)

    r = toolkit("--config", str(cfg), "--json", "restore", "--as-of", "now", "--to", f"dc1/{VSAN}")
    assert r.exit_code == 0, r.stderr
    [vol] = json.loads(r.stdout)["volumes"]
    assert (vol["status"], vol["via"]) == ("restored", "staging:ds1")
    namespace = vcsim_server.datastores[VSAN] / FOLDER
    assert sorted(p.name for p in namespace.iterdir()) == [NAME, f"{NAME}.metadata"]  # no flat file in vSAN
    assert vsan_object(vcsim_server) == original["flat"]
    assert (namespace / f"{NAME}.metadata").read_bytes() == original[f"{NAME}.metadata"]
    assert staging_files(vcsim_server) == []

    again = toolkit("--config", str(cfg), "--json", "restore", "--as-of", "now", "--to", f"dc1/{VSAN}")
    assert again.exit_code == 0, again.stderr
    assert [v["status"] for v in json.loads(again.stdout)["volumes"]] == ["in place"]  # compared through a copy
    assert staging_files(vcsim_server) == []
    assert len(list(vcsim_server.vsan_objects[VSAN].iterdir())) == 1


def test_a_staged_copy_that_landed_wrong_is_never_copied_into_vsan(
    vcsim_server: VcsimServer, client: PyvmomiClient, vc_password: None, toolkit: Toolkit, tmp_path: Path
) -> None:
    put_on_vsan(vcsim_server, client)
    _captured(vcsim_server, client, toolkit, tmp_path)
    repo = Repository.open(tmp_path / "repo", readonly=True)
    try:
        as_of = parse_as_of("now", repo)
        [item], _ = plan_restore(repo, as_of, [], [VSAN])
        flipping = Scripted(LocalTransport(vcsim_server.datastores["ds1"]), "wF", only=f"*{FLAT}")
        area = StagingArea(client, "ds1", flipping)
        dest = VsanDestination(client, VSAN, DatastoreHttpTransport(client, VSAN), area)
        entry: dict[str, Any] = {"path": REL}
        with ThreadPoolExecutor(2) as pool:
            written = dest.restore_volume(repo, item, entry, pool=pool, emit=lambda _k, _d: None)
    finally:
        repo.close()
    assert written == 0
    assert entry["status"] == "failed"
    assert "what landed has digest" in entry["error"]
    assert flipping.faults_fired
    assert not (vcsim_server.datastores[VSAN] / REL).exists()
    assert list(vcsim_server.vsan_objects[VSAN].iterdir()) == []
    assert staging_files(vcsim_server) == [area.run.split("/")[1]]
    area.close()
    assert staging_files(vcsim_server) == []


def test_restore_onto_vsan_without_staging_is_refused(
    vcsim_server: VcsimServer, client: PyvmomiClient, vc_password: None, toolkit: Toolkit, tmp_path: Path
) -> None:
    put_on_vsan(vcsim_server, client)
    cfg = _captured(vcsim_server, client, toolkit, tmp_path)
    cfg.write_text(cfg.read_text().replace('staging = "ds1"\n', ""))
    r = toolkit("--config", str(cfg), "restore", "--as-of", "now", "--to", f"dc1/{VSAN}")
    assert r.exit_code == VsanNoStaging.exit_code == 2
    assert "has no staging datastore configured" in r.stderr
    assert not (vcsim_server.datastores[VSAN] / REL).exists()


def test_a_staged_view_reports_the_vsan_descriptor_time(vcsim_server: VcsimServer, client: PyvmomiClient) -> None:
    """The time of a staged file is the vSAN descriptor's: a disk written during the read shows as changed."""
    put_on_vsan(vcsim_server, client)
    from toolkit.ops.vsan import StagedView

    namespace = DatastoreHttpTransport(client, VSAN)
    before = namespace.stat(REL)
    assert before is not None
    view = StagedView(namespace, LocalTransport(vcsim_server.datastores["ds1"]), REL, None, {REL: 1, "x": 2})
    assert view.stat(REL) == FileInfo(REL, 1, before.mtime_ns)
    os.utime(vcsim_server.datastores[VSAN] / REL, ns=(before.mtime_ns + 10**9, before.mtime_ns + 10**9))
    after = view.stat("x")
    assert after is not None and after.mtime_ns != before.mtime_ns


def test_restore_onto_vsan_with_register_imports_it_under_its_recorded_guid(
    vcsim_server: VcsimServer,
    client: PyvmomiClient,
    vc_password: None,
    toolkit: Toolkit,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    original = put_on_vsan(vcsim_server, client)
    stores = {VSAN: vcsim_server.datastores[VSAN], "ds1": vcsim_server.datastores["ds1"]}
    with AvmSimulator(stores, "2.x", password=AVM_PASSWORD, job_delay_s=0.01) as sim:
        assert sim.import_folder_now(VSAN, FOLDER)
        [stack] = [v for v in sim.volumes() if v.kind == "appstack"]
        monkeypatch.setenv("AVM_PW", AVM_PASSWORD)
        manager = f'[sites.dc1.manager]\nurl = "{sim.url}"\nuser = "admin"\npassword_env = "AVM_PW"\n'
        cfg = write_config(tmp_path, vcsim_server, extra=manager)
        assert toolkit("--config", str(cfg), "init").exit_code == 0
        snap = toolkit("--config", str(cfg), "--json", "snapshot")
        assert snap.exit_code == 0, snap.stderr
        # Lost from vSAN and forgotten by the manager.
        sim.admin_delete_volume(stack.id, keep_files=True)
        client.delete_virtual_disk(f"[{VSAN}] {REL}")
        (vcsim_server.datastores[VSAN] / f"{REL}.metadata").unlink()

        r = toolkit("--config", str(cfg), "--json", "restore", "--as-of", "now", "--to", f"dc1/{VSAN}", "--register")
        assert r.exit_code == 0, r.stderr
        [vol] = json.loads(r.stdout)["volumes"]
        assert (vol["status"], vol["via"]) == ("registered", "staging:ds1")
        [back] = [v for v in sim.volumes() if v.kind == "appstack"]
        assert back.guid == stack.guid
        assert vsan_object(vcsim_server) == original["flat"]
        assert staging_files(vcsim_server) == []


def test_restore_beside_under_a_new_name_onto_vsan(
    vcsim_server: VcsimServer, client: PyvmomiClient, vc_password: None, toolkit: Toolkit, tmp_path: Path
) -> None:
    original = put_on_vsan(vcsim_server, client)
    cfg = write_config(tmp_path, vcsim_server)
    assert toolkit("--config", str(cfg), "init").exit_code == 0
    assert toolkit("--config", str(cfg), "snapshot").exit_code == 0
    live = (vcsim_server.datastores[VSAN] / REL).read_bytes()

    r = toolkit(
        "--config",
        str(cfg),
        "--json",
        "restore",
        "--as-of",
        "now",
        "--to",
        f"dc1/{VSAN}",
        "--rename",
        "{name} restored",
    )
    assert r.exit_code == 0, r.stderr
    [vol] = json.loads(r.stdout)["volumes"]
    renamed = f"{FOLDER}/Office!20!2016!20!restored.vmdk"
    assert (vol["status"], vol["path"]) == ("restored", renamed)
    assert (vcsim_server.datastores[VSAN] / REL).read_bytes() == live  # the live one is untouched
    assert vsan_object(vcsim_server, renamed) == original["flat"]
    assert (vcsim_server.datastores[VSAN] / f"{renamed}.metadata").is_file()
    assert len(list(vcsim_server.vsan_objects[VSAN].iterdir())) == 2
    assert staging_files(vcsim_server) == []


# -- thin staging copies: a copy host ------------------------------------------------------------------

ESX_PASSWORD = "lab-esx-pass"  # noqa: S105 - the lab host's password in these tests
BIG_MIB = 32  # an AppStack whose disk is mostly free space: holes in a thin copy


@pytest.fixture
def esx_host(vcsim_server: VcsimServer, vcsim_binary: Path) -> Iterator[VcsimServer]:
    """An ESXi host of the lab's vSAN cluster: vcsim in ESX mode on the vCenter simulator's datastore directories."""
    with VcsimServer(
        vcsim_server.datastores, vsan=[VSAN], esx=True, binary=vcsim_binary, user="root", password=ESX_PASSWORD
    ) as host:
        yield host


@pytest.fixture
def host_client(esx_host: VcsimServer) -> Iterator[PyvmomiClient]:
    c = connect(VsphereConfig(esx_host.url, esx_host.user, esx_host.password, server="ESXi host"))
    yield c
    c.close()


def allocated_bytes(path: Path) -> int:
    return path.stat().st_blocks * 512  # st_blocks counts 512-byte units


def copy_host_section(host: VcsimServer, table: str = "[sites.dc1.copy_host]") -> str:
    return f'{table}\nurl = "{host.url}"\nuser = "{host.user}"\npassword_env = "ESX_PW"\n'


class Watching:
    """Passes every call to a LocalTransport; notes each staged flat extent when the staging area checks it."""

    def __init__(self, inner: LocalTransport) -> None:
        self.inner = inner
        self.seen: dict[str, tuple[int, int, bytes]] = {}  # path -> (size, allocated bytes, content)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def stat(self, path: str) -> FileInfo | None:
        if path.endswith("-flat.vmdk"):  # the staging area stats the extent right after the copy
            file = self.inner.root / path
            self.seen[path] = (file.stat().st_size, allocated_bytes(file), file.read_bytes())
        return self.inner.stat(path)


def test_vcenter_copies_thick_and_a_host_copies_thin_with_the_adapter_type_asked_for(
    vcsim_server: VcsimServer, client: PyvmomiClient, host_client: PyvmomiClient
) -> None:
    ds1, ds2 = vcsim_server.datastores["ds1"], vcsim_server.datastores["ds2"]
    vol = make_volume(ds2, "src/App.vmdk", size_mib=BIG_MIB, seed=5)
    assert 'ddb.adapterType = "ide"' in vol.descriptor.read_text()

    # vCenter refuses the thin destSpec (NotImplemented); the copy is made without one, preallocated.
    client.copy_virtual_disk("[ds2] src/App.vmdk", "[ds1] ByVcenter.vmdk", adapter_type="busLogic")
    thick = ds1 / "ByVcenter-flat.vmdk"
    assert thick.read_bytes() == vol.flat.read_bytes()
    assert allocated_bytes(thick) >= thick.stat().st_size
    assert 'ddb.adapterType = "ide"' in (ds1 / "ByVcenter.vmdk").read_text()  # no spec: the source's
    client.copy_virtual_disk("[ds2] src/App.vmdk", "[ds1] Again.vmdk")  # the same again, with the default adapter
    assert allocated_bytes(ds1 / "Again-flat.vmdk") >= thick.stat().st_size

    # A host honours it: holes where the disk holds nothing, and the adapter type asked for.
    host_client.copy_virtual_disk("[ds2] src/App.vmdk", "[ds1] ByHost.vmdk", adapter_type="busLogic")
    thin = ds1 / "ByHost-flat.vmdk"
    assert thin.read_bytes() == vol.flat.read_bytes()
    assert allocated_bytes(thin) < thin.stat().st_size // 2
    assert allocated_bytes(thin) <= allocated_bytes(vol.flat) + (1 << 20)
    assert 'ddb.adapterType = "buslogic"' in (ds1 / "ByHost.vmdk").read_text()
    assert {f.path for f in host_client.browse("ds1")} >= {"ByHost.vmdk", "ByHost-flat.vmdk", "ByVcenter.vmdk"}


def test_a_copy_host_stages_vsan_disks_thin_and_vcenter_says_once_its_copies_are_thick(
    vcsim_server: VcsimServer, client: PyvmomiClient, host_client: PyvmomiClient, tmp_path: Path
) -> None:
    original = put_on_vsan(vcsim_server, client, size_mib=BIG_MIB)
    put_on_vsan(vcsim_server, client, f"{FOLDER}/Other.vmdk", seed=3, size_mib=BIG_MIB)
    runs: dict[str, tuple[dict[str, tuple[int, int, bytes]], list[str]]] = {}
    for name, copy_host in (("thin", host_client), ("thick", None)):
        staging = Watching(LocalTransport(vcsim_server.datastores["ds1"]))
        area = StagingArea(client, "ds1", staging, copy_host=copy_host)
        stager = VsanStager(client, VSAN, area, host_hashing=True)
        messages: list[str] = []
        repo = Repository.init(tmp_path / f"repo-{name}")
        try:
            with repo.writing("snapshot"):
                report = snapshot(
                    repo,
                    [Source(VSAN, DatastoreHttpTransport(client, VSAN), stager=stager)],
                    event=lambda kind, data, said=messages: said.append(data["text"]) if kind == "message" else None,
                )
        finally:
            repo.close()
            area.close()
        assert [v["state"] for v in report.volumes] == ["new", "new"], report.volumes
        assert report.ok, report.warnings
        runs[name] = (staging.seen, messages)

    seen, messages = runs["thin"]
    [(size, used, content)] = [v for path, v in seen.items() if path.endswith(f"/{FLAT}")]
    assert content == original["flat"]
    assert used < size // 2, (used, size)  # the staging datastore holds the data, not the disk's size
    assert THICK_COPIES not in messages
    assert sum(f"(thin, on ESXi host {host_client.url})" in m for m in messages) == 2

    seen, messages = runs["thick"]
    [(size, used, content)] = [v for path, v in seen.items() if path.endswith(f"/{FLAT}")]
    assert content == original["flat"]
    assert used >= size
    assert messages.count(THICK_COPIES) == 1  # once in the run, not once per disk
    assert staging_files(vcsim_server) == []


def test_snapshot_and_restore_through_a_copy_host_from_the_configuration(
    vcsim_server: VcsimServer,
    esx_host: VcsimServer,
    client: PyvmomiClient,
    vc_password: None,
    toolkit: Toolkit,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ESX_PW", ESX_PASSWORD)
    original = put_on_vsan(vcsim_server, client)
    cfg = write_config(tmp_path, vcsim_server, extra=copy_host_section(esx_host))
    assert toolkit("--config", str(cfg), "init").exit_code == 0

    r = toolkit("--config", str(cfg), "snapshot")  # text mode: the run's messages on stderr
    assert r.exit_code == 0, r.stderr
    assert f"[{VSAN}] {REL} to [ds1] {STAGING_FOLDER}/" in r.stderr
    assert f"(thin, on ESXi host {esx_host.url})" in r.stderr
    assert THICK_COPIES not in r.stderr
    assert staging_files(vcsim_server) == []

    # Restored onto vSAN, copied in by the host.
    client.delete_virtual_disk(f"[{VSAN}] {REL}")
    (vcsim_server.datastores[VSAN] / f"{REL}.metadata").unlink()
    r = toolkit("--config", str(cfg), "restore", "--as-of", "now", "--to", f"dc1/{VSAN}")
    assert r.exit_code == 0, r.stderr
    assert f" to [{VSAN}] {REL} (thin, on ESXi host {esx_host.url})" in r.stderr
    assert vsan_object(vcsim_server) == original["flat"]
    assert staging_files(vcsim_server) == []

    # Without a copy host the run says, once, that vCenter's copies are thick and what to do about it.
    put_on_vsan(vcsim_server, client, f"{FOLDER}/Other.vmdk", seed=3)
    cfg.write_text(write_config(tmp_path, vcsim_server).read_text())
    r = toolkit("--config", str(cfg), "snapshot", "--rehash")
    assert r.exit_code == 0, r.stderr
    assert r.stderr.count("(vCenter CopyVirtualDisk)") == 2, r.stderr
    assert r.stderr.count(THICK_COPIES) == 1, r.stderr
    assert "copy_host" in THICK_COPIES and "thick" in THICK_COPIES


def test_a_copy_host_that_does_not_mount_the_staging_datastore_fails_the_vsan_volumes(
    vcsim_server: VcsimServer,
    vcsim_binary: Path,
    client: PyvmomiClient,
    vc_password: None,
    toolkit: Toolkit,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ESX_PW", ESX_PASSWORD)
    put_on_vsan(vcsim_server, client)
    stores = {name: vcsim_server.datastores[name] for name in (VSAN, "ds2")}  # no ds1, the staging datastore
    with VcsimServer(stores, vsan=[VSAN], esx=True, binary=vcsim_binary, password=ESX_PASSWORD) as host:
        table = f"[sites.dc1.datastores.{VSAN}.copy_host]"  # this datastore's own
        cfg = write_config(tmp_path, vcsim_server, extra=copy_host_section(host, table))
        assert toolkit("--config", str(cfg), "init").exit_code == 0
        r = toolkit("--config", str(cfg), "--json", "snapshot")
        assert r.exit_code == 1, r.stderr
        [vol] = [v for v in json.loads(r.stdout)["volumes"] if v["key"] == f"{VSAN}/{REL}"]
        assert vol["state"] == "failed"
        assert vol["reason"] == (
            f"copy host {host.url} cannot copy between {VSAN} and ds1: it does not mount ds1 (it mounts: ds2, {VSAN})"
        )

        r = toolkit("--config", str(cfg), "restore", "--as-of", "now", "--to", f"dc1/{VSAN}")
        assert r.exit_code == CopyHostUnsuitable.exit_code == 1
        assert "it does not mount ds1" in r.stderr

        r = toolkit("--config", str(cfg), "--json", "check")
        [row] = [c for c in json.loads(r.stdout)["checks"] if c["component"] == "copy host"]
        assert (row["target"], row["status"]) == (f"dc1/{VSAN}: {host.url}", "fail")
        assert "it does not mount ds1" in row["detail"]
        assert row["fix"] == CopyHostUnsuitable.hint
    assert staging_files(vcsim_server) == []


def test_check_logs_into_the_copy_host(
    vcsim_server: VcsimServer, esx_host: VcsimServer, toolkit: Toolkit, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VC_PW", vcsim_server.password)
    cfg = write_config(tmp_path, vcsim_server, extra=copy_host_section(esx_host))
    assert toolkit("--config", str(cfg), "init").exit_code == 0

    monkeypatch.setenv("ESX_PW", ESX_PASSWORD)
    r = toolkit("--config", str(cfg), "--json", "check")
    checks = json.loads(r.stdout)["checks"]
    [row] = [c for c in checks if c["component"] == "copy host"]
    assert (row["target"], row["status"]) == (f"dc1/{VSAN}: {esx_host.url}", "ok"), row
    assert row["detail"] == f"logged in as root; mounts {VSAN} and ds1: the staging copies are thin"
    [staging] = [c for c in checks if c["component"] == "staging"]
    assert "thick" not in staging["detail"]
    assert r.exit_code == 0, checks

    monkeypatch.setenv("ESX_PW", "wrong")
    r = toolkit("--config", str(cfg), "--json", "check")
    assert r.exit_code == 1
    [row] = [c for c in json.loads(r.stdout)["checks"] if c["component"] == "copy host"]
    assert row["status"] == "fail"
    assert row["detail"] == f"ESXi host at {esx_host.url} refused the login of 'root'"
    assert (
        row["fix"] == "check user = 'root' in [sites.dc1.copy_host] and the password in the environment variable ESX_PW"
    )
    with pytest.raises(VsphereLoginFailed):
        connect(VsphereConfig(esx_host.url, "root", "wrong", server="ESXi host"))

    monkeypatch.delenv("ESX_PW")  # the variable unset: named
    r = toolkit("--config", str(cfg), "--json", "check")
    [row] = [c for c in json.loads(r.stdout)["checks"] if c["component"] == "copy host"]
    assert row["status"] == "fail" and "ESX_PW is not set" in row["detail"]

    cfg.write_text(write_config(tmp_path, vcsim_server).read_text())  # no copy host: the staging row says thick
    r = toolkit("--config", str(cfg), "--json", "check")
    checks = json.loads(r.stdout)["checks"]
    assert not [c for c in checks if c["component"] == "copy host"]
    [staging] = [c for c in checks if c["component"] == "staging"]
    assert staging["status"] == "ok" and "vCenter makes the copies, thick" in staging["detail"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('[sites.s.datastores.d.copy_host]\nurl = "https://esx"\nuser = "root"\npassword_env = "P"\n', "vsan = true"),
        ('[sites.s.copy_host]\nurl = "https://esx"\npassword_env = "P"\n', "user must be a non-empty string"),
        ('[sites.s.copy_host]\nurl = "https://esx"\nuser = "root"\n', "give exactly one of password_env"),
        ('[sites.s.copy_host]\nurl = "https://esx"\nuser = "r"\npassword_env = "P"\nhost = "x"\n', "unknown key"),
        (
            '[sites.s.copy_host]\nurl = "https://esx"\nuser = "r"\npassword_env = "P"\nthumbprint_sha256 = "ab"\n',
            "64 hex",
        ),
    ],
)
def test_bad_copy_host_settings_are_refused(tmp_path: Path, extra: str, message: str) -> None:
    refused(tmp_path, '[sites.s.datastores.d]\ntransport = "http"\n' + extra, message)


def test_a_site_copy_host_serves_its_vsan_datastores_unless_one_names_its_own(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        '[sites.s.vcenter]\nurl = "https://vc"\nuser = "u"\npassword_env = "P"\n'
        '[sites.s.copy_host]\nurl = "https://esx01"\nuser = "root"\npassword_env = "E"\n'
        '[sites.s.datastores.d]\ntransport = "http"\n'
        '[sites.s.datastores.v1]\ntransport = "http"\nvsan = true\nstaging = "d"\n'
        '[sites.s.datastores.v2]\ntransport = "http"\nvsan = true\nstaging = "d"\n'
        '[sites.s.datastores.v2.copy_host]\nurl = "https://esx02"\nuser = "root"\npassword_file = "/x"\n'
    )
    config = load_config(cfg)
    assert config is not None
    [site] = config.sites
    by_name = {d.name: d for d in site.datastores}
    v1, v2 = site.copy_host_of(by_name["v1"]), site.copy_host_of(by_name["v2"])
    assert v1 is not None and (v1.url, v1.where) == ("https://esx01", "[sites.s.copy_host]")
    assert v2 is not None and (v2.url, v2.where) == ("https://esx02", "[sites.s.datastores.v2.copy_host]")
    assert site.copy_host_of(by_name["d"]) is None  # not vSAN: nothing to copy
    assert "E" not in repr(v1.password) or v1.password.env == "E"


def test_the_adapter_type_asked_for_is_the_source_descriptors() -> None:
    assert adapter_type_of(b'createType="vmfs"\nddb.adapterType = "ide"\n') == "ide"
    assert adapter_type_of(b'ddb.adapterType = "buslogic"\n') == "busLogic"
    assert adapter_type_of(b'ddb.adapterType = "lsilogic"\n') == "lsiLogic"
    assert adapter_type_of(b'ddb.adapterType = "pvscsi"\n') == "lsiLogic"  # the API knows three
    assert adapter_type_of(b'createType="vmfs"\n') == "lsiLogic"  # none named


def test_a_thin_copy_needs_room_for_the_data_only_and_one_that_does_not_fit_fails_on_the_host(
    vcsim_binary: Path, tmp_path: Path
) -> None:
    stores = {name: tmp_path / "vcsim" / name for name in ("ds1", "ds2", VSAN)}
    for room_mib, expected in ((24, "new"), (6, "failed")):  # the disk is 32 MiB; it holds about 13 MiB
        capacity = {"ds1": room_mib << 20}
        with (
            VcsimServer(stores, vsan=[VSAN], capacity=capacity, binary=vcsim_binary) as vc,
            VcsimServer(stores, vsan=[VSAN], capacity=capacity, esx=True, binary=vcsim_binary) as esx,
        ):
            client = connect(VsphereConfig(vc.url, vc.user, vc.password, vc.datacenter))
            host = connect(VsphereConfig(esx.url, esx.user, esx.password, server="ESXi host"))
            try:
                if not (stores[VSAN] / REL).exists():
                    put_on_vsan(vc, client, size_mib=BIG_MIB)
                reports = {}
                for name, copy_host in (("vcenter", None), ("host", host)):
                    area = StagingArea(client, "ds1", LocalTransport(stores["ds1"]), copy_host=copy_host)
                    stager = VsanStager(client, VSAN, area, host_hashing=True)
                    repo = Repository.init(tmp_path / f"repo-{room_mib}-{name}")
                    try:
                        with repo.writing("snapshot"):
                            reports[name] = snapshot(
                                repo, [Source(VSAN, DatastoreHttpTransport(client, VSAN), stager=stager)]
                            )
                    finally:
                        repo.close()
                        area.close()
            finally:
                host.close()
                client.close()
            assert staging_files(vc) == []
        [thick] = reports["vcenter"].volumes
        assert thick["state"] == "failed"  # vCenter's copy would take the full 32 MiB: refused before copying
        assert thick["reason"].startswith("staging datastore ds1 has ") and "needs 32.1 MiB" in thick["reason"]
        [thin] = reports["host"].volumes
        assert thin["state"] == expected, thin
        if expected == "failed":  # the host ran out of room during the copy; the partial copy is gone
            assert thin["reason"].startswith("datastore ds1 has no space to copy virtual disk"), thin["reason"]


# -- the adapter type of a disk copied into vSAN ----------------------------------------------------------


def set_adapter(server: VcsimServer, relpath: str, adapter: str) -> bytes:
    """Give the vSAN descriptor at ``relpath`` this ddb.adapterType (as a VM with that controller leaves it)."""
    path = server.datastores[VSAN] / relpath
    text, count = re.subn(
        rb'^ddb\.adapterType = "[^"]*"$', f'ddb.adapterType = "{adapter}"'.encode(), path.read_bytes(), flags=re.M
    )
    assert count == 1
    path.write_bytes(text)
    return text


def but_object(descriptor: bytes) -> str:
    """A vSAN descriptor with its object's id left out: every other byte is what a restore must bring back."""
    return VSAN_EXTENT.sub(r'RW \1 VMFS "vsan://OBJECT"', descriptor.decode())


def delete_from_vsan(vcsim_server: VcsimServer, client: PyvmomiClient, paths: Iterable[str]) -> None:
    """Delete the disks (and their .vmdk.metadata) at ``paths`` of the vSAN datastore: lost, to be restored."""
    for rel in paths:
        client.delete_virtual_disk(f"[{VSAN}] {rel}")
        (vcsim_server.datastores[VSAN] / f"{rel}.metadata").unlink()


def test_restore_onto_vsan_puts_back_an_adapter_type_the_copy_could_not_name(
    vcsim_server: VcsimServer,
    esx_host: VcsimServer,
    client: PyvmomiClient,
    vc_password: None,
    toolkit: Toolkit,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ESX_PW", ESX_PASSWORD)
    adapters = {"Pv": "pvscsi", "Sas": "lsisas1068", "Lsi": "lsilogic"}
    originals: dict[str, tuple[bytes, bytes]] = {}  # path -> (vSAN descriptor, flat data)
    for seed, (name, adapter) in enumerate(adapters.items(), 1):
        rel = f"{FOLDER}/{name}.vmdk"
        flat = put_on_vsan(vcsim_server, client, rel, seed=seed)["flat"]
        originals[rel] = (set_adapter(vcsim_server, rel, adapter), flat)
    # Captured through vCenter, whose copies (made without a spec) keep the source's adapter type.
    cfg = write_config(tmp_path, vcsim_server)
    assert toolkit("--config", str(cfg), "init").exit_code == 0
    assert toolkit("--config", str(cfg), "snapshot").exit_code == 0
    delete_from_vsan(vcsim_server, client, originals)

    # Restored through a copy host, which writes the spec's adapter type: lsiLogic for all three.
    cfg = write_config(tmp_path, vcsim_server, extra=copy_host_section(esx_host))
    r = toolkit("--config", str(cfg), "restore", "--as-of", "now", "--to", f"dc1/{VSAN}")
    assert r.exit_code == 0, r.stdout + r.stderr
    for rel, (descriptor, flat) in originals.items():
        restored = (vcsim_server.datastores[VSAN] / rel).read_bytes()
        assert but_object(restored) == but_object(descriptor), rel  # the captured line back, nothing else changed
        assert vsan_object(vcsim_server, rel) == flat
    put_back = [line for line in r.stderr.splitlines() if "the captured ddb.adapterType" in line]
    assert sorted(put_back) == sorted(
        f'warning: [{VSAN}] {FOLDER}/{name}.vmdk: the copy\'s descriptor said ddb.adapterType = "lsilogic"; '
        f'the captured ddb.adapterType = "{adapters[name]}" was put back'
        for name in ("Pv", "Sas")
    ), r.stderr  # and no rewrite of the lsilogic disk, which the copy kept as it was
    assert "instead of the captured" not in r.stdout + r.stderr
    assert staging_files(vcsim_server) == []

    # Found in place later with another adapter type (edited since): said, and left alone.
    lsi = f"{FOLDER}/Lsi.vmdk"
    before = set_adapter(vcsim_server, lsi, "buslogic")
    r = toolkit("--config", str(cfg), "--json", "restore", "--as-of", "now", "--to", f"dc1/{VSAN}", "--volume", "Lsi")
    assert r.exit_code == 0, r.stdout + r.stderr
    [vol] = json.loads(r.stdout)["volumes"]
    assert vol["status"] == "in place"
    assert vol["warnings"] == [
        f"[{VSAN}] {lsi}: the disk and its sidecars are as captured, but its descriptor says "
        'ddb.adapterType = "buslogic" instead of the captured ddb.adapterType = "lsilogic"; it was left as it is'
    ]
    assert (vcsim_server.datastores[VSAN] / lsi).read_bytes() == before


def test_a_snapshot_through_a_copy_host_records_the_adapter_type_of_the_disk(
    vcsim_server: VcsimServer,
    esx_host: VcsimServer,
    client: PyvmomiClient,
    vc_password: None,
    toolkit: Toolkit,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The copy host's staged copy says lsilogic; the snapshot records the vSAN disk's own line all the same."""
    monkeypatch.setenv("ESX_PW", ESX_PASSWORD)
    originals: dict[str, bytes] = {}
    for seed, (name, adapter) in enumerate({"Pv": "pvscsi", "Sas": "lsisas1068"}.items(), 1):
        rel = f"{FOLDER}/{name}.vmdk"
        put_on_vsan(vcsim_server, client, rel, seed=seed)
        originals[rel] = set_adapter(vcsim_server, rel, adapter)
    cfg = write_config(tmp_path, vcsim_server, extra=copy_host_section(esx_host))
    assert toolkit("--config", str(cfg), "init").exit_code == 0
    r = toolkit("--config", str(cfg), "snapshot")
    assert r.exit_code == 0, r.stdout + r.stderr
    delete_from_vsan(vcsim_server, client, originals)

    # Restored through vCenter, whose copies keep the adapter type of what they copy: the recorded one.
    cfg = write_config(tmp_path, vcsim_server)
    r = toolkit("--config", str(cfg), "restore", "--as-of", "now", "--to", f"dc1/{VSAN}")
    assert r.exit_code == 0, r.stdout + r.stderr
    for rel, descriptor in originals.items():
        assert but_object((vcsim_server.datastores[VSAN] / rel).read_bytes()) == but_object(descriptor), rel
    assert "the captured ddb.adapterType" not in r.stderr  # nothing to put back: recorded right
    assert staging_files(vcsim_server) == []


@pytest.mark.parametrize("fault", ["E", "F"])  # the write fails; the write lands changed without an error
def test_a_failed_adapter_type_rewrite_is_a_warning_and_the_restored_copy_stays(
    vcsim_server: VcsimServer,
    client: PyvmomiClient,
    host_client: PyvmomiClient,
    vc_password: None,
    toolkit: Toolkit,
    tmp_path: Path,
    fault: str,
) -> None:
    original = put_on_vsan(vcsim_server, client)
    set_adapter(vcsim_server, REL, "pvscsi")
    _captured(vcsim_server, client, toolkit, tmp_path)
    repo = Repository.open(tmp_path / "repo", readonly=True)
    faulty = Scripted(LocalTransport(vcsim_server.datastores["ds1"]), fault, only=f"*{EDITED_SUFFIX}")
    area = StagingArea(client, "ds1", faulty, copy_host=host_client)
    entry: dict[str, Any] = {"path": REL}
    try:
        [item], _ = plan_restore(repo, parse_as_of("now", repo), [], [VSAN])
        dest = VsanDestination(client, VSAN, DatastoreHttpTransport(client, VSAN), area)
        with ThreadPoolExecutor(2) as pool:
            written = dest.restore_volume(repo, item, entry, pool=pool, emit=lambda _k, _d: None)
    finally:
        repo.close()
        area.close()
    assert faulty.faults_fired
    assert entry["status"] == "restored", entry
    assert written > 0
    [warning] = entry["warnings"]
    assert warning.startswith(
        f'[{VSAN}] {REL}: the copy\'s descriptor says ddb.adapterType = "lsilogic" instead of the captured '
        'ddb.adapterType = "pvscsi"; putting that line back failed ('
    ), warning
    assert warning.endswith("); the disk is usable")
    assert 'ddb.adapterType = "lsilogic"' in (vcsim_server.datastores[VSAN] / REL).read_text()  # as the copy made it
    assert vsan_object(vcsim_server) == original["flat"]
    assert staging_files(vcsim_server) == []


CAPTURED = b'createType="vmfs"\nRW 16384 VMFS "vsan://0001"\nddb.adapterType = "pvscsi"\nddb.uuid = "60 00"\n'


def test_the_adapter_line_is_replaced_and_every_other_byte_kept() -> None:
    copied = (
        b'createType="vmfs"\r\nRW 16384 VMFS "vsan://0002"\r\nddb.adapterType = "lsilogic"\r\nddb.uuid = "60 00"\r\n'
    )
    assert with_adapter_line(copied, CAPTURED) == copied.replace(b'"lsilogic"', b'"pvscsi"')  # CRLF kept
    last = b'createType="vmfs"\nRW 16384 VMFS "vsan://0002"\nddb.adapterType="lsilogic"'  # last line, no ending
    assert with_adapter_line(last, CAPTURED) == last.replace(
        b'ddb.adapterType="lsilogic"', b'ddb.adapterType = "pvscsi"'
    )
    assert with_adapter_line(b'createType="vmfs"\n', CAPTURED) is None  # nothing to replace
    assert with_adapter_line(copied + b'ddb.adapterType = "ide"\r\n', CAPTURED) is None  # which one?
    assert with_adapter_line(copied, b'createType="vmfs"\n') is None  # nothing to put back
    assert [x.value for x in adapter_lines(b'ddb.adapterType = "lsisas1068"\r\n  ddb.adapterType=ide\n')] == [
        "lsisas1068",
        "ide",
    ]
    assert adapter_type_of(b'ddb.adapterType = "lsisas1068"\r\n') == "lsiLogic"


class LocalVcenter:
    """vCenter's file move (the one call a descriptor rewrite makes of it) over local datastore directories."""

    def __init__(self, roots: dict[str, Path], *, fail: bool = False) -> None:
        self.roots = roots
        self.fail = fail
        self.moves: list[tuple[str, str]] = []

    def move_file(self, source: str, dest: str, *, overwrite: bool = False) -> None:
        self.moves.append((source, dest))
        if self.fail:
            raise VsphereTaskFailed(server="vCenter", action=f"move {source} to {dest}", detail=f"refused {INJECTED}")
        (src_ds, src), (dst_ds, dst) = parse_datastore_path(source), parse_datastore_path(dest)
        assert overwrite
        (self.roots[src_ds] / src).replace(self.roots[dst_ds] / dst)


def _put_back(tmp_path: Path, copied: bytes, *, fail: bool = False) -> tuple[str | None, bytes, LocalVcenter]:
    """Put CAPTURED's adapter line back into a copy whose descriptor is ``copied``: the warning, the result, moves."""
    roots = {VSAN: tmp_path / VSAN, "ds1": tmp_path / "ds1"}
    for root in roots.values():
        (root / FOLDER).mkdir(parents=True)
    (roots[VSAN] / REL).write_bytes(copied)
    vcenter = LocalVcenter(roots, fail=fail)
    area = StagingArea(vcenter, "ds1", LocalTransport(roots["ds1"]))  # type: ignore[arg-type]
    dest = VsanDestination(vcenter, VSAN, LocalTransport(roots[VSAN]), area)  # type: ignore[arg-type]
    warning = dest._put_back_adapter_line(REL, CAPTURED, FOLDER, lambda _k, _d: None)
    return warning, (roots[VSAN] / REL).read_bytes(), vcenter


def test_a_copy_whose_descriptor_cannot_take_the_captured_adapter_line_is_kept_with_a_warning(tmp_path: Path) -> None:
    where = f"[{VSAN}] {REL}"
    no_line = b'createType="vmfs"\nRW 16384 VMFS "vsan://0002"\n'
    warning, now, vcenter = _put_back(tmp_path / "a", no_line)
    assert warning == (
        f"{where}: the copy's descriptor names no adapter type (no ddb.adapterType line) instead of the captured "
        'ddb.adapterType = "pvscsi"; it was left as it is (the disk is usable)'
    )
    assert (now, vcenter.moves) == (no_line, [])

    huge = b'createType="vmfs"\nRW 16384 VMFS "vsan://0002"\nddb.adapterType = "lsilogic"\n' + b"#" * (64 << 10)
    warning, now, vcenter = _put_back(tmp_path / "b", huge)
    assert warning is not None and warning.startswith(f"{where}: the copy's descriptor could not be read")
    assert "too large for a text descriptor" in warning
    assert (now, vcenter.moves) == (huge, [])

    lsi = b'createType="vmfs"\nRW 16384 VMFS "vsan://0002"\nddb.adapterType = "lsilogic"\nddb.uuid = "60 00"\n'
    warning, now, vcenter = _put_back(tmp_path / "c", lsi, fail=True)
    assert warning is not None and warning.startswith(
        f'{where}: the copy\'s descriptor says ddb.adapterType = "lsilogic" instead of the captured '
        'ddb.adapterType = "pvscsi"; putting that line back failed (vCenter could not move'
    )
    assert (now, len(vcenter.moves)) == (lsi, 1)

    warning, now, vcenter = _put_back(tmp_path / "d", lsi)
    assert warning is None
    assert now == lsi.replace(b'"lsilogic"', b'"pvscsi"')
    assert [dest for _src, dest in vcenter.moves] == [where]

    warning, now, vcenter = _put_back(tmp_path / "e", now)  # it says pvscsi already: nothing is written
    assert (warning, vcenter.moves) == (None, [])

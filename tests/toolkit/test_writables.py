"""writables = "disable": a writable volume is disabled in the manager while it is read, and always enabled again."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from catalog.repo import Repository
from toolkit.avm import AvmClient
from toolkit.lab.avm_sim import AvmSimulator
from toolkit.lab.faults import INJECTED, Scripted
from toolkit.ops.snapshot import Source, snapshot
from toolkit.transports.base import Transport
from toolkit.transports.local import LocalTransport

from ..conftest import Toolkit

pytestmark = pytest.mark.lab

PASSWORD = "lab-pass-1"  # noqa: S105 - the simulator's admin password in these tests
PROFILE = b"NTUSER.DAT of a user profile " * 4096  # data in the flat extent, so reading it is not all holes


@pytest.fixture(params=["2.x", "4.x"])
def sim(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AvmSimulator]:
    with AvmSimulator({"ds1": tmp_path / "ds1"}, request.param, password=PASSWORD, job_delay_s=0.01) as s:
        yield s


def activities(sim: AvmSimulator, volume_id: int) -> list[str]:
    return [a.action for a in sim.state.activities if a.target_id == volume_id and a.action in ("Disable", "Enable")]


class Watching:
    """Passes every call to ``inner``; notes the writable's status in the manager whenever a flat extent is read."""

    def __init__(self, inner: Transport, sim: AvmSimulator, volume_id: int, *, interrupt: bool = False) -> None:
        self.inner = inner
        self.sim = sim
        self.volume_id = volume_id
        self.interrupt = interrupt
        self.seen: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def open_read(self, path: str) -> Any:
        if path.endswith("-flat.vmdk"):
            self.seen.append(self.sim.volume(self.volume_id).status)
            if self.interrupt:
                raise KeyboardInterrupt
        return self.inner.open_read(path)


def run(sim: AvmSimulator, tmp_path: Path, transport: Transport) -> tuple[dict[str, Any], list[str]]:
    client = AvmClient(sim.url, "admin", PASSWORD)
    managed = {v.relpath: v for v in client.inventory() if v.datastore == "ds1"}
    source = Source("ds1", transport, managed=managed, writables="disable", manager=client)
    repo = Repository.init(tmp_path / "repo")
    try:
        with repo.writing("snapshot"):
            report = snapshot(repo, [source])
    finally:
        repo.close()
    [vol] = [v for v in report.volumes if v["kind"] == "writable"]
    return vol, report.warnings


def test_a_detached_writable_is_disabled_while_it_is_read_then_enabled(sim: AvmSimulator, tmp_path: Path) -> None:
    w = sim.admin_create_volume("writable", "jdoe", size_mb=8, content=PROFILE)
    watching = Watching(LocalTransport(tmp_path / "ds1"), sim, w.id)
    vol, warnings = run(sim, tmp_path, watching)
    assert vol["state"] == "new"
    assert vol["consistency"] == "disabled in the manager while copied"
    assert watching.seen == ["disabled"]
    assert sim.volume(w.id).status == "enabled"
    assert activities(sim, w.id) == ["Disable", "Enable"]
    assert warnings == []


def test_a_failed_read_enables_the_writable_again(sim: AvmSimulator, tmp_path: Path) -> None:
    w = sim.admin_create_volume("writable", "jdoe", size_mb=8, content=PROFILE)
    failing = Scripted(LocalTransport(tmp_path / "ds1"), "E", only="*-flat.vmdk")
    vol, _ = run(sim, tmp_path, failing)
    assert vol["state"] == "failed"
    assert INJECTED in vol["reason"]
    assert sim.volume(w.id).status == "enabled"
    assert activities(sim, w.id) == ["Disable", "Enable"]


def test_an_interrupted_read_enables_the_writable_again(sim: AvmSimulator, tmp_path: Path) -> None:
    w = sim.admin_create_volume("writable", "jdoe", size_mb=8, content=PROFILE)
    with pytest.raises(KeyboardInterrupt):
        run(sim, tmp_path, Watching(LocalTransport(tmp_path / "ds1"), sim, w.id, interrupt=True))
    assert sim.volume(w.id).status == "enabled"
    assert activities(sim, w.id) == ["Disable", "Enable"]


def test_an_attached_writable_is_skipped_and_never_disabled(sim: AvmSimulator, tmp_path: Path) -> None:
    w = sim.admin_create_volume("writable", "jdoe", size_mb=8, content=PROFILE)
    sim.admin_attach(w.id)
    vol, _ = run(sim, tmp_path, LocalTransport(tmp_path / "ds1"))
    assert vol["state"] == "skipped"
    assert vol["reason"] == "writable volume attached to a desktop (policy writables = disable)"
    assert activities(sim, w.id) == []


class AttachOnDisable:
    """The manager client, except that a desktop attaches the writable the moment it is disabled."""

    def __init__(self, client: AvmClient, sim: AvmSimulator) -> None:
        self.client = client
        self.sim = sim

    def set_writable_enabled(self, volume_id: int, enabled: bool) -> None:
        self.client.set_writable_enabled(volume_id, enabled)
        if not enabled:
            self.sim.admin_attach(volume_id)

    def writable(self, volume_id: int) -> Any:
        return self.client.writable(volume_id)


def test_a_writable_attached_as_it_is_disabled_is_skipped_and_enabled_again(sim: AvmSimulator, tmp_path: Path) -> None:
    w = sim.admin_create_volume("writable", "jdoe", size_mb=8, content=PROFILE)
    client = AvmClient(sim.url, "admin", PASSWORD)
    managed = {v.relpath: v for v in client.inventory() if v.datastore == "ds1"}
    source = Source(
        "ds1",
        LocalTransport(tmp_path / "ds1"),
        managed=managed,
        writables="disable",
        manager=AttachOnDisable(client, sim),
    )
    repo = Repository.init(tmp_path / "repo")
    with repo.writing("snapshot"):
        report = snapshot(repo, [source])
    [vol] = report.volumes
    assert vol["state"] == "skipped"
    assert "attached to a desktop as it was being disabled" in vol["reason"]
    assert sim.volume(w.id).status == "enabled"
    assert activities(sim, w.id) == ["Disable", "Enable"]


def test_a_writable_the_manager_had_disabled_is_left_disabled(sim: AvmSimulator, tmp_path: Path) -> None:
    w = sim.admin_create_volume("writable", "jdoe", size_mb=8, status="disabled")
    vol, _ = run(sim, tmp_path, LocalTransport(tmp_path / "ds1"))
    assert vol["state"] == "new"
    assert sim.volume(w.id).status == "disabled"
    assert activities(sim, w.id) == []


def test_the_configured_policy_disables_writables(sim: AvmSimulator, tmp_path: Path, toolkit: Toolkit) -> None:
    w = sim.admin_create_volume("writable", "jdoe", size_mb=8, content=PROFILE)
    appstack = "appstack" if sim.flavour == "2.x" else "package"
    sim.admin_create_volume(appstack, "Office 2016", size_mb=8)
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        f"""repository = "{tmp_path / "repo"}"
[sites.dc1]
writables = "disable"
[sites.dc1.manager]
url = "{sim.url}"
user = "admin"
password_env = "TEST_AVM_PASSWORD"
[sites.dc1.datastores.ds1]
transport = "local"
path = "{tmp_path / "ds1"}"
"""
    )
    env = pytest.MonkeyPatch()
    env.setenv("TEST_AVM_PASSWORD", PASSWORD)
    try:
        assert toolkit("--config", str(cfg), "init").exit_code == 0
        r = toolkit("--config", str(cfg), "--json", "snapshot")
    finally:
        env.undo()
    assert r.exit_code == 0, r.stderr
    assert {v["kind"]: v["state"] for v in json.loads(r.stdout)["volumes"]} == {"writable": "new", appstack: "new"}
    assert activities(sim, w.id) == ["Disable", "Enable"]
    assert sim.volume(w.id).status == "enabled"

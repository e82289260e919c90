"""`toolkit lab up` runs a simulated site a user (or a test) can point every command at."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from toolkit.avm import AvmClient, recorded_assignments
from toolkit.lab.avm_sim import AvmSimulator
from toolkit.lab.corpus import make_datastore
from toolkit.lab.up import fill_manager

from ..conftest import run_toolkit

JDOE = ("User", "CN=jdoe,OU=Users,DC=lab,DC=example")
DESIGNERS = ("Group", "CN=Designers,OU=Groups,DC=lab,DC=example")
DOMAIN_USERS = ("Group", "CN=Domain Users,CN=Users,DC=lab,DC=example")


@pytest.mark.lab
@pytest.mark.parametrize("extra", [[], ["--tls"], ["--sshd"], ["--vcsim"]])
def test_lab_up_serves_a_site_that_snapshot_uses(tmp_path: Path, extra: list[str]) -> None:
    lab = tmp_path / "lab"
    tls = "--tls" in extra
    args = [sys.executable, "-m", "toolkit", "--json", "lab", "up", str(lab), *extra]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        facts = json.loads(proc.stdout.readline())
        text = Path(facts["config"]).read_text()
        assert ('transport = "sftp"' in text) == ("--sshd" in extra)
        assert ('transport = "http"' in text) == ("--vcsim" in extra)
        assert facts["manager_url"].startswith("https://" if tls else "http://")
        config = facts["config"]
        assert Path(config).stat().st_mode & 0o777 == 0o600
        env = {"TOOLKIT_CONFIG": config}
        assert run_toolkit("init", env=env).returncode == 0
        snap = run_toolkit("--json", "snapshot", env=env)
        assert snap.returncode == 0, snap.stdout + snap.stderr
        report = json.loads(snap.stdout)
        managed = [v for v in report["volumes"] if v["state"] == "new"]
        assert len(managed) >= 4  # sample volumes on ds1 and their replicas on ds2
        assert run_toolkit("verify", env=env).returncode == 0
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "lab stopped" in err
    assert "manager: 'Office 2016' assigned to group Designers" in err
    assert "Traceback" not in err
    assert not os.environ.get("TOOLKIT_CONFIG")


@pytest.mark.lab
@pytest.mark.parametrize("flavour", ["2.x", "4.x"])
def test_the_lab_manager_holds_assignments_as_an_admin_made_them(tmp_path: Path, flavour: str) -> None:
    """What the runbook's drills restore and switch: 2.x a user and a group; 4.x a pin and a CURRENT assignment."""
    stores = {"ds1": tmp_path / "ds1", "ds2": tmp_path / "ds2"}
    make_datastore(stores["ds1"], flavour=flavour, count=3, size_mib=4, real=False)
    with AvmSimulator(stores, flavour, storage_groups={"sg1": ["ds1", "ds2"]}, job_delay_s=0.01) as sim:
        lines = fill_manager(sim)
        client = AvmClient(sim.url, "admin", "admin")
        listed = {v.name: v for v in client.inventory() if v.kind != "writable"}
        held = {
            name: {(a.via, a.entities, a.mount_prefix, a.filters) for a in recorded_assignments(v.to_json())}
            for name, v in listed.items()
        }
        office = listed["Office 2016"]
        marker = client.current_marker(int(office.record.get("app_product_id") or 0)) if flavour == "4.x" else None
        copies = {v.name: len(v.file_locations) for v in sim.volumes()}
    assert len(lines) == 3, lines
    assert copies["Office 2016"] == copies["Adobe Reader DC"] == 2  # imported on ds1, replicated to ds2
    if flavour == "2.x":
        assert held == {
            "Office 2016": {("volume", (JDOE,), "VDI", ()), ("volume", (DESIGNERS,), "", ())},
            "Adobe Reader DC": {("volume", (DOMAIN_USERS,), "", ())},
        }
        return
    assert held == {
        "Office 2016": {
            ("package", (JDOE,), "", (("ComputerPrefixFilter", "VDI"),)),
            ("marker", (DESIGNERS,), "", ()),
        },
        "Adobe Reader DC": {("marker", (DOMAIN_USERS,), "", ())},
        "Google Chrome 104": set(),
    }
    assert marker is not None and marker[1] == office.id

"""A configured site read over datastore HTTP through (simulated) vCenter, end to end through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from toolkit.lab.corpus import make_volume

from ..conftest import run_toolkit

pytestmark = pytest.mark.lab


def test_snapshot_over_datastore_http_and_restore(vcsim_server, tmp_path: Path) -> None:
    ds1 = tmp_path / "vcsim" / "ds1"
    vol = make_volume(ds1, "cloudvolumes/apps/Office!20!2016.vmdk", size_mib=16, seed=4, real=True)
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        f"""repository = "{tmp_path / "repo"}"
[sites.dc1.vcenter]
url = "{vcsim_server.url}"
user = "{vcsim_server.user}"
password_env = "VC_PW"
datacenter = "{vcsim_server.datacenter}"
[sites.dc1.datastores.ds1]
transport = "http"
"""
    )
    env = {"VC_PW": vcsim_server.password}
    assert run_toolkit("--config", str(cfg), "init", env=env).returncode == 0
    first = run_toolkit("--config", str(cfg), "--json", "snapshot", env=env)
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert {v["state"] for v in report["volumes"]} == {"new"}
    again = json.loads(run_toolkit("--config", str(cfg), "--json", "snapshot", env=env).stdout)
    assert again["stats"]["bytes_read"] == 0  # the browser's sizes and times say nothing changed
    out = tmp_path / "out"
    r = run_toolkit("--config", str(cfg), "restore", "--as-of", "2100-01-01", "--to", str(out), env=env)
    assert r.returncode == 0, r.stderr
    for f in vol.files:
        assert (out / f.relative_to(ds1)).read_bytes() == f.read_bytes()


def test_a_wrong_vcenter_password_fails_that_site_cleanly(vcsim_server, tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        f"""repository = "{tmp_path / "repo"}"
[sites.dc1.vcenter]
url = "{vcsim_server.url}"
user = "{vcsim_server.user}"
password_env = "VC_PW"
[sites.dc1.datastores.ds1]
transport = "http"
"""
    )
    run_toolkit("--config", str(cfg), "init")
    proc = run_toolkit("--config", str(cfg), "--json", "snapshot", env={"VC_PW": "wrong"})
    assert "Traceback" not in proc.stderr
    assert proc.returncode == 1, proc.stderr
    assert "could not be opened" in " ".join(json.loads(proc.stdout)["warnings"])

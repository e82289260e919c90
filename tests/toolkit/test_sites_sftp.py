"""A configured site read over SFTP from an ESXi-like host: only missing blocks cross the wire."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from toolkit.lab.corpus import make_volume

from ..conftest import run_toolkit

pytestmark = pytest.mark.lab


def config_for(sshd_server, tmp_path: Path, *, hashing: bool = True) -> Path:
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        f"""repository = "{tmp_path / "repo"}"
[sites.dc1.datastores.datastore1]
transport = "sftp"
host = "{sshd_server.host}"
port = {sshd_server.port}
user = "{sshd_server.username}"
key_file = "{sshd_server.client_key_path}"
known_hosts = "{sshd_server.known_hosts_path}"
path = "{sshd_server.remote_path("datastore1")}"
host_hashing = {"true" if hashing else "false"}
"""
    )
    return cfg


def test_snapshot_over_sftp_sends_only_new_blocks_and_restores(sshd_server, tmp_path: Path) -> None:
    ds = Path(sshd_server.remote_path("datastore1"))
    vol = make_volume(ds, "cloudvolumes/apps/Office!20!2016.vmdk", size_mib=32, seed=5, real=False)
    with vol.flat.open("r+b") as f:  # make most blocks incompressible data, as a worst case
        for i in range(0, 32, 2):
            f.seek(i << 20)
            f.write(os.urandom(1 << 20))
    cfg = config_for(sshd_server, tmp_path)
    assert run_toolkit("--config", str(cfg), "init").returncode == 0
    first = run_toolkit("--config", str(cfg), "--json", "snapshot")
    assert first.returncode == 0, first.stderr
    one = json.loads(first.stdout)["stats"]
    size = vol.flat.stat().st_size
    assert one["wire_bytes"] < size  # holes never crossed
    # An update touching one block: only that block travels (plus 33 bytes per block of hashes).
    with vol.flat.open("r+b") as f:
        f.seek(9 << 20)
        f.write(os.urandom(4096))
    os.utime(vol.flat, ns=(1, 1_700_000_000_000_000_000))
    second = json.loads(run_toolkit("--config", str(cfg), "--json", "snapshot").stdout)
    two = second["stats"]
    assert {v["state"] for v in second["volumes"]} == {"changed"}
    assert two["wire_bytes"] < 0.05 * size, two
    out = tmp_path / "out"
    r = run_toolkit("--config", str(cfg), "restore", "--as-of", "2100-01-01", "--to", str(out))
    assert r.returncode == 0, r.stderr
    for f in vol.files:
        assert (out / f.relative_to(ds)).read_bytes() == f.read_bytes()


def test_an_unknown_host_key_fails_that_datastore_only(sshd_server, tmp_path: Path) -> None:
    cfg = config_for(sshd_server, tmp_path)
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    cfg.write_text(cfg.read_text().replace(str(sshd_server.known_hosts_path), str(empty)))
    run_toolkit("--config", str(cfg), "init")
    proc = run_toolkit("--config", str(cfg), "--json", "snapshot")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    warnings = " ".join(json.loads(proc.stdout)["warnings"])
    assert "host key" in warnings.lower()
    assert "SHA256:" in warnings

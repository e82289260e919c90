"""`toolkit lab up` runs a simulated site a user (or a test) can point every command at."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import run_toolkit


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
    assert "Traceback" not in err
    assert not os.environ.get("TOOLKIT_CONFIG")

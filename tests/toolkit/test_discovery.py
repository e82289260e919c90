"""Discovery through App Volumes Manager: configured sites, the manager's records, and every failure."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from toolkit.lab.avm_sim import AvmSimulator
from toolkit.lab.corpus import make_datastore, make_volume

from ..conftest import Toolkit, run_toolkit

pytestmark = pytest.mark.lab

FOLDERS = {
    "2.x": ["cloudvolumes/apps", "cloudvolumes/writable"],
    "4.x": ["appvolumes/packages", "appvolumes/writables"],
}


@pytest.fixture(params=["2.x", "4.x"])
def site(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[AvmSimulator, Path, str]]:
    flavour = request.param
    ds1, ds2 = tmp_path / "ds1", tmp_path / "ds2"
    ds2.mkdir()
    make_datastore(ds1, flavour=flavour, count=2, size_mib=8, real=False)
    make_volume(ds1, "stray/Copied!20!by!20!hand.vmdk", size_mib=4, seed=9, real=False)  # the manager does not know it
    with AvmSimulator({"ds1": ds1, "ds2": ds2}, flavour=flavour, job_delay_s=0.01) as sim:
        for folder in FOLDERS[flavour]:
            sim.import_folder_now("ds1", folder)
        yield sim, tmp_path, flavour


def write_config(tmp: Path, url: str, *, extra_site: str = "", datastores: str = "", mode: int = 0o600) -> Path:
    cfg = tmp / "config.toml"
    cfg.write_text(
        f"""
repository = "{tmp / "repo"}"

[sites.dc1]
{extra_site}

[sites.dc1.manager]
url = "{url}"
user = "admin"
password_env = "TEST_AVM_PASSWORD"

[sites.dc1.datastores.ds1]
transport = "local"
path = "{tmp / "ds1"}"
{datastores}
"""
    )
    cfg.chmod(mode)
    return cfg


def cli(cfg: Path, *args: str) -> tuple[int, dict]:
    proc = run_toolkit("--config", str(cfg), "--json", *args, env={"TEST_AVM_PASSWORD": "admin"})
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, (json.loads(proc.stdout) if proc.stdout.strip() else {})


def by_name(report: dict) -> dict[str, dict]:
    return {v["key"].rsplit("/", 1)[-1]: v for v in report["volumes"]}


def test_configured_snapshot_records_the_managers_view(site) -> None:
    sim, tmp, _ = site
    cfg = write_config(tmp, sim.url)
    assert run_toolkit("--config", str(cfg), "init").returncode == 0
    writable = next(v for v in sim.volumes() if v.kind == "writable")
    sim.admin_attach(writable.id)
    rc, report = cli(cfg, "snapshot")
    vols = by_name(report)
    assert rc == 1  # the attached writable was skipped
    office = vols["Office!20!2016.vmdk"]
    assert office["state"] == "new"
    assert vols["Copied!20!by!20!hand.vmdk"]["state"] == "new"
    assert vols["CORP!5C!jdoe.vmdk"]["state"] == "skipped"
    assert "attached" in vols["CORP!5C!jdoe.vmdk"]["reason"]
    # The manager's record travels with the version, and unknown VMDKs are flagged.
    repo_docs = list((tmp / "repo" / "snapshots").glob("*.json"))
    doc = json.loads(repo_docs[0].read_text())
    recorded = {v["path"].rsplit("/", 1)[-1]: v for v in doc["volumes"]}
    assert recorded["Office!20!2016.vmdk"]["managed"] is True
    assert recorded["Office!20!2016.vmdk"]["avm"]["guid"].startswith("{")
    assert recorded["Office!20!2016.vmdk"]["name"] == "Office 2016"
    assert recorded["Copied!20!by!20!hand.vmdk"]["managed"] is False
    assert recorded["Copied!20!by!20!hand.vmdk"]["avm"] is None


def test_a_volume_created_in_the_manager_is_in_the_next_snapshot(site) -> None:
    sim, tmp, flavour = site
    cfg = write_config(tmp, sim.url, extra_site='writables = "copy"')
    run_toolkit("--config", str(cfg), "init")
    assert cli(cfg, "snapshot")[0] == 0
    kind = "appstack" if flavour == "2.x" else "package"
    created = sim.admin_create_volume(kind, "New App", datastore="ds1", size_mb=8)
    rc, report = cli(cfg, "snapshot")
    assert rc == 0
    new = [v for v in report["volumes"] if v["state"] == "new"]
    assert [v["name"] for v in new] == ["New App"], report["volumes"]
    assert created.id


def test_a_volume_being_provisioned_is_skipped_then_captured(site) -> None:
    sim, tmp, _ = site
    cfg = write_config(tmp, sim.url, extra_site='writables = "copy"')
    run_toolkit("--config", str(cfg), "init")
    office = next(v for v in sim.volumes() if v.name == "Office 2016")
    sim.admin_mark_provisioning(office.id)
    rc, report = cli(cfg, "snapshot")
    assert rc == 1
    assert by_name(report)["Office!20!2016.vmdk"]["state"] == "skipped"
    assert "provisioning" in by_name(report)["Office!20!2016.vmdk"]["reason"]
    sim.admin_finish_provisioning(office.id)
    rc, report = cli(cfg, "snapshot")
    assert rc == 0
    assert by_name(report)["Office!20!2016.vmdk"]["state"] == "new"


def test_an_attached_writable_is_copied_when_the_policy_says_so(site) -> None:
    sim, tmp, _ = site
    cfg = write_config(tmp, sim.url, extra_site='writables = "copy"')
    run_toolkit("--config", str(cfg), "init")
    sim.admin_attach(next(v for v in sim.volumes() if v.kind == "writable").id)
    rc, _ = cli(cfg, "snapshot")
    assert rc == 0
    doc = json.loads(next((tmp / "repo" / "snapshots").glob("*.json")).read_text())
    w = next(v for v in doc["volumes"] if v["kind"] == "writable")
    assert w["state"] == "new"
    assert w["consistency"].startswith("crash-inconsistent")


def test_manager_down_still_captures_and_exits_1(site) -> None:
    _, tmp, _ = site
    cfg = write_config(tmp, "http://127.0.0.1:9")
    run_toolkit("--config", str(cfg), "init")
    rc, report = cli(cfg, "snapshot")
    assert rc == 1
    assert any("App Volumes Manager unavailable" in w for w in report["warnings"])
    assert {v["state"] for v in report["volumes"]} == {"new"}


def test_a_volume_the_manager_lists_but_the_datastore_lacks_is_failed(site) -> None:
    sim, tmp, _ = site
    cfg = write_config(tmp, sim.url, extra_site='writables = "copy"')
    run_toolkit("--config", str(cfg), "init")
    office = next(v for v in sim.volumes() if v.name == "Office 2016")
    for p in office.paths:
        if p.exists():
            p.unlink()
    for p in (tmp / "ds1").rglob("Office!20!2016*"):
        p.unlink()
    rc, report = cli(cfg, "snapshot")
    assert rc == 1
    failed = by_name(report)["Office!20!2016.vmdk"]
    assert failed["state"] == "failed"
    assert "the file is not there" in failed["reason"]


def test_an_unreachable_datastore_does_not_mark_its_volumes_deleted(site) -> None:
    sim, tmp, _ = site
    extra = f'[sites.dc1.datastores.ds2]\ntransport = "local"\npath = "{tmp / "ds2"}"\n'
    make_volume(tmp / "ds2", "cloudvolumes/apps/Other.vmdk", size_mib=4, seed=3, real=False)
    cfg = write_config(tmp, sim.url, extra_site='writables = "copy"', datastores=extra)
    run_toolkit("--config", str(cfg), "init")
    assert cli(cfg, "snapshot")[0] == 0
    (tmp / "ds2").rename(tmp / "ds2-offline")
    rc, report = cli(cfg, "snapshot")
    assert rc == 1
    assert any("ds2 could not be listed" in w for w in report["warnings"])
    assert "deleted" not in {v["state"] for v in report["volumes"]}
    (tmp / "ds2-offline").rename(tmp / "ds2")
    rc, report = cli(cfg, "snapshot")
    assert rc == 0
    assert by_name(report)["Other.vmdk"]["state"] == "unchanged"


def test_an_inline_password_needs_a_private_config_file(site) -> None:
    sim, tmp, _ = site
    cfg = write_config(tmp, sim.url, mode=0o644)
    cfg.write_text(cfg.read_text().replace('password_env = "TEST_AVM_PASSWORD"', 'password = "admin"'))
    proc = run_toolkit("--config", str(cfg), "snapshot")
    assert proc.returncode == 2
    assert "chmod 600" in proc.stderr
    assert "admin" not in proc.stderr.replace("--config", "")


def test_config_init_writes_a_private_template_that_loads(tmp_path: Path) -> None:
    target = tmp_path / "cfg" / "config.toml"
    proc = run_toolkit("config", "init", str(target))
    assert proc.returncode == 0, proc.stderr
    assert target.stat().st_mode & 0o777 == 0o600
    from toolkit.config import load_config

    config = load_config(target)
    assert config is not None
    assert [s.name for s in config.sites] == ["dc1"]
    assert run_toolkit("config", "init", str(target)).returncode == 2  # never overwritten silently


@pytest.mark.parametrize(
    ("extra", "where", "key"),
    [
        ('[sites.s]\nwriteables = "copy"\n', "[sites.s]", "writeables"),
        ('[sites.s.manager]\nurl = "https://avm"\nuser = "u"\npasword_env = "P"\n', "[sites.s].manager", "pasword_env"),
        ('[sites.s.vcenter]\nurl = "https://vc"\nuser = "u"\npassword_env = "P"\ndatacentre = "D"\n', "", "datacentre"),
        ('[sites.s.datastores.ds2]\npath = "/mnt/ds2"\nhost = "esx1"\n', "[sites.s.datastores.ds2]", "host"),
        (
            '[sites.s.datastores.ds2]\ntransport = "sftp"\nhost = "esx1"\nkeyfile = "~/.ssh/id"\n',
            "[sites.s.datastores.ds2]",
            "keyfile",
        ),
    ],
)
def test_a_misspelt_key_is_refused_not_ignored(tmp_path: Path, extra: str, where: str, key: str) -> None:
    from toolkit.config import ConfigError, load_config

    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[sites.s.datastores.ds1]\npath = "{tmp_path}"\n{extra}')
    cfg.chmod(0o600)
    with pytest.raises(ConfigError) as info:
        load_config(cfg)
    assert key in str(info.value) and where in str(info.value) and "known:" in str(info.value)
    proc = run_toolkit("--config", str(cfg), "--repo", str(tmp_path / "r"), "snapshot")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ") and key in proc.stderr.splitlines()[0]


def test_a_missing_config_is_a_clear_error(tmp_path: Path) -> None:
    proc = run_toolkit("--config", str(tmp_path / "none.toml"), "--repo", str(tmp_path / "r"), "snapshot")
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert os.environ.get("TOOLKIT_CONFIG") is None


def test_an_empty_mount_point_is_not_taken_for_mass_deletion(tmp_path: Path) -> None:
    root = tmp_path / "ds1"
    make_volume(root, "cloudvolumes/apps/App.vmdk", size_mib=4, seed=1, real=False)
    tk = Toolkit(tmp_path / "repo")
    tk("init")
    assert tk("snapshot", str(root)).exit_code == 0
    for p in list(root.rglob("*")):
        if p.is_file():
            p.unlink()
    r = tk("--json", "snapshot", str(root))
    assert r.exit_code == 1
    report = json.loads(r.stdout)
    assert "is it mounted?" in report["warnings"][0]
    assert report["volumes"] == []

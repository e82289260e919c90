"""verify --drill --to DEST [--register]: drills on a configured datastore, imported into the manager and removed."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from catalog.repo import Repository
from toolkit.avm import AvmClient, AvmJobsTimeout
from toolkit.lab.avm_sim import AvmSimulator
from toolkit.lab.corpus import make_datastore
from toolkit.ops.drill import DrillTarget, drill
from toolkit.transports.local import LocalTransport

from ..conftest import run_toolkit
from ..toolkit.test_discovery import FOLDERS, write_config

pytestmark = pytest.mark.lab


def files_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def cli(cfg: Path, *args: str) -> tuple[int, dict, str]:
    proc = run_toolkit("--config", str(cfg), "--json", *args, env={"TEST_AVM_PASSWORD": "admin"})
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, (json.loads(proc.stdout) if proc.stdout.strip() else {}), proc.stderr


@pytest.fixture(params=["2.x", "4.x"])
def site(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[AvmSimulator, Path, Path]]:
    flavour = request.param
    ds1 = tmp_path / "ds1"
    make_datastore(ds1, flavour=flavour, count=2, size_mib=6, real=False)
    with AvmSimulator({"ds1": ds1}, flavour=flavour, job_delay_s=0.01) as sim:
        for folder in FOLDERS[flavour]:
            sim.import_folder_now("ds1", folder)
        cfg = write_config(tmp_path, sim.url, extra_site='writables = "copy"')
        assert cli(cfg, "init")[0] == 0
        assert cli(cfg, "snapshot")[0] == 0
        yield sim, ds1, cfg


def test_a_drill_imports_each_copy_under_a_drill_name_and_removes_it(site) -> None:
    sim, ds1, cfg = site
    before_files = files_of(ds1)
    before = {v.name: (v.id, v.guid, v.status) for v in sim.volumes()}

    rc, report, err = cli(cfg, "verify", "--drill", "--all", "--to", "dc1/ds1", "--register")
    assert rc == 0, (err, report)
    results = report["results"]
    assert len(results) == 3  # two app volumes and a writable
    for r in results:
        assert r["ok"], r
        folder, name = r["drilled_as"].rsplit("/", 1)
        assert folder.rsplit("/", 1)[-1].startswith("toolkit-drill-")
        assert name.startswith("drill-") and name.endswith(".vmdk")
        imported = next(c for c in r["checks"] if c.startswith("imported into the manager as 'drill-"))
        assert "enabled" in imported
        assert "deleted from the manager again" in r["checks"]
        assert any(c.startswith("extent ") for c in r["checks"])
    # Nothing of the drills is left: not in the manager, not on the datastore; the live volumes are as they were.
    assert {v.name: (v.id, v.guid, v.status) for v in sim.volumes()} == before
    assert files_of(ds1) == before_files
    assert not list(ds1.rglob("toolkit-drill-*"))
    rc, runs, _ = cli(cfg, "verify", "--history")
    assert runs["runs"][0]["level"] == "drill" and runs["runs"][0]["ok"]


class JobsTimeOutOnce:
    """The lab manager, whose first wait for jobs times out (as a busy manager's might)."""

    def __init__(self, client: AvmClient) -> None:
        self.client = client
        self.timeouts = 0

    def import_folder(self, datastore: str, path: str, datacenter: str = "") -> None:
        self.client.import_folder(datastore, path, datacenter)

    def wait_jobs(self, timeout_s: float = 300.0) -> None:
        if not self.timeouts:
            self.timeouts += 1
            raise AvmJobsTimeout(pending=1, timeout_s=timeout_s)
        self.client.wait_jobs(timeout_s)

    def inventory(self) -> list:
        return self.client.inventory()

    def delete_volume(self, volume) -> str | None:
        return self.client.delete_volume(volume)


def test_a_failed_drill_still_removes_its_copy_from_the_manager_and_the_datastore(site, tmp_path: Path) -> None:
    sim, ds1, _cfg = site
    before_files = files_of(ds1)
    before = {v.name for v in sim.volumes()}
    repo = Repository.open(tmp_path / "repo", readonly=True)
    try:
        key = next(v.volume_key for v in repo.index.all_versions() if v.name == "Office 2016")
        manager = JobsTimeOutOnce(AvmClient(sim.url, "admin", "admin"))
        [result] = drill(
            repo, datetime.now(UTC).isoformat(), [key], target=DrillTarget(LocalTransport(ds1), manager, "ds1")
        )
    finally:
        repo.close()
    assert not result.ok
    assert result.problems[0].startswith("App Volumes Manager still has 1 pending job(s)")
    assert "deleted from the manager again" in result.checks  # the import went ahead; the clean-up found it
    assert {v.name for v in sim.volumes()} == before
    assert files_of(ds1) == before_files


def test_drill_options_are_checked(site) -> None:
    _sim, _ds1, cfg = site
    for args, message in (
        (("--to", "dc1/ds1"), "--to and --register go with --drill"),
        (("--drill", "--register"), "--register needs --to a configured datastore"),
        (("--drill", "--to", "dc1/ds1", "--scratch", "/tmp"), "use one of --scratch and --to"),
    ):
        rc, _, err = cli(cfg, "verify", *args)
        assert rc == 2 and message in err, (args, err)


def test_register_needs_a_manager(tmp_path: Path) -> None:
    ds1 = tmp_path / "ds1"
    make_datastore(ds1, flavour="2.x", count=1, size_mib=4, real=False)
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        f'repository = "{tmp_path / "repo"}"\n[sites.dc1.datastores.ds1]\ntransport = "local"\npath = "{ds1}"\n'
    )
    cfg.chmod(0o600)
    assert cli(cfg, "init")[0] == 0
    assert cli(cfg, "snapshot")[0] == 0
    rc, report, err = cli(cfg, "verify", "--drill", "--to", "dc1/ds1", "--register")
    assert rc == 2 and report["code"] == "no_manager", err


def test_a_drill_over_sftp_restores_on_the_host_and_cleans_up(sshd_server, tmp_path: Path) -> None:
    ds = Path(sshd_server.remote_path("datastore1"))
    make_datastore(ds, flavour="4.x", count=2, size_mib=6, real=False)
    before_files = files_of(ds)
    with AvmSimulator({"datastore1": ds}, flavour="4.x", job_delay_s=0.01) as sim:
        for folder in FOLDERS["4.x"]:
            sim.import_folder_now("datastore1", folder)
        before = {v.name: (v.id, v.guid) for v in sim.volumes()}
        cfg = tmp_path / "config.toml"
        cfg.write_text(
            f"""repository = "{tmp_path / "repo"}"
[sites.dc1.manager]
url = "{sim.url}"
user = "admin"
password_env = "TEST_AVM_PASSWORD"

[sites.dc1.datastores.datastore1]
transport = "sftp"
host = "{sshd_server.host}"
port = {sshd_server.port}
user = "{sshd_server.username}"
key_file = "{sshd_server.client_key_path}"
known_hosts = "{sshd_server.known_hosts_path}"
path = "{sshd_server.remote_path("datastore1")}"
"""
        )
        cfg.chmod(0o600)
        assert cli(cfg, "init")[0] == 0
        assert cli(cfg, "snapshot")[0] == 0
        rc, report, err = cli(cfg, "verify", "--drill", "--volume", "*Office*", "--to", "dc1/datastore1", "--register")
        assert rc == 0, (err, report)
        [r] = report["results"]
        assert r["checks"][0].startswith("restored on sftp://") and "each file with its digest" in r["checks"][0]
        assert any(c.startswith("imported into the manager as 'drill-Office 2016-") for c in r["checks"])
        assert "deleted from the manager again" in r["checks"]
        assert any("qemu-img check not run" in n for n in r["notes"])
        assert {v.name: (v.id, v.guid) for v in sim.volumes()} == before
    assert files_of(ds) == before_files  # every drilled file is gone from the host
    left = [p for p in ds.rglob("toolkit-drill-*")]
    assert all(p.is_dir() and not any(p.iterdir()) for p in left)
    assert bool(left) == any("empty folder" in n for n in r["notes"])


def test_a_drill_into_a_directory_leaves_nothing_of_it(site, tmp_path: Path) -> None:
    _sim, _ds1, cfg = site
    where = tmp_path / "drills"
    (where / "keep").mkdir(parents=True)
    (where / "keep" / "note.txt").write_text("not the drill's")
    rc, report, err = cli(cfg, "verify", "--drill", "--sample", "2", "--to", str(where))
    assert rc == 0, (err, report)
    assert len(report["results"]) == 2
    for r in report["results"]:
        assert r["ok"], r
        assert not any(c.startswith("imported") for c in r["checks"])  # no --register: the manager is not asked
        if shutil.which("qemu-img"):
            assert {"qemu-img check passes", "qemu-img opens it"} & set(r["checks"]), r["checks"]
    assert files_of(where) == {"keep/note.txt": b"not the drill's"}
    assert not list(where.rglob("toolkit-drill-*"))

"""toolkit status: the age of every volume's last good capture, what failed, what the repository holds."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from catalog.repo import Repository
from toolkit.avm import AvmVolume
from toolkit.config import Config, load_config
from toolkit.lab.corpus import VolumeFiles, make_volume
from toolkit.ops.snapshot import Source
from toolkit.ops.snapshot import snapshot as snapshot_job
from toolkit.ops.status import StatusReport, render_status_text, status
from toolkit.transports.local import LocalTransport

from ..conftest import Toolkit

OFFICE = "cloudvolumes/apps/Office!20!2016.vmdk"
VISIO = "cloudvolumes/apps/Visio.vmdk"
WRITABLE = "cloudvolumes/writable/CORP!5C!jdoe.vmdk"


@pytest.fixture
def ds1(tmp_path: Path) -> Path:
    return tmp_path / "ds1"


@pytest.fixture
def two(toolkit: Toolkit, ds1: Path) -> dict[str, VolumeFiles]:
    """A repository with one clean snapshot of two AppStacks on ds1."""
    vols = {
        OFFICE: make_volume(ds1, OFFICE, size_mib=4, seed=1, real=False),
        VISIO: make_volume(ds1, VISIO, size_mib=4, seed=2, real=False),
    }
    assert toolkit("init").exit_code == 0
    assert toolkit("snapshot", str(ds1)).exit_code == 0
    return vols


@contextmanager
def opened(toolkit: Toolkit) -> Iterator[Repository]:
    repo = Repository.open(toolkit.repo, readonly=True)
    try:
        yield repo
    finally:
        repo.close()


def check(toolkit: Toolkit, *, hours: float = 0.0, max_age: float = 26.0, config: Config | None = None) -> StatusReport:
    with opened(toolkit) as repo:
        report = status(repo, config, datetime.now(UTC) + timedelta(hours=hours), max_age)
    json.dumps(report.to_json())  # always serialisable
    render_status_text(report)
    return report


def by_key(report: StatusReport) -> dict[str, dict]:
    return {v.key: v.to_json() for v in report.volumes()}


def write_config(tmp_path: Path, body: str) -> Config:
    path = tmp_path / "toolkit.toml"
    path.write_text(body)
    path.chmod(0o600)
    config = load_config(path)
    assert config is not None
    return config


def test_fresh_captures_are_ok_and_sizes_match_the_catalog(toolkit: Toolkit, two: dict) -> None:
    report = check(toolkit)
    assert report.ok and report.exit_code == 0
    assert report.problems == []
    [store] = report.datastores
    assert store.datastore == "ds1" and store.counts()["ok"] == 2
    assert {v.condition for v in store.volumes} == {"ok"}
    assert all(v.age_hours is not None and v.age_hours < 1 for v in store.volumes)
    listed = toolkit.json("volumes")
    assert report.storage.pack_bytes == listed["pack_bytes"] > 0
    assert report.storage.logical_bytes == listed["logical_bytes"]
    assert report.storage.dedup_ratio == pytest.approx(listed["logical_bytes"] / listed["pack_bytes"])
    with opened(toolkit) as repo:
        assert (report.storage.pack_bytes, report.storage.stored_bytes, report.storage.raw_bytes) == (
            repo.index.stored_totals()
        )
    assert report.storage.protected_bytes == sum(v["size"] for v in listed["volumes"])
    assert report.storage.added_bytes == report.storage.pack_bytes  # one snapshot, this week
    assert report.snapshot_count == 1
    text = render_status_text(report)
    assert "ok: every volume captured within 26 h" in text
    assert "DATASTORE" in text and "ds1" in text


def test_an_old_capture_is_a_problem(toolkit: Toolkit, two: dict) -> None:
    assert check(toolkit, hours=25).ok
    late = check(toolkit, hours=30)
    assert late.exit_code == 1
    assert {v.condition for v in late.volumes()} == {"stale"}
    # One line for the datastore, not one per volume.
    assert len(late.problems) == 1
    assert "datastore ds1" in late.problems[0] and "more than 26 h" in late.problems[0]
    assert check(toolkit, hours=30, max_age=48).ok


def test_a_failed_volume_is_a_problem_and_keeps_its_last_good_capture(
    toolkit: Toolkit, two: dict[str, VolumeFiles]
) -> None:
    first = check(toolkit)
    good_at = by_key(first)[f"ds1/{OFFICE}"]["last_good_at"]
    two[OFFICE].flat.unlink()  # the descriptor stays, its extent is gone
    assert toolkit("snapshot", str(two[OFFICE].descriptor.parents[2])).exit_code == 1
    report = check(toolkit)
    assert report.exit_code == 1
    office = by_key(report)[f"ds1/{OFFICE}"]
    assert office["condition"] == "failed"
    assert office["state"] == "failed" and "missing" in office["reason"]
    assert office["last_good_at"] == good_at
    assert by_key(report)[f"ds1/{VISIO}"]["condition"] == "ok"
    [problem] = report.problems
    assert problem.startswith(f"ds1/{OFFICE}: failed") and "last good capture" in problem
    assert "failed" in render_status_text(report)


def test_a_volume_never_captured(toolkit: Toolkit, ds1: Path) -> None:
    broken = make_volume(ds1, OFFICE, size_mib=4, seed=1, real=False)
    broken.flat.unlink()
    toolkit("init")
    assert toolkit("snapshot", str(ds1)).exit_code == 1
    report = check(toolkit)
    office = by_key(report)[f"ds1/{OFFICE}"]
    assert office["condition"] == "never captured"
    assert office["last_good_at"] is None and office["age_hours"] is None
    assert report.problems == [f"ds1/{OFFICE}: never captured; failed in the newest snapshot: {office['reason']}"]


def test_a_deleted_volume_is_listed_with_how_to_restore_it(
    toolkit: Toolkit, two: dict[str, VolumeFiles], tmp_path: Path
) -> None:
    for f in two[VISIO].files:
        f.unlink()
    assert toolkit("snapshot", str(tmp_path / "ds1")).exit_code == 0
    report = check(toolkit)
    assert report.ok  # a deletion is not a failure of the backup
    visio = by_key(report)[f"ds1/{VISIO}"]
    assert visio["condition"] == "deleted"
    assert report.datastores[0].counts()["deleted"] == 1
    [warning] = report.warnings[:1]
    snap = visio["last_good_snapshot"][:12]
    assert f"ds1/{VISIO}: deleted" in warning and f"--as-of {snap}" in warning
    # The warning's advice works.
    out = tmp_path / "out"
    r = toolkit("restore", "--as-of", snap, "--volume", "Visio", "--to", str(out))
    assert r.exit_code == 0, r.stderr
    assert (out / VISIO).exists()
    # A deletion older than a week leaves the text table but stays in the JSON.
    later = check(toolkit, hours=24 * 8, max_age=24 * 9)
    assert by_key(later)[f"ds1/{VISIO}"]["condition"] == "deleted"
    assert VISIO not in render_status_text(later)


def test_manager_listed_volumes_missing_skipped_and_never_captured(toolkit: Toolkit, ds1: Path) -> None:
    make_volume(ds1, OFFICE, size_mib=4, seed=1, real=False)
    make_volume(ds1, WRITABLE, size_mib=4, seed=3, kind="writable", real=False)
    toolkit("init")

    def record(ident: int, relpath: str, kind: str, *, attached: bool = False) -> AvmVolume:
        folder, _, filename = relpath.rpartition("/")
        return AvmVolume(ident, kind, filename, f"guid-{ident}", "enabled", "ds1", folder, filename, attached)

    def run(writable_attached: bool) -> None:
        managed = {
            OFFICE: record(1, OFFICE, "appstack"),
            WRITABLE: record(2, WRITABLE, "writable", attached=writable_attached),
            VISIO: record(3, VISIO, "appstack"),  # the manager lists it; the file is not there
        }
        repo = Repository.open(toolkit.repo)
        try:
            with repo.writing("snapshot"):
                snapshot_job(repo, [Source("ds1", LocalTransport(ds1), site="dc1", managed=managed)])
        finally:
            repo.close()

    run(writable_attached=True)
    report = check(toolkit)
    vols = by_key(report)
    assert vols[f"ds1/{OFFICE}"]["condition"] == "ok" and vols[f"ds1/{OFFICE}"]["managed"] is True
    assert vols[f"ds1/{VISIO}"]["condition"] == "never captured"
    assert "the manager lists it" in vols[f"ds1/{VISIO}"]["reason"]
    assert vols[f"ds1/{WRITABLE}"]["condition"] == "never captured"  # skipped every time so far
    assert report.datastores[0].site == "dc1"
    assert len(report.problems) == 2

    run(writable_attached=False)  # captured once
    run(writable_attached=True)  # skipped again: a recent capture exists, so only a warning
    report = check(toolkit)
    writable = by_key(report)[f"ds1/{WRITABLE}"]
    assert writable["condition"] == "skipped" and writable["last_good_at"] is not None
    assert any(w.startswith(f"ds1/{WRITABLE}: skipped") for w in report.warnings)
    assert [p for p in report.problems if WRITABLE in p] == []
    # …until that capture is too old.
    late = check(toolkit, hours=30)
    assert by_key(late)[f"ds1/{WRITABLE}"]["condition"] == "stale"


def test_a_datastore_that_could_not_be_listed(toolkit: Toolkit, two: dict, ds1: Path) -> None:
    shutil.rmtree(ds1 / "cloudvolumes")  # looks exactly like an unmounted mount point
    assert toolkit("snapshot", str(ds1)).exit_code == 1
    report = check(toolkit)
    assert report.exit_code == 1
    assert any("could not be listed" in p for p in report.problems)
    # The volumes are not taken for deleted; they age from their last capture.
    assert {v.condition for v in report.volumes()} == {"ok"}
    assert {v.condition for v in check(toolkit, hours=30).volumes()} == {"stale"}


def test_configured_datastores_and_sites(toolkit: Toolkit, two: dict, tmp_path: Path) -> None:
    old = tmp_path / "old"
    make_volume(old, VISIO, size_mib=4, seed=9, real=False)
    assert toolkit("snapshot", str(old)).exit_code == 0
    config = write_config(
        tmp_path,
        f"""
repository = "{toolkit.repo}"
[sites.dc1.datastores.ds1]
path = "{tmp_path / "ds1"}"
[sites.dc1.datastores.ds9]
path = "{tmp_path / "ds9"}"
""",
    )
    report = check(toolkit, config=config)
    stores = {d.datastore: d for d in report.datastores}
    assert set(stores) == {"ds1", "ds9", "old"}
    assert stores["ds1"].site == "dc1" and stores["ds1"].configured is True
    assert stores["old"].configured is False
    assert report.problems == ["datastore ds9 (site dc1) is configured but has never been captured"]
    assert any("datastore old is not in the configuration" in w for w in report.warnings)
    # A datastore no longer configured is not held to the age limit.
    late = check(toolkit, hours=30, config=config)
    assert not [p for p in late.problems if "old" in p]
    assert "(not configured)" in render_status_text(late)


def test_a_site_whose_manager_records_are_missing(toolkit: Toolkit, two: dict, tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        f"""
[sites.dc1.manager]
url = "https://avm.example.com"
user = "admin"
password_env = "UNUSED"
[sites.dc1.datastores.ds1]
path = "{tmp_path / "ds1"}"
""",
    )
    report = check(toolkit, config=config)  # ds1 was captured as a plain directory
    [problem] = report.problems
    assert "no App Volumes Manager records" in problem


def test_verify_runs_and_data_coverage(toolkit: Toolkit, two: dict) -> None:
    report = check(toolkit)
    assert report.verify.latest == ()
    assert any("no data verification" in w for w in report.warnings)
    assert report.ok  # a warning only
    assert toolkit("verify", "--read-data").exit_code == 0
    report = check(toolkit)
    assert [(r.level, r.ok) for r in report.verify.latest] == [("data", True)]
    assert report.verify.packs_read == report.verify.packs_total > 1
    assert report.verify.bytes_read == report.verify.bytes_total == report.storage.pack_bytes
    assert not any("no data verification" in w for w in report.warnings)
    assert "verify: data" in render_status_text(report)
    assert any("no data verification" in w for w in check(toolkit, hours=24 * 9, max_age=24 * 10).warnings)

    with opened(toolkit) as repo:
        pack_id = repo.index.packs()[0][0]
    pack = toolkit.repo / "packs" / pack_id[:2] / pack_id
    data = bytearray(pack.read_bytes())
    data[len(data) // 2] ^= 0xFF
    pack.write_bytes(bytes(data))
    assert toolkit("verify", "--read-data").exit_code == 1
    report = check(toolkit)
    assert report.exit_code == 1
    assert any("newest verify at level data" in p and "problem(s)" in p for p in report.problems)


def test_an_empty_repository(toolkit: Toolkit) -> None:
    toolkit("init")
    report = check(toolkit)
    assert report.exit_code == 1
    assert report.problems == ["no snapshot yet: run toolkit snapshot"]
    assert "no snapshot yet" in render_status_text(report)


def test_the_cli_command(toolkit: Toolkit, two: dict) -> None:
    from toolkit.cli import cli

    if "status" not in cli.commands:
        pytest.skip("toolkit status is not wired into toolkit/cli.py yet")
    r = toolkit("status")
    assert r.exit_code == 0, r.stdout + r.stderr
    assert "ok: every volume captured" in r.stdout
    data = toolkit.json("status")
    assert data["ok"] is True and data["exit_code"] == 0
    assert data["datastores"][0]["counts"]["ok"] == 2
    r = toolkit("status", "--max-age-hours", "0.000000001")
    assert r.exit_code == 1
    assert "problem:" in r.stdout

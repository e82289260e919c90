"""``--repo s3://bucket/prefix`` through the command line, against moto's real S3 server on loopback.

The whole story of a repository in object storage: init, snapshot, every verify level, a
bit-for-bit restore, a cache that is lost or damaged, two hosts (two cache directories) on
one bucket, a writer killed at each point of the commit order, Object Lock holding packs
and documents back from prune, and a lock held elsewhere.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from catalog.errors import Locked, StoreExists, StoreNotFound
from catalog.keys import NotEncrypted
from catalog.prune import ReadersActive
from toolkit.lab.corpus import make_volume
from toolkit.lab.s3 import MotoS3Server
from toolkit.objstore import (
    BucketNotFound,
    LockMode,
    ObjectLockNotEnabled,
    ObjectNotFound,
    ObjectStore,
    ObjectStoreUrlInvalid,
    Retention,
    make_client,
)
from toolkit.s3repo import RemoteUnsupported

from ..conftest import Toolkit
from .test_crash import CRASH_DRIVER

pytestmark = [pytest.mark.lab, pytest.mark.timeout(600)]

APPS = "cloudvolumes/apps"
NAMES = ("Visio", "Project", "Access")
VOLUME_MIB = 4


def tree_sha256(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@dataclass
class Lab:
    """A datastore, an s3:// repository, and what each committed snapshot must restore to."""

    tmp: Path
    bucket: str
    toolkit: Toolkit
    rng: random.Random = field(default_factory=lambda: random.Random(20261126))
    expected: dict[str, dict[str, str]] = field(default_factory=dict)  # snapshot id -> file -> sha256

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/dc1"

    @property
    def ds(self) -> Path:
        return self.tmp / "ds1"

    def store(self) -> ObjectStore:
        return ObjectStore(make_client(), self.bucket, "dc1")

    def objects(self, prefix: str = "") -> set[str]:
        return {o.key for o in self.store().list(prefix)}

    def documents(self) -> set[str]:
        return {k.removeprefix("snapshots/").removesuffix(".json") for k in self.objects("snapshots/")}

    def cache_roots(self, cache: Path | None = None) -> list[Path]:
        return sorted(((cache or self.tmp / "xdg-cache" / "appstack-toolkit") / "s3").glob("*-*"))

    def mutate(self) -> None:
        """New bytes at unaligned offsets of every volume, and one volume rewritten whole."""
        for i, name in enumerate(NAMES):
            flat = self.ds / f"{APPS}/{name}-flat.vmdk"
            before = flat.stat().st_mtime_ns
            if i == 0:
                flat.write_bytes(self.rng.randbytes(flat.stat().st_size))
            else:
                with flat.open("r+b") as f:
                    for _ in range(6):
                        f.seek(self.rng.randrange(0, VOLUME_MIB * (1 << 20) - 200_000))
                        f.write(self.rng.randbytes(self.rng.randrange(20_000, 200_000)))
            os.utime(flat, ns=(before + 10**9, before + 10**9))

    def snapshot(self, *extra: str) -> str:
        r = self.toolkit(*extra, "snapshot", str(self.ds), json_out=True)
        assert r.exit_code == 0, r.stdout + r.stderr
        snap_id: str = json.loads(r.stdout)["snapshot"]
        self.expected[snap_id] = tree_sha256(self.ds)
        return snap_id

    def listed(self, *extra: str) -> set[str]:
        return {s["id"] for s in self.toolkit.json(*extra, "snapshots")["snapshots"]}

    def assert_restores(self, snap_id: str, *extra: str) -> None:
        out = self.tmp / "restore-check"
        shutil.rmtree(out, ignore_errors=True)
        r = self.toolkit(*extra, "restore", "--as-of", snap_id, "--to", str(out))
        assert r.exit_code == 0, f"snapshot {snap_id[:12]}: {r.stdout}{r.stderr}"
        assert tree_sha256(out) == self.expected[snap_id], f"snapshot {snap_id[:12]} restores other bytes"
        shutil.rmtree(out)

    def verify_ok(self, *args: str) -> dict:
        r = self.toolkit("verify", *args, json_out=True)
        assert r.exit_code == 0, r.stdout + r.stderr
        return json.loads(r.stdout)


def make_lab(tmp: Path, bucket: str, *init_args: str) -> Lab:
    lab = Lab(tmp, bucket, Toolkit(f"s3://{bucket}/dc1"))  # type: ignore[arg-type]
    for i, name in enumerate(NAMES):
        make_volume(lab.ds, f"{APPS}/{name}.vmdk", size_mib=VOLUME_MIB, seed=i, real=False)
    r = lab.toolkit("init", "--chunk-size", "64K", *init_args)
    assert r.exit_code == 0, r.stdout + r.stderr
    return lab


@pytest.fixture
def lab(s3_env: dict[str, str], s3_bucket: str, tmp_path: Path) -> Lab:
    return make_lab(tmp_path, s3_bucket)


# -- the whole story ------------------------------------------------------------------------------------------


def test_init_snapshot_verify_every_level_and_restore_bit_for_bit(lab: Lab) -> None:
    first = lab.snapshot()
    assert {"config", f"snapshots/{first}.json"} <= lab.objects()
    assert not lab.objects("locks/"), "the writer lock and reader announcements are gone after the run"
    lab.mutate()
    second = lab.snapshot()
    assert lab.listed() == {first, second}

    metadata = lab.verify_ok()
    assert metadata["level"] == "metadata" and metadata["packs_read"] == 0
    data = lab.verify_ok("--read-data")
    assert data["level"] == "data" and data["packs_read"] == data["packs_total"] == len(lab.objects("packs/"))
    assert lab.verify_ok("--read-data-subset", "50")["level"] == "data-subset"
    assert lab.verify_ok("--volume", "Visio*")["ok"]
    volumes = lab.toolkit.json("volumes")["volumes"]
    assert {v["name"] for v in volumes} == set(NAMES)
    status = lab.toolkit.json("status")
    assert status["repository"] == lab.url

    lab.assert_restores(first)
    lab.assert_restores(second)
    assert not lab.objects("locks/")


def test_verify_reads_the_stored_copy_not_the_cached_one(lab: Lab) -> None:
    snap_id = lab.snapshot()
    lab.assert_restores(snap_id)  # every pack now sits whole in the cache
    store = lab.store()
    key = max(lab.objects("packs/"), key=lambda k: store.head(k).size)  # type: ignore[union-attr]
    data = bytearray(store.get_bytes(key))
    data[len(data) // 3] ^= 0xFF  # the bucket's copy is damaged; the cached one is sound
    store.put_bytes(key, bytes(data))
    assert lab.verify_ok()["ok"], "the metadata level reads no pack"
    r = lab.toolkit("verify", "--read-data", json_out=True)
    assert r.exit_code == 1, r.stdout + r.stderr
    problems = json.loads(r.stdout)["problems"]
    pack_id = key.rsplit("/", 1)[1]
    assert any(p["pack_id"] == pack_id for p in problems)
    assert any(a["volume"] for p in problems for a in p["affected"]), "the damage names the volumes it affects"


def test_a_lost_or_damaged_cache_catalog_is_rebuilt_from_the_bucket(lab: Lab) -> None:
    first = lab.snapshot()
    lab.mutate()
    second = lab.snapshot()
    (root,) = lab.cache_roots()
    for p in root.glob("catalog.db*"):
        p.unlink()
    shutil.rmtree(root / "packs")
    (root / "packs").mkdir()
    assert lab.listed() == {first, second}
    lab.assert_restores(first)

    (root / "catalog.db").write_bytes(b"\x00garbage" * 1000)
    for suffix in ("-wal", "-shm"):
        Path(f"{root / 'catalog.db'}{suffix}").unlink(missing_ok=True)
    assert lab.listed() == {first, second}
    lab.assert_restores(second)

    rebuilt = lab.toolkit.json("repair", "--rebuild-catalog")
    assert (rebuilt["snapshots"], rebuilt["packs"]) == (2, len(lab.objects("packs/")))
    assert rebuilt["lost_chunks"] == 0
    r = lab.toolkit("repair")
    assert r.exit_code == RemoteUnsupported.exit_code and "repair --salvage" in r.stderr
    lab.verify_ok("--read-data")


def test_a_pack_lost_from_the_bucket_is_reported_and_the_next_snapshot_stores_it_again(lab: Lab) -> None:
    snap_id = lab.snapshot()
    store = lab.store()
    key = max(lab.objects("packs/"), key=lambda k: store.head(k).size)  # type: ignore[union-attr]
    store.delete(key)
    r = lab.toolkit("verify", json_out=True)
    assert r.exit_code == 1, r.stdout + r.stderr
    assert any(a["volume"] for p in json.loads(r.stdout)["problems"] for a in p["affected"])
    assert lab.toolkit.json("repair", "--rebuild-catalog")["lost_chunks"] > 0
    healed = lab.snapshot()  # nothing changed on the datastore, but the volumes needing lost chunks are read
    lab.verify_ok("--read-data")
    lab.expected[snap_id] = lab.expected[healed]
    lab.assert_restores(snap_id)  # the old version is whole again: its chunks are stored again
    lab.assert_restores(healed)


def test_two_caches_of_one_bucket_see_each_others_snapshots(lab: Lab) -> None:
    host_a = ("--cache-dir", str(lab.tmp / "host-a"))
    host_b = ("--cache-dir", str(lab.tmp / "host-b"))
    first = lab.snapshot(*host_a)
    assert lab.listed(*host_b) == {first}
    lab.mutate()
    second = lab.snapshot(*host_b)
    assert lab.listed(*host_a) == {first, second}
    lab.assert_restores(second, *host_a)
    lab.assert_restores(first, *host_b)
    r = lab.toolkit(*host_a, "prune", "--keep-last", "1", json_out=True)
    assert r.exit_code == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["removed"] == [first]
    assert lab.listed(*host_b) == {second}, "a snapshot another host pruned is gone here too"
    lab.assert_restores(second, *host_b)
    r = lab.toolkit(*host_b, "verify", "--read-data")
    assert r.exit_code == 0, r.stdout + r.stderr
    assert len(lab.cache_roots(lab.tmp / "host-a")) == len(lab.cache_roots(lab.tmp / "host-b")) == 1


# -- locks -----------------------------------------------------------------------------------------------------


def put_lock(lab: Lab, **holder: object) -> None:
    info = {"owner": "backup", "pid": 4242, "host": "backup02", "command": "snapshot"}
    info |= {"since": datetime.now(UTC).isoformat()} | holder
    lab.store().put_bytes("locks/writer", json.dumps(info).encode())


def test_a_lock_held_elsewhere_exits_3_until_unlock_force(lab: Lab) -> None:
    lab.snapshot()
    put_lock(lab)
    for args in (("snapshot", str(lab.ds)), ("prune", "--keep-last", "1"), ("unlock",)):
        r = lab.toolkit(*args)
        assert r.exit_code == Locked.exit_code == 3, args
        assert "pid 4242 on backup02" in r.stderr
    assert lab.toolkit("verify").exit_code == 0, "readers take no lock"
    r = lab.toolkit("unlock", "--force")
    assert r.exit_code == 0 and "pid 4242 on backup02" in r.stdout
    lab.snapshot()


def test_a_stale_lock_of_this_host_is_removed_and_an_old_one_elsewhere_by_unlock_older_than(lab: Lab) -> None:
    put_lock(lab, host=socket.gethostname(), pid=2**22 + 4321)  # no such process here
    lab.snapshot()
    now = datetime.now(UTC)
    put_lock(lab, since=(now - timedelta(hours=30)).isoformat(), refreshed=now.isoformat())  # a long job, alive
    assert lab.toolkit("unlock", "--older-than", "48").exit_code == 3
    assert lab.toolkit("unlock", "--older-than", "24").exit_code == 0
    assert "locks/writer" not in lab.objects()


def put_reader(lab: Lab, since: timedelta, refreshed: timedelta | None) -> str:
    """A reader announcement as a restore on another host writes it, ``since`` and ``refreshed`` ago (None: as
    written before announcements were refreshed, without the field); its key."""
    now = datetime.now(UTC)
    info = {"owner": "backup", "pid": 4343, "host": "restore-host", "command": "restore", "token": ""}
    info["since"] = (now - since).isoformat()
    if refreshed is not None:
        info["refreshed"] = (now - refreshed).isoformat()
    key = f"locks/reader-{'7e' * 16}"
    lab.store().put_bytes(key, json.dumps(info).encode())
    return key


@pytest.mark.parametrize("field", ["refreshed", "since"])
def test_a_reader_elsewhere_blocks_prune_until_its_announcement_is_no_longer_refreshed(
    lab: Lab, field: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A restore on another host blocks prune while it refreshes its announcement; once that host died the
    announcement goes stale, and the next prune removes it, says whose it was, and runs. An announcement
    without ``refreshed`` (an older toolkit's) ages from ``since``."""
    first = lab.snapshot()
    lab.mutate()
    second = lab.snapshot()
    recent, old = timedelta(minutes=5), timedelta(minutes=50)  # the limit is 45 minutes
    age = {"refreshed": (timedelta(days=3), recent), "since": (recent, None)}[field]
    key = put_reader(lab, *age)
    r = lab.toolkit("prune", "--keep-last", "1")
    assert r.exit_code == ReadersActive.exit_code == 3, r.stdout + r.stderr
    assert "restore pid 4343 on restore-host" in r.stderr
    assert key in lab.objects("locks/") and lab.listed() == {first, second}

    age = {"refreshed": (timedelta(days=3), old), "since": (old, None)}[field]
    key = put_reader(lab, *age)
    caplog.set_level(logging.WARNING, logger="catalog.remote")
    r = lab.toolkit("prune", "--keep-last", "1", json_out=True)
    assert r.exit_code == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["removed"] == [first]
    assert not lab.objects("locks/"), "the stale announcement is removed, and prune's own are withdrawn"
    assert "removing the reader announcement of pid 4343 on restore-host (restore" in caplog.text
    lab.assert_restores(second)


def test_a_running_writer_holds_the_lock_against_this_host_too(lab: Lab) -> None:
    """A snapshot frozen with the lock taken: another writer exits 3; once it is killed, the lock is stale."""
    lab.snapshot()
    lab.mutate()
    cmd = driver(lab, "toolkit.s3repo:S3Remote.create_lock", "after", 1, "SIGSTOP", "snapshot", str(lab.ds))
    proc = subprocess.Popen(cmd, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until_stopped(proc)
        held = json.loads(lab.store().get_bytes("locks/writer"))
        assert held["pid"] == proc.pid
        r = lab.toolkit("--cache-dir", str(lab.tmp / "another"), "snapshot", str(lab.ds))
        assert r.exit_code == 3 and f"pid {proc.pid}" in r.stderr
    finally:
        proc.kill()
        proc.communicate(timeout=60)
    lab.snapshot()  # the killed holder's lock is stale on this host
    assert not lab.objects("locks/writer")


# -- kills ------------------------------------------------------------------------------------------------------


def driver(lab: Lab, target: str, when: str, nth: int, sig: str, *args: str) -> list[str]:
    return [sys.executable, "-c", CRASH_DRIVER, target, when, str(nth), sig, "--", "--repo", lab.url, "-q", *args]


def wait_until_stopped(proc: subprocess.Popen[str]) -> None:
    stat = Path(f"/proc/{proc.pid}/stat")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if stat.read_text().rsplit(")", 1)[1].split()[0] == "T":
            return
        time.sleep(0.01)
    pytest.fail("the process never reached its pause point")


S3_CRASH_POINTS = {
    # name: (function, before|after, n)
    "writer lock taken": ("toolkit.s3repo:S3Remote.create_lock", "after", 1),
    "pack sealed here, not uploaded": ("toolkit.s3repo:S3Remote.upload_pack", "before", 3),
    "pack uploaded, not indexed": ("catalog.index:Index.add_pack", "before", 3),
    "every pack uploaded, document not": ("toolkit.s3repo:S3Remote.put_document", "before", 1),
    "document put, catalog rows not": ("catalog.index:Index.add_snapshot", "before", 1),
}


def check_after_kill(lab: Lab, documents_before: set[str], state: dict[str, str]) -> None:
    """Committed snapshots restore before any writer runs; the next writer succeeds and owns what the kill left."""
    committed = set(lab.expected)
    new_documents = lab.documents() - documents_before
    assert len(new_documents) <= 1
    assert lab.listed() == committed | new_documents  # a reader indexes a document the killed run put
    for snap_id in sorted(committed):
        lab.assert_restores(snap_id)
    newest = lab.snapshot()
    assert lab.listed() == committed | new_documents | {newest}
    for snap_id in new_documents:
        lab.expected[snap_id] = state
        lab.assert_restores(snap_id)
    lab.assert_restores(newest)
    lab.verify_ok("--read-data")
    assert "locks/writer" not in lab.objects()


@pytest.mark.slow
@pytest.mark.parametrize("point", list(S3_CRASH_POINTS))
def test_kill_9_at_each_point_of_the_commit_order(lab: Lab, point: str) -> None:
    target, when, nth = S3_CRASH_POINTS[point]
    lab.snapshot()
    lab.mutate()
    lab.snapshot()
    lab.mutate()
    state = tree_sha256(lab.ds)
    documents_before = lab.documents()
    proc = subprocess.run(
        driver(lab, target, when, nth, "SIGKILL", "snapshot", str(lab.ds)),
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == -signal.SIGKILL, f"the crash point was not reached: {proc.stdout}{proc.stderr}"
    assert "locks/writer" in lab.objects(), "the killed writer held the lock"
    if point == "document put, catalog rows not":
        assert len(lab.documents() - documents_before) == 1
    else:
        assert lab.documents() == documents_before
    check_after_kill(lab, documents_before, state)

    r = lab.toolkit("prune", "--keep-last", "1", json_out=True)  # collects what the killed run left
    assert r.exit_code == 0, r.stdout + r.stderr
    assert not lab.objects("locks/"), "stale reader announcements of the killed process are removed"
    r = lab.toolkit("verify", "--read-data")
    assert r.exit_code == 0, r.stdout + r.stderr


def spawn_snapshot(lab: Lab) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "toolkit", "--repo", lab.url, "-q", "--json", "snapshot", str(lab.ds)],
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_lock(lab: Lab, proc: subprocess.Popen[str]) -> float:
    """When ``proc`` holds the writer lock in the bucket (monotonic time)."""
    store = lab.store()
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            if json.loads(store.get_bytes("locks/writer"))["pid"] == proc.pid:
                break
        except ObjectNotFound:
            pass
        time.sleep(0.01)
    return time.monotonic()


@pytest.mark.slow
def test_kill_9_during_snapshots_at_random_points(lab: Lab) -> None:
    lab.snapshot()
    lab.mutate()
    state = tree_sha256(lab.ds)
    calibration = spawn_snapshot(lab)  # how long a writer holds the lock: the span the kills are spread over
    held_at = wait_for_lock(lab, calibration)
    while "locks/writer" in lab.objects() and calibration.poll() is None:
        time.sleep(0.01)
    window_s = max(0.2, time.monotonic() - held_at)
    out, err = calibration.communicate(timeout=120)
    assert calibration.returncode == 0, out + err
    lab.expected[json.loads(out)["snapshot"]] = state

    rng = random.Random(20261126)
    killed = 0
    for _ in range(4):
        lab.mutate()
        state = tree_sha256(lab.ds)
        documents_before = lab.documents()
        proc = spawn_snapshot(lab)
        wait_for_lock(lab, proc)
        time.sleep(rng.uniform(0, window_s * 0.8))
        running = proc.poll() is None
        if running:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        out, err = proc.communicate(timeout=120)
        if not running:
            assert proc.returncode == 0, out + err
            snap_id = json.loads(out)["snapshot"]
            lab.expected[snap_id] = state
            documents_before.add(snap_id)
        else:
            assert proc.returncode == -signal.SIGKILL
        check_after_kill(lab, documents_before, state)
    assert killed >= 2, f"most runs must be killed while they run (window {window_s:.2f} s)"


# -- Object Lock -------------------------------------------------------------------------------------------------


@pytest.fixture
def locked_lab(s3_env: dict[str, str], s3_locked_bucket: str, tmp_path: Path) -> Lab:
    return make_lab(tmp_path, s3_locked_bucket, "--object-lock-days", "1")


def shorten_retention(lab: Lab, seconds: float) -> None:
    """Let time pass: moto (unlike AWS) lets a COMPLIANCE retention be shortened."""
    store = lab.store()
    until = datetime.now(UTC) + timedelta(seconds=seconds)
    for key in lab.objects():
        if store.retention(key) is not None:
            store.set_retention(key, Retention(LockMode.COMPLIANCE, until))
    time.sleep(seconds + 0.5)


def test_prune_leaves_objects_under_object_lock_reports_them_and_removes_them_once_free(locked_lab: Lab) -> None:
    lab = locked_lab
    first = lab.snapshot()
    store = lab.store()
    retention = store.retention(f"snapshots/{first}.json")
    assert retention is not None and retention.mode is LockMode.COMPLIANCE
    assert timedelta(hours=23) < retention.retain_until - datetime.now(UTC) <= timedelta(days=1)
    lab.mutate()
    second = lab.snapshot()
    packs_before = lab.objects("packs/")

    r = lab.toolkit("prune", "--keep-last", "1", json_out=True)
    assert r.exit_code == 0, r.stdout + r.stderr
    report = json.loads(r.stdout)
    assert report["removed"] == [first]
    locked = {(x["kind"], x["id"]): x["until"] for x in report["locked"]}
    assert ("snapshot", first) in locked
    locked_packs = {pid for kind, pid in locked if kind == "pack"}
    assert locked_packs, "the packs only the first snapshot used are kept, not deleted or repacked"
    assert all(datetime.fromisoformat(u) > datetime.now(UTC) + timedelta(hours=23) for u in locked.values())
    assert lab.objects("packs/") == packs_before and report["packs_deleted"] == report["packs_repacked"] == 0
    assert f"snapshots/{first}.json" in lab.objects() and f"forgotten/{first}" in lab.objects()
    text = lab.toolkit("prune", "--keep-last", "1").stdout
    assert "kept under object lock" in text and f"snapshot {first[:12]} until" in text

    # Forgotten here and in any other cache; the catalog stays consistent with what is kept.
    assert lab.listed() == {second}
    assert lab.listed("--cache-dir", str(lab.tmp / "fresh-cache")) == {second}
    lab.verify_ok("--read-data")
    lab.assert_restores(second)

    shorten_retention(lab, 2)
    r = lab.toolkit("prune", "--keep-last", "1", json_out=True)
    assert r.exit_code == 0, r.stdout + r.stderr
    report = json.loads(r.stdout)
    assert report["locked"] == [] and report["removed"] == []
    assert report["packs_deleted"] + report["packs_repacked"] >= len(locked_packs)
    assert f"snapshots/{first}.json" not in lab.objects() and not lab.objects("forgotten/")
    assert not {f"packs/{p[:2]}/{p}" for p in locked_packs} & lab.objects("packs/")
    lab.verify_ok("--read-data")
    lab.assert_restores(second)


def test_init_with_object_lock_needs_a_bucket_with_it_and_an_s3_repository(
    s3_env: dict[str, str], s3_bucket: str, tmp_path: Path
) -> None:
    t = Toolkit(f"s3://{s3_bucket}/dc1")  # type: ignore[arg-type]
    r = t("init", "--object-lock-days", "7")
    assert r.exit_code == ObjectLockNotEnabled.exit_code == 2 and "object lock" in r.stderr
    r = Toolkit(tmp_path / "dir")("init", "--object-lock-days", "7")
    assert r.exit_code == 2 and "s3://" in r.stderr


# -- bad input ---------------------------------------------------------------------------------------------------


def test_bad_input_is_one_line_and_exit_2(lab: Lab, s3_server: MotoS3Server, tmp_path: Path) -> None:
    lab.snapshot()
    cases = [
        (Toolkit("s3://x"), ("snapshots",), ObjectStoreUrlInvalid),  # type: ignore[arg-type]
        (Toolkit("s3://lab-no-such-bucket-here/dc1"), ("snapshots",), BucketNotFound),  # type: ignore[arg-type]
        (Toolkit(f"s3://{lab.bucket}/empty"), ("snapshots",), StoreNotFound),  # type: ignore[arg-type]
        (lab.toolkit, ("init",), StoreExists),
        (lab.toolkit, ("key", "list"), NotEncrypted),
    ]
    for toolkit, args, error in cases:
        r = toolkit(*args, json_out=True)
        assert r.exit_code == error.exit_code == 2, (args, r.stdout, r.stderr)
        assert json.loads(r.stdout)["code"] == error.code, r.stdout
        assert "Traceback" not in r.stderr and r.stderr.startswith("error: ")


def test_an_encrypted_repository_in_object_storage(
    s3_env: dict[str, str], s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOOLKIT_TESTONLY_WEAKEN_KDF", "1")
    monkeypatch.setenv("TOOLKIT_PASSPHRASE", "correct horse battery staple")
    lab = make_lab(tmp_path, s3_bucket, "--encryption", "aes-256-gcm")
    assert {"keys", "config"} <= lab.objects()
    snap_id = lab.snapshot()
    doc = lab.store().get_bytes(f"snapshots/{snap_id}.json")
    assert b"Visio" not in doc and b"appstack-toolkit-snapshot-encrypted" in doc
    other = ("--cache-dir", str(tmp_path / "elsewhere"))
    lab.assert_restores(snap_id, *other)
    # A slot added through one host's cache is in the bucket: another host opens the repository with it.
    new = tmp_path / "new-passphrase"
    new.write_text("battery horse staple correct\n")
    new.chmod(0o600)
    r = lab.toolkit("key", "add", "--new-passphrase-file", str(new), json_out=True)
    assert r.exit_code == 0, r.stdout + r.stderr
    added = json.loads(r.stdout)["added"]
    assert lab.toolkit("key", "list", json_out=True).exit_code == 0
    monkeypatch.setenv("TOOLKIT_PASSPHRASE", "battery horse staple correct")
    r = lab.toolkit("--cache-dir", str(tmp_path / "fourth"), "key", "list", json_out=True)
    assert added in [s["id"] for s in json.loads(r.stdout)["slots"]]
    lab.assert_restores(snap_id, "--cache-dir", str(tmp_path / "fourth"))
    monkeypatch.delenv("TOOLKIT_PASSPHRASE")
    r = lab.toolkit("--cache-dir", str(tmp_path / "third"), "snapshots")
    assert r.exit_code == 2 and "passphrase" in r.stderr

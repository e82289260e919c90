"""Crash safety proven by fault injection: SIGKILL, a full file system, torn packs, damage, readers.

docs/format.md §7 claims that a crash at any point of a snapshot or a prune leaves every
committed snapshot restorable, that the next writer cleans up after it, and that what a
crash leaves unreferenced is collected by the next prune. These tests kill real
``python -m toolkit`` processes at random (seeded) points after they took the writer lock,
and at each ordering point of §7 exactly, and check every claim after every kill. Then:
a repository or restore destination that runs out of space, a pack torn mid-record (and
what ``catalog.pack.scan_records`` salvages from it), a prune facing an unreadable
manifest, and readers that run while a prune deletes packs.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest

from catalog import pack
from catalog.assemble import load_manifest
from catalog.repo import Repository
from catalog.store import check_chunk
from catalog.types import HOLE_ID
from toolkit.lab.corpus import make_volume

from ..conftest import Toolkit, run_toolkit

pytestmark = pytest.mark.slow

SEED = 20261126  # fixed: the same kill points on every run of the same machine speed
KILLS = 8
PACK_MAX_BYTES = "262144"  # many pack seals per run: many different places to be killed in
APPS = "cloudvolumes/apps"
NAMES = ("Visio", "Project", "Access")
VOLUME_MIB = 16
MIB = 1 << 20


def tree_sha256(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def pack_files(repo: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in (repo / "packs").glob("*/*")}


def document_ids(repo: Path) -> set[str]:
    return {p.stem for p in (repo / "snapshots").glob("*.json")}


def catalog_state(repo: Path) -> tuple[set[str], set[str]]:
    """(snapshot ids, pack ids) the catalog lists, read as any reader would (no lock)."""
    r = Repository.open(repo, readonly=True)
    try:
        return r.index.snapshot_ids(), r.index.pack_ids()
    finally:
        r.close()


@dataclass
class KillRecord:
    killed_running: bool
    tmp_leftovers: int = 0
    orphan_packs: int = 0
    documents_not_in_catalog: int = 0
    stale_lock: bool = False


@dataclass
class Lab:
    """A datastore, a repository, and what each committed snapshot must restore to."""

    tmp: Path
    toolkit: Toolkit
    rng: random.Random
    expected: dict[str, dict[str, str]] = field(default_factory=dict)  # snapshot id -> file -> sha256
    kills: list[KillRecord] = field(default_factory=list)

    @property
    def root(self) -> Path:
        return self.tmp / "ds1"

    @property
    def repo(self) -> Path:
        return self.toolkit.repo

    @classmethod
    def create(cls, tmp: Path, toolkit: Toolkit) -> Lab:
        lab = cls(tmp, toolkit, random.Random(SEED))
        for i, name in enumerate(NAMES):
            make_volume(lab.root, f"{APPS}/{name}.vmdk", size_mib=VOLUME_MIB, seed=i, real=False)
        r = toolkit("init", "--chunk-size", "64K")
        assert r.exit_code == 0, r.stderr
        return lab

    def mutate(self) -> dict[str, str]:
        """An update of every volume: runs of new incompressible bytes at unaligned offsets."""
        for name in NAMES:
            flat = self.root / f"{APPS}/{name}-flat.vmdk"
            before = flat.stat().st_mtime_ns
            with flat.open("r+b") as f:
                for _ in range(20):
                    f.seek(self.rng.randrange(0, VOLUME_MIB * MIB - 300_000))
                    f.write(self.rng.randbytes(self.rng.randrange(20_000, 300_000)))
            os.utime(flat, ns=(before + 10**9, before + 10**9))
        return tree_sha256(self.root)

    def snapshot(self) -> str:
        """A complete snapshot by the next writer, in-process; returns its id."""
        r = self.toolkit("snapshot", str(self.root), json_out=True)
        assert r.exit_code == 0, r.stdout + r.stderr
        snap_id: str = json.loads(r.stdout)["snapshot"]
        self.expected[snap_id] = tree_sha256(self.root)
        return snap_id

    def assert_restores(self, snap_id: str) -> None:
        out = self.tmp / "restore-check"
        shutil.rmtree(out, ignore_errors=True)
        r = self.toolkit("restore", "--as-of", snap_id, "--to", str(out))
        assert r.exit_code == 0, f"snapshot {snap_id[:12]}: {r.stdout}{r.stderr}"
        assert tree_sha256(out) == self.expected[snap_id], f"snapshot {snap_id[:12]} restores other bytes"
        shutil.rmtree(out)

    def assert_clean_after_a_writer(self) -> None:
        """What the next writer must have done: tmp/ emptied, lock released, orphan packs indexed."""
        assert not list((self.repo / "tmp").iterdir()), "tmp/ leftovers survived the next writer"
        assert not (self.repo / "locks" / "writer").exists()
        snaps, packs = catalog_state(self.repo)
        assert set(pack_files(self.repo)) == packs, "pack files and catalog disagree after the next writer"
        assert document_ids(self.repo) == snaps, "documents and catalog disagree after the next writer"

    def spawn(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "toolkit", "--repo", str(self.repo), "-q", "--json", *args],
            env={**os.environ, "TOOLKIT_PACK_MAX_BYTES": PACK_MAX_BYTES},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def writer_window_s(self, *args: str) -> float:
        """How long a writer holds the lock (the span the kills are spread over)."""
        proc = self.spawn(*args)
        held_at = self.wait_for_lock(proc)
        lock = self.repo / "locks" / "writer"
        while lock.exists() and proc.poll() is None:
            time.sleep(0.001)
        held_s = time.monotonic() - held_at
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, out + err
        return max(0.05, held_s)

    def wait_for_lock(self, proc: subprocess.Popen[str]) -> float:
        lock = self.repo / "locks" / "writer"
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                if json.loads(lock.read_text())["pid"] == proc.pid:
                    break
            time.sleep(0.001)
        return time.monotonic()

    def kill_at_random_point(self, proc: subprocess.Popen[str], window_s: float) -> tuple[bool, str]:
        """SIGKILL ``proc`` a random time after it took the writer lock; (killed while running, stdout)."""
        self.wait_for_lock(proc)
        time.sleep(self.rng.uniform(0, window_s))
        running = proc.poll() is None
        if running:
            proc.send_signal(signal.SIGKILL)
        out, _err = proc.communicate(timeout=60)
        if running:
            assert proc.returncode == -signal.SIGKILL
        return running, out

    def record_kill(self, killed_running: bool) -> KillRecord:
        snaps, packs = catalog_state(self.repo)
        rec = KillRecord(
            killed_running,
            tmp_leftovers=len(list((self.repo / "tmp").iterdir())),
            orphan_packs=len(set(pack_files(self.repo)) - packs),
            documents_not_in_catalog=len(document_ids(self.repo) - snaps),
            stale_lock=(self.repo / "locks" / "writer").exists(),
        )
        self.kills.append(rec)
        return rec

    def assert_bounded_growth(self) -> None:
        """After a completed prune --keep-last 1 the repository is within a small factor of a fresh one."""
        r = self.toolkit("prune", "--keep-last", "1")
        assert r.exit_code == 0, r.stdout + r.stderr
        self.assert_clean_after_a_writer()
        fresh = Toolkit(self.tmp / "fresh-repo")
        assert fresh("init", "--chunk-size", "64K").exit_code == 0
        assert fresh("snapshot", str(self.root)).exit_code == 0
        kept = sum(pack_files(self.repo).values())
        baseline = sum(pack_files(fresh.repo).values())
        # Packs under half live are repacked, so at most twice the live data stays, plus one pack of slack.
        assert kept <= 2 * baseline + int(PACK_MAX_BYTES), (kept, baseline)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    # A kill tests the order of renames and commits, not durability against power loss (page cache
    # outlives the process), so the lab sits on a memory file system: no fsync latency, many more kills.
    with small_filesystem(tmp_path / "lab", 1024) as where:
        yield Lab.create(where, Toolkit(where / "repo"))


def test_kill_9_during_snapshot_at_random_points(lab: Lab) -> None:
    started = time.monotonic()
    for _ in range(2):
        lab.mutate()
        lab.snapshot()
    lab.mutate()
    window_s = lab.writer_window_s("snapshot", str(lab.root))
    (calibration,) = document_ids(lab.repo) - set(lab.expected)
    lab.expected[calibration] = tree_sha256(lab.root)
    sealed_per_run = len(pack_files(lab.repo)) / len(lab.expected)
    assert sealed_per_run > 10, "runs must seal many packs to be killed between seals"

    for _ in range(KILLS):
        state = lab.mutate()
        committed = set(lab.expected)
        documents_before = document_ids(lab.repo)
        killed, out = lab.kill_at_random_point(lab.spawn("snapshot", str(lab.root)), window_s)
        lab.record_kill(killed)
        new_documents = document_ids(lab.repo) - documents_before
        assert len(new_documents) <= 1
        if not killed:
            assert new_documents == {json.loads(out)["snapshot"]}

        # Every snapshot committed before the kill restores exactly, before any writer ran.
        for snap_id in sorted(committed):
            lab.assert_restores(snap_id)

        # The next writer succeeds and cleans up; a document the killed run committed counts.
        newest = lab.snapshot()
        lab.assert_clean_after_a_writer()
        assert catalog_state(lab.repo)[0] == committed | new_documents | {newest}
        for snap_id in new_documents:
            lab.expected[snap_id] = state
            lab.assert_restores(snap_id)
        lab.assert_restores(newest)
        r = lab.toolkit("verify", "--read-data")
        assert r.exit_code == 0, r.stdout + r.stderr

    assert sum(k.killed_running for k in lab.kills) >= KILLS // 2, lab.kills
    lab.assert_bounded_growth()
    print(f"{len(lab.kills)} kills in {time.monotonic() - started:.1f} s: {lab.kills}")


def test_kill_9_during_prune_at_random_points(lab: Lab) -> None:
    started = time.monotonic()
    for _ in range(4):
        lab.mutate()
        lab.snapshot()
    window_s = lab.writer_window_s("prune", "--keep-last", "1")
    lab.expected = {s: lab.expected[s] for s in catalog_state(lab.repo)[0]}

    for _ in range(KILLS):
        while len(lab.expected) < 4:  # something to remove, and packs that turn partly dead
            lab.mutate()
            lab.snapshot()
        newest = max(lab.expected, key=lambda s: document_created_at(lab.repo, s))
        listed_before = set(lab.expected)
        killed, _out = lab.kill_at_random_point(lab.spawn("prune", "--keep-last", "1"), window_s)
        lab.record_kill(killed)

        # Before any writer: whatever the catalog still lists restores exactly; the newest always.
        listed, _ = catalog_state(lab.repo)
        assert newest in listed and listed <= listed_before
        for snap_id in sorted(listed):
            lab.assert_restores(snap_id)

        # The next writer brings back documents whose rows were removed first (nothing was collected).
        lab.mutate()
        added = lab.snapshot()
        lab.assert_clean_after_a_writer()
        listed, _ = catalog_state(lab.repo)
        assert newest in listed and listed <= listed_before | {added}
        for snap_id in sorted(listed):
            lab.assert_restores(snap_id)
        lab.expected = {s: lab.expected[s] for s in listed}
        r = lab.toolkit("verify", "--read-data")
        assert r.exit_code == 0, r.stdout + r.stderr

    assert sum(k.killed_running for k in lab.kills) >= KILLS // 2, lab.kills
    lab.assert_bounded_growth()
    print(f"{len(lab.kills)} kills in {time.monotonic() - started:.1f} s: {lab.kills}")


def document_created_at(repo: Path, snap_id: str) -> str:
    doc = json.loads((repo / "snapshots" / f"{snap_id}.json").read_bytes())
    return str(doc["created_at"])


# --- kills at exact points ------------------------------------------------------------------------------

# Runs the CLI with one function wrapped so that the process sends itself a signal (SIGKILL, or SIGSTOP
# to freeze it there) right before or right after the n-th call: the narrow windows of
# docs/format.md §7 that random kills rarely hit. argv: target when n signal -- toolkit arguments.
CRASH_DRIVER = """
import importlib, os, signal, sys, threading
target, when, nth, sig = sys.argv[1], sys.argv[2], int(sys.argv[3]), getattr(signal, sys.argv[4])
module, _, qualname = target.partition(":")
owner_name, _, name = qualname.rpartition(".")
owner = importlib.import_module(module)
if owner_name:
    owner = getattr(owner, owner_name)
original = getattr(owner, name)
counted = threading.Lock()  # the function may run on several threads: exactly one call is the n-th
calls = [0]
def wrapper(*args, **kwargs):
    with counted:
        calls[0] += 1
        hit = calls[0] == nth
    if hit and when == "before":
        os.kill(os.getpid(), sig)
    result = original(*args, **kwargs)
    if hit and when == "after":
        os.kill(os.getpid(), sig)
    return result
setattr(owner, name, wrapper)
from toolkit.cli import main
main(sys.argv[6:])
"""


def driver_command(repo: Path, target: str, when: str, nth: int, sig: str, *args: str) -> list[str]:
    return [sys.executable, "-c", CRASH_DRIVER, target, when, str(nth), sig, "--", "--repo", str(repo), "-q", *args]


CRASH_POINTS = {
    # name: (command, function, before|after, n)
    "snapshot: lock draft written, not linked": ("snapshot", "catalog.lock:_take", "before", 1),
    "snapshot: pack being written in tmp/": ("snapshot", "catalog.pack:encode_trailer", "before", 2),
    "snapshot: pack renamed, not indexed": ("snapshot", "catalog.index:Index.add_pack", "before", 3),
    "snapshot: pack indexed": ("snapshot", "catalog.index:Index.add_pack", "after", 3),
    "snapshot: document not written": ("snapshot", "catalog.repo:write_atomic", "before", 1),
    "snapshot: document renamed, catalog rows not": ("snapshot", "catalog.index:Index.add_snapshot", "before", 1),
    "prune: nothing changed yet": ("prune", "catalog.index:Index.remove_snapshot", "before", 1),
    "prune: rows removed, document not": ("prune", "catalog.index:Index.remove_snapshot", "after", 1),
    "prune: repacked pack being written in tmp/": ("prune", "catalog.pack:encode_trailer", "before", 1),
    "prune: repacked pack indexed, old pack kept": ("prune", "catalog.index:Index.add_pack", "after", 1),
    "prune: old pack's rows removed, file not": ("prune", "catalog.index:Index.remove_pack", "after", 1),
    "prune: second pack about to go": ("prune", "catalog.index:Index.remove_pack", "before", 2),
}


@pytest.mark.parametrize("point", list(CRASH_POINTS))
def test_kill_9_at_each_ordering_point(lab: Lab, point: str) -> None:
    command, target, when, nth = CRASH_POINTS[point]
    for _ in range(3):
        lab.mutate()
        lab.snapshot()
    state = lab.mutate()
    committed = dict(lab.expected)
    newest = max(committed, key=lambda s: document_created_at(lab.repo, s))
    documents_before = document_ids(lab.repo)
    args = ["snapshot", str(lab.root)] if command == "snapshot" else ["prune", "--keep-last", "1"]
    proc = subprocess.run(
        driver_command(lab.repo, target, when, nth, "SIGKILL", *args),
        env={**os.environ, "TOOLKIT_PACK_MAX_BYTES": PACK_MAX_BYTES},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == -signal.SIGKILL, f"the crash point was not reached: {proc.stdout}{proc.stderr}"
    if "being written in tmp/" in point:
        assert list((lab.repo / "tmp").iterdir()), "the crash left nothing in tmp/ to clean"
    if point == "snapshot: pack renamed, not indexed":
        assert set(pack_files(lab.repo)) - catalog_state(lab.repo)[1], "the crash left no orphan pack"
    new_documents = document_ids(lab.repo) - documents_before
    listed, _ = catalog_state(lab.repo)
    if command == "snapshot":
        assert listed == set(committed)
    else:
        assert listed <= set(committed) and newest in listed
    for snap_id in sorted(listed):
        lab.assert_restores(snap_id)

    added = lab.snapshot()
    lab.assert_clean_after_a_writer()
    listed, _ = catalog_state(lab.repo)
    if point == "snapshot: document renamed, catalog rows not":
        assert len(new_documents) == 1
    if command == "snapshot":
        assert listed == set(committed) | new_documents | {added}
        for snap_id in new_documents:
            lab.expected[snap_id] = state
    elif point in ("prune: nothing changed yet", "prune: rows removed, document not"):
        assert listed == set(committed) | {added}, "the snapshot whose rows were removed did not come back"
    for snap_id in sorted(listed):
        lab.assert_restores(snap_id)
    r = lab.toolkit("verify", "--read-data")
    assert r.exit_code == 0, r.stdout + r.stderr
    lab.expected = {s: lab.expected[s] for s in listed}
    lab.assert_bounded_growth()


# --- readers while a prune runs ------------------------------------------------------------------------


def wait_until_stopped(proc: subprocess.Popen[str]) -> None:
    stat = Path(f"/proc/{proc.pid}/stat")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if stat.read_text().rsplit(")", 1)[1].split()[0] == "T":
            return
        time.sleep(0.005)
    pytest.fail("the reader never reached its pause point")


# A reader frozen just after it read what it needs from the catalog, while a whole prune runs.
READER_PAUSES = {
    "verify --read-data": (("verify", "--read-data"), "catalog.index:Index.packs", 1),
    "restore of a kept snapshot": (("restore",), "catalog.store:PackReader.read", 2),
}


@pytest.mark.parametrize("reader", list(READER_PAUSES))
def test_a_reader_paused_across_a_whole_prune_sees_no_false_damage(lab: Lab, reader: str) -> None:
    """Readers take no lock (docs/format.md §7). One that read the catalog before a prune and the packs
    after it must not report damage that is not there, nor fail to restore a snapshot the prune kept:
    either the prune waits for it (exit 3, busy) or the reader copes with packs that moved."""
    args, target, nth = READER_PAUSES[reader]
    for _ in range(4):
        lab.mutate()
        lab.snapshot()
    newest = max(lab.expected, key=lambda s: document_created_at(lab.repo, s))
    out = lab.tmp / "restored"
    if args == ("restore",):
        args = ("restore", "--as-of", newest, "--to", str(out))
    paused = subprocess.Popen(
        driver_command(lab.repo, target, "after", nth, "SIGSTOP", "--json", *args),
        env={**os.environ, "TOOLKIT_PACK_MAX_BYTES": PACK_MAX_BYTES},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until_stopped(paused)
        pruned = lab.toolkit("prune", "--keep-last", "1")
        assert pruned.exit_code in (0, 3), pruned.stdout + pruned.stderr
    finally:
        paused.send_signal(signal.SIGCONT)
    stdout, stderr = paused.communicate(timeout=120)

    assert paused.returncode == 0, f"{reader} after a prune ran under it: {stdout}{stderr}"
    if args[0] == "restore":
        assert tree_sha256(out) == lab.expected[newest]


# --- a full file system ---------------------------------------------------------------------------------


@contextlib.contextmanager
def small_filesystem(mountpoint: Path, size_mib: int) -> Iterator[Path]:
    """A file system of ``size_mib`` at ``mountpoint``: tmpfs, else a loop-mounted ext4 image."""
    mountpoint.mkdir(parents=True)
    tmpfs = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mib}m,mode=0755", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
        check=False,
    )
    if tmpfs.returncode != 0:
        image = mountpoint.with_name(mountpoint.name + ".img")
        with image.open("wb") as f:
            f.truncate(size_mib * MIB)
        steps = [
            ["mkfs.ext4", "-q", "-F", "-m", "0", "-O", "^has_journal", str(image)],
            ["mount", "-o", "loop", str(image), str(mountpoint)],
        ]
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                pytest.fail(
                    f"cannot make a small file system (tmpfs: {tmpfs.stderr.strip()}; "
                    f"{step[0]}: {done.stderr.strip()}); these tests need root or CAP_SYS_ADMIN"
                )
    try:
        yield mountpoint
    finally:
        for _ in range(20):
            if subprocess.run(["umount", str(mountpoint)], capture_output=True, check=False).returncode == 0:
                break
            time.sleep(0.1)
        else:
            subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True, check=False)


def fill(path: Path, size: int) -> None:
    with path.open("wb") as f:
        f.write(os.urandom(size))


def random_volume(root: Path, name: str, size_mib: int, seed: int) -> None:
    """A volume whose flat file is incompressible from end to end."""
    make_volume(root, f"{APPS}/{name}.vmdk", size_mib=size_mib, seed=seed, real=False)
    flat = root / f"{APPS}/{name}-flat.vmdk"
    rng = random.Random(seed)
    with flat.open("r+b") as f:
        for off in range(0, size_mib * MIB, MIB):
            f.seek(off)
            f.write(rng.randbytes(MIB))


def fill_leaving(fs: Path, ballast: Path, free_bytes: int) -> None:
    """Write ``ballast`` so that ``free_bytes`` stay available on the file system of ``fs``."""
    st = os.statvfs(fs)
    with ballast.open("wb") as f:
        f.write(b"\xa5" * max(0, st.f_bavail * st.f_frsize - free_bytes))


# Free space left when the snapshot starts: from "the catalog cannot even be opened" through
# "a catalog commit fails" to "a pack write fails" (SQLite needs a few pages for its WAL).
FREE_KIB = (0, 24, 40, 48, 256, 4096)


@pytest.mark.parametrize("free_kib", FREE_KIB)
def test_a_full_repository_file_system(tmp_path: Path, free_kib: int) -> None:
    """Snapshot data bigger than the free space: a clean store_full error, nothing committed half."""
    with small_filesystem(tmp_path / "small", 24) as small:
        repo = small / "repo"
        root = tmp_path / "ds1"
        env = {"TOOLKIT_PACK_MAX_BYTES": PACK_MAX_BYTES}
        make_volume(root, f"{APPS}/Visio.vmdk", size_mib=4, seed=1, real=False)
        assert run_toolkit("--repo", str(repo), "init", "--chunk-size", "64K", env=env).returncode == 0
        first = run_toolkit("--repo", str(repo), "--json", "snapshot", str(root), env=env)
        assert first.returncode == 0, first.stderr
        first_id = json.loads(first.stdout)["snapshot"]
        first_tree = tree_sha256(root)
        random_volume(root, "Big", 8, seed=2)  # more new data than the space left
        ballast = small / "ballast"
        fill_leaving(small, ballast, free_kib * 1024)

        full = run_toolkit("--repo", str(repo), "--json", "snapshot", str(root), env=env)

        assert "Traceback" not in full.stderr, full.stderr
        assert full.returncode == 1, full.stdout + full.stderr
        assert json.loads(full.stdout)["code"] == "store_full"
        errors = [line for line in full.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "no space left" in errors[0], full.stderr
        assert document_ids(repo) == {first_id}
        listed = run_toolkit("--repo", str(repo), "--json", "snapshots")
        assert [s["id"] for s in json.loads(listed.stdout)["snapshots"]] == [first_id]
        assert not list((repo / "tmp").iterdir())
        check = run_toolkit("--repo", str(repo), "verify", "--read-data")
        assert check.returncode == 0, check.stdout + check.stderr

        # Space freed: the next run works and restores.
        ballast.unlink()
        again = run_toolkit("--repo", str(repo), "--json", "snapshot", str(root), env=env)
        assert again.returncode == 0, again.stdout + again.stderr
        second_id = json.loads(again.stdout)["snapshot"]
        assert not list((repo / "tmp").iterdir())
        check = run_toolkit("--repo", str(repo), "verify", "--read-data")
        assert check.returncode == 0, check.stdout + check.stderr
        for snap_id, tree in ((first_id, first_tree), (second_id, tree_sha256(root))):
            out = tmp_path / f"out-{snap_id[:8]}"
            r = run_toolkit("--repo", str(repo), "restore", "--as-of", snap_id, "--to", str(out))
            assert r.returncode == 0, r.stdout + r.stderr
            assert tree_sha256(out) == tree


def test_a_full_restore_destination(tmp_path: Path, toolkit: Toolkit) -> None:
    """The destination fills up mid-file: that volume fails cleanly, nothing partial is left, exit 1."""
    root = tmp_path / "ds1"
    random_volume(root, "Big", 12, seed=3)
    make_volume(root, f"{APPS}/Small.vmdk", size_mib=4, seed=4, real=False)
    assert toolkit("init", "--chunk-size", "64K").exit_code == 0
    assert toolkit("snapshot", str(root)).exit_code == 0
    source = tree_sha256(root)
    with small_filesystem(tmp_path / "dest", 8) as dest:
        r = toolkit("restore", "--as-of", datetime.now(UTC).isoformat(), "--to", str(dest), json_out=True)

        assert not (dest / f"{APPS}/Big-flat.vmdk").exists()
        assert not [p for p in dest.rglob("*") if p.name.startswith(".")], "a partial file was left"
        assert {p: source[p] for p in tree_sha256(dest)} == tree_sha256(dest), "a file in place has other bytes"
        assert "Traceback" not in r.stderr, r.stderr
        assert r.exit_code == 1, r.stdout + r.stderr
        volumes = {v["key"]: v for v in json.loads(r.stdout)["volumes"]}
        big = volumes[f"ds1/{APPS}/Big.vmdk"]
        assert big["status"] == "failed" and os.strerror(errno.ENOSPC) in big["error"]
        # Volumes restored at the same time may have failed too (the disk was full for them as well);
        # nothing the failure left behind stands in the way of restoring them now.
        r = toolkit("restore", "--as-of", datetime.now(UTC).isoformat(), "--volume", "Small", "--to", str(dest))
        assert r.exit_code == 0, r.stdout + r.stderr
        assert {p: h for p, h in source.items() if "Small" in p} == tree_sha256(dest)


# --- torn packs -----------------------------------------------------------------------------------------


def test_a_pack_torn_mid_record(tmp_path: Path, toolkit: Toolkit) -> None:
    """verify names it; scan_records salvages every record before the tear; repair keeps the rest usable."""
    root = tmp_path / "ds1"
    random_volume(root, "Visio", 4, seed=5)
    random_volume(root, "Project", 4, seed=6)
    assert toolkit("init", "--chunk-size", "64K").exit_code == 0
    assert toolkit("snapshot", str(root)).exit_code == 0

    repo = toolkit.repo
    packs_by_records = sorted(
        ((len(pack.parse_pack(pid, (repo / "packs" / pid[:2] / pid).read_bytes())), pid) for pid in pack_files(repo)),
        reverse=True,
    )
    count, pack_id = packs_by_records[0]
    assert count >= 3
    path = repo / "packs" / pack_id[:2] / pack_id
    whole = path.read_bytes()
    entries = pack.parse_pack(pack_id, whole)
    tear = entries[2].offset + entries[2].stored_size // 2  # inside the third record's bytes
    os.truncate(path, tear)

    r = toolkit("verify", json_out=True)
    assert r.exit_code == 1
    assert any(p["pack_id"] == pack_id for p in json.loads(r.stdout)["problems"])
    r = toolkit("verify", "--read-data", json_out=True)
    assert r.exit_code == 1
    report = json.loads(r.stdout)
    assert any(p["pack_id"] == pack_id for p in report["problems"])
    affected = {a["volume"] for p in report["problems"] for a in p["affected"]}
    assert affected

    torn = path.read_bytes()
    salvaged = list(pack.scan_records(pack_id, torn))
    assert salvaged == entries[:2]
    for e in salvaged:
        check_chunk(e.chunk_id, pack_id, e.codec, torn[e.offset : e.offset + e.stored_size], e.raw_size)

    # Rebuilding the catalog skips the torn pack; verify then names exactly the damaged volumes.
    r = toolkit("repair", "--rebuild-catalog")
    assert r.exit_code == 0, r.stdout + r.stderr
    r = toolkit("verify", json_out=True)
    assert r.exit_code == 1
    assert {a["volume"] for p in json.loads(r.stdout)["problems"] for a in p["affected"]} == affected


def test_prune_never_destroys_chunks_of_a_kept_snapshot_whose_manifest_is_unreadable(
    tmp_path: Path, toolkit: Toolkit
) -> None:
    """A damaged manifest record must make prune keep (or refuse to collect) that file's chunks."""
    root = tmp_path / "ds1"
    random_volume(root, "Visio", 4, seed=7)
    assert toolkit("init", "--chunk-size", "64K").exit_code == 0
    assert toolkit("snapshot", str(root)).exit_code == 0

    repo = Repository.open(toolkit.repo, readonly=True)
    try:
        (version,) = repo.index.all_versions()
        flat = next(f for f in repo.index.files(version.version_id) if f.role == "extent")
        needed = {c for c in load_manifest(repo.index, repo.reader, flat.manifest_id).chunk_ids if c != HOLE_ID}
        loc = repo.index.locate(flat.manifest_id)
    finally:
        repo.close()
    assert loc is not None and len(needed) > 8
    path = toolkit.repo / "packs" / loc.pack_id[:2] / loc.pack_id
    data = bytearray(path.read_bytes())
    data[loc.offset + loc.stored_size // 2] ^= 0x10  # one flipped bit in the manifest record
    path.write_bytes(bytes(data))

    toolkit("prune", "--keep-last", "1")

    on_disk = {
        e.chunk_id for p in (toolkit.repo / "packs").glob("*/*") for e in pack.scan_records(p.name, p.read_bytes())
    }
    lost = needed - on_disk
    assert not lost, f"prune deleted {len(lost)} of {len(needed)} chunks the kept snapshot references"

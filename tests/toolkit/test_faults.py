"""Transport faults: a failed read or write never leaves partial data where it could be taken for real data.

Faults are injected with :class:`toolkit.lab.faults.Scripted` around a LocalTransport: in the
conformance suite directly, and under the CLI (in-process) by replacing the LocalTransport the
CLI builds for a source directory or a ``--to`` directory.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import random
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import Result

from toolkit.lab.corpus import make_volume
from toolkit.lab.faults import INJECTED, Scripted, flip_bit
from toolkit.transports.local import PARTIAL_SUFFIX, LocalTransport

from ..conftest import Toolkit
from .transport_suite import Datastore, TransportFactory, TransportSuite, partials, payload

APPS = "cloudvolumes/apps"
VOLUMES = {"Visio": 1, "Project": 2, "Access": 3}  # name -> corpus seed
FAILING = "Project"
FAILING_KEY = f"ds1/{APPS}/{FAILING}.vmdk"
FAILING_FLAT = f"{APPS}/{FAILING}-flat.vmdk"
MIB = 1 << 20

READ_FAULTS = {  # script character -> what the failed volume's reason must say
    "E": "Input/output error",
    "T": "timed out",
    "S": "changed while it was read",
}
RAISING_WRITE_FAULTS = {"E": "Input/output error", "T": "timed out", "D": "No space left on device"}
SILENT_WRITE_FAULTS = ("S", "F")


# --- the wrapper itself ---------------------------------------------------------------------------------


class TestScriptedPassThrough(TransportSuite):
    """A wrapper whose script only passes calls through is a conforming transport."""

    @pytest.fixture
    def transport_factory(self, tmp_path: Path) -> TransportFactory:
        root = tmp_path / "datastore1"
        root.mkdir()
        return lambda: Datastore(Scripted(LocalTransport(root), "r"), root)


@pytest.fixture
def local_ds(tmp_path: Path) -> Path:
    root = tmp_path / "datastore1"
    root.mkdir()
    return root


@pytest.mark.parametrize("fault", sorted(RAISING_WRITE_FAULTS))
def test_a_failed_write_leaves_nothing_behind(local_ds: Path, fault: str) -> None:
    """The conformance expectation, with the failure coming from inside a write call."""
    t = Scripted(LocalTransport(local_ds), "ww" + fault)

    def write_three_mib() -> None:
        with t.open_write("apps/Broken-flat.vmdk", 4 * MIB, 0) as write_at:
            for i in range(3):
                write_at(i * MIB, payload(MIB, i))

    with pytest.raises(OSError) as err:
        write_three_mib()

    assert RAISING_WRITE_FAULTS[fault] in str(err.value)
    assert [c.action for c in t.calls] == ["w", "w", fault]
    assert not (local_ds / "apps/Broken-flat.vmdk").exists()
    assert partials(local_ds / "apps") == []
    assert list(t.walk()) == []


@pytest.mark.parametrize("fault", sorted(RAISING_WRITE_FAULTS))
def test_a_failed_write_keeps_the_previous_file(local_ds: Path, fault: str) -> None:
    (local_ds / "apps").mkdir()
    (local_ds / "apps/Keep.vmdk").write_bytes(b"old contents")
    t = Scripted(LocalTransport(local_ds), fault)

    with pytest.raises(OSError), t.open_write("apps/Keep.vmdk", 3, 0) as write_at:
        write_at(0, b"new")

    assert (local_ds / "apps/Keep.vmdk").read_bytes() == b"old contents"
    assert partials(local_ds / "apps") == []


def test_disk_full_writes_part_of_the_data_before_failing(local_ds: Path) -> None:
    seen: list[bytes] = []

    class Spy(LocalTransport):
        @contextlib.contextmanager
        def open_write(self, path: str, size: int, mtime_ns: int) -> Iterator:  # type: ignore[override]
            with super().open_write(path, size, mtime_ns) as inner:
                yield lambda offset, data: (seen.append(bytes(data)), inner(offset, data))

    t = Scripted(Spy(local_ds), "D")
    with pytest.raises(OSError) as err, t.open_write("f.bin", 10, 0) as write_at:
        write_at(0, b"0123456789")
    assert err.value.errno == errno.ENOSPC
    assert seen == [b"01234"]


def test_read_faults_follow_the_script(local_ds: Path) -> None:
    data = payload(4096, 7)
    (local_ds / "f.bin").write_bytes(data)
    t = Scripted(LocalTransport(local_ds), "rEFSTr")

    with t.open_read("f.bin") as read_at:
        assert read_at(0, 100) == data[:100]
        with pytest.raises(OSError) as eio:
            read_at(0, 100)
        assert eio.value.errno == errno.EIO and INJECTED in str(eio.value)
        flipped = read_at(0, 100)
        assert flipped != data[:100] and flipped == flip_bit(data[:100])
        assert sum(bin(a ^ b).count("1") for a, b in zip(flipped, data, strict=False)) == 1
        assert read_at(0, 100) == data[:50]
        with pytest.raises(TimeoutError):
            read_at(0, 100)
        for _ in range(3):  # past the end of the script: the last character repeats
            assert read_at(100, 100) == data[100:200]

    assert [c.action for c in t.calls] == list("rEFSTrrr")
    assert [c.action for c in t.faults_fired] == list("EFST")


def test_write_faults_that_do_not_raise_damage_the_file_silently(local_ds: Path) -> None:
    t = Scripted(LocalTransport(local_ds), "wFS")
    data = payload(3000, 8)
    with t.open_write("f.bin", 3000, 0) as write_at:
        write_at(0, data[:1000])
        write_at(1000, data[1000:2000])
        write_at(2000, data[2000:])
    got = (local_ds / "f.bin").read_bytes()
    assert got[:1000] == data[:1000]
    assert got[1000:2000] == flip_bit(data[1000:2000])
    assert got[2000:2500] == data[2000:2500] and got[2500:] == bytes(500)


def test_only_files_matching_the_glob_consume_the_script(local_ds: Path) -> None:
    for name in ("a.bin", "b-flat.vmdk"):
        (local_ds / name).write_bytes(payload(100, 9))
    t = Scripted(LocalTransport(local_ds), "E", only="*-flat.vmdk")
    with t.open_read("a.bin") as read_at:
        assert len(read_at(0, 100)) == 100
    with t.open_read("b-flat.vmdk") as read_at, pytest.raises(OSError):
        read_at(0, 100)
    assert [(c.path, c.action) for c in t.calls] == [("b-flat.vmdk", "E")]


def test_the_script_is_consumed_once_per_call_across_threads(local_ds: Path) -> None:
    (local_ds / "f.bin").write_bytes(payload(64 * 1024, 10))
    script = "".join(random.Random(11).choice("rE") for _ in range(400)) + "r"
    t = Scripted(LocalTransport(local_ds), script)

    def one(i: int) -> bool:
        try:
            read_at(i * 64, 64)
        except OSError:
            return False
        return True

    with t.open_read("f.bin") as read_at, ThreadPoolExecutor(8) as pool:
        ok = list(pool.map(one, range(1000)))
    assert len(t.calls) == 1000
    assert ok.count(False) == script.count("E")


def test_optional_capabilities_pass_through_only_when_the_inner_transport_has_them(local_ds: Path) -> None:
    class OnHost(LocalTransport):
        def file_digest(self, path: str, chunk_size: int) -> str:
            return f"digest of {path} in blocks of {chunk_size}"

    assert not hasattr(Scripted(LocalTransport(local_ds), "r"), "file_digest")
    assert Scripted(OnHost(local_ds), "r").file_digest("a", 7) == "digest of a in blocks of 7"
    (local_ds / "gone.bin").write_bytes(b"x")
    Scripted(LocalTransport(local_ds), "E").remove("gone.bin")
    assert not (local_ds / "gone.bin").exists()


def test_a_script_with_unknown_characters_is_refused(local_ds: Path) -> None:
    with pytest.raises(ValueError, match="X"):
        Scripted(LocalTransport(local_ds), "rrX")
    with pytest.raises(ValueError):
        Scripted(LocalTransport(local_ds), "")


# --- snapshot and restore through the CLI -------------------------------------------------------------


@contextlib.contextmanager
def faulty_local_transports(monkeypatch: pytest.MonkeyPatch, script: str, only: str | None) -> Iterator[list[Scripted]]:
    """Every LocalTransport the CLI builds (sources and --to directories) is wrapped in Scripted."""
    made: list[Scripted] = []

    def build(root: Path) -> Scripted:
        s = Scripted(LocalTransport(root), script, only=only)
        made.append(s)
        return s

    with monkeypatch.context() as m:
        m.setattr("toolkit.cli.LocalTransport", build)
        yield made


def sha256_tree(root: Path) -> dict[str, str]:
    """relative path -> SHA-256 of every file below ``root`` (hidden ones included)."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob("*") if PARTIAL_SUFFIX in p.name or p.name.startswith("."))


def rewrite_randomly(path: Path, seed: int, runs: int = 4, run_bytes: int = 200_000) -> None:
    """Overwrite a few runs of ``path`` with new random bytes and bump its mtime."""
    rng = random.Random(seed)
    size = path.stat().st_size
    before = path.stat().st_mtime_ns
    with path.open("r+b") as f:
        for _ in range(runs):
            f.seek(rng.randrange(0, size - run_bytes))
            f.write(rng.randbytes(run_bytes))
    os.utime(path, ns=(before + 10**9, before + 10**9))


@pytest.fixture
def ds1(tmp_path: Path) -> Path:
    root = tmp_path / "ds1"
    for name, seed in VOLUMES.items():
        make_volume(root, f"{APPS}/{name}.vmdk", size_mib=8, seed=seed, real=False)
        rewrite_randomly(root / f"{APPS}/{name}-flat.vmdk", seed)  # incompressible runs: real work per chunk
    return root


@pytest.fixture
def repo1(toolkit: Toolkit, ds1: Path) -> Toolkit:
    """A repository with 64 KiB chunks and one clean snapshot of ds1."""
    assert toolkit("init", "--chunk-size", "64K").exit_code == 0
    r = toolkit("snapshot", str(ds1))
    assert r.exit_code == 0, r.stdout + r.stderr
    return toolkit


def snapshot_ids(toolkit: Toolkit) -> list[str]:
    return [s["id"] for s in toolkit.json("snapshots")["snapshots"]]


def now() -> str:
    return datetime.now(UTC).isoformat()


@pytest.mark.parametrize("fault", sorted(READ_FAULTS))
def test_a_failed_source_read_fails_that_volume_only_and_shows_nothing_partial(
    repo1: Toolkit, ds1: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    first = sha256_tree(ds1)
    first_id = snapshot_ids(repo1)[0]
    for name, seed in VOLUMES.items():  # every volume changed, so every one is read again
        rewrite_randomly(ds1 / f"{APPS}/{name}-flat.vmdk", seed + 100)
    second = sha256_tree(ds1)

    with faulty_local_transports(monkeypatch, "rrr" + fault + "r", only=f"*{FAILING}-flat.vmdk") as made:
        r = repo1("snapshot", str(ds1), json_out=True)
    assert [c.path for t in made for c in t.faults_fired] == [FAILING_FLAT]

    assert r.exit_code == 1, r.stdout + r.stderr
    report = json.loads(r.stdout)
    states = {v["key"]: (v["state"], v["reason"]) for v in report["volumes"]}
    assert states.pop(FAILING_KEY)[0] == "failed"
    assert READ_FAULTS[fault] in next(v["reason"] for v in report["volumes"] if v["key"] == FAILING_KEY)
    assert states == {f"ds1/{APPS}/{n}.vmdk": ("changed", None) for n in VOLUMES if n != FAILING}

    # The run is committed with the failure recorded; the failed volume has no files in it.
    ids = snapshot_ids(repo1)
    assert len(ids) == 2 and ids[0] == first_id
    doc = json.loads((repo1.repo / "snapshots" / f"{ids[1]}.json").read_bytes())
    failed = next(v for v in doc["volumes"] if v["key"] == FAILING_KEY)
    assert failed["state"] == "failed" and failed["files"] == []
    assert not list((repo1.repo / "tmp").iterdir())
    assert repo1("verify", "--read-data").exit_code == 0

    # Restoring as of the failed run gives the new bytes of the others and the last good Project,
    # never a mix of the two Project versions.
    out = tmp_path / "out"
    r = repo1("restore", "--as-of", ids[1], "--to", str(out), json_out=True)
    assert r.exit_code == 0, r.stdout + r.stderr
    restored = sha256_tree(out)
    assert restored == {p: (first if f"/{FAILING}" in p else second)[p] for p in second}
    note = next(v for v in json.loads(r.stdout)["volumes"] if v["key"] == FAILING_KEY)["note"]
    assert "failed" in note

    # The next run without faults captures it.
    r = repo1("snapshot", str(ds1), json_out=True)
    assert r.exit_code == 0, r.stdout + r.stderr
    assert {v["key"]: v["state"] for v in json.loads(r.stdout)["volumes"]}[FAILING_KEY] == "changed"
    out2 = tmp_path / "out2"
    assert repo1("restore", "--as-of", now(), "--to", str(out2)).exit_code == 0
    assert sha256_tree(out2) == second


def test_a_failed_read_of_a_new_volume_restores_as_not_present(
    toolkit: Toolkit, ds1: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert toolkit("init", "--chunk-size", "64K").exit_code == 0
    with faulty_local_transports(monkeypatch, "rE", only=f"*{FAILING}-flat.vmdk") as made:
        r = toolkit("snapshot", str(ds1), json_out=True)
    assert len(made[0].faults_fired) >= 1
    assert r.exit_code == 1, r.stdout + r.stderr

    out = tmp_path / "out"
    r = toolkit("restore", "--as-of", now(), "--to", str(out), json_out=True)
    assert r.exit_code == 0, r.stdout + r.stderr
    status = {v["key"]: v["status"] for v in json.loads(r.stdout)["volumes"]}
    assert status[FAILING_KEY] == "not present"
    assert not [p for p in sha256_tree(out) if FAILING in p]
    assert {p: h for p, h in sha256_tree(ds1).items() if FAILING not in p} == sha256_tree(out)
    assert toolkit("verify", "--read-data").exit_code == 0


def test_a_bit_flipped_by_the_source_transport_is_stored_as_read(
    repo1: Toolkit, ds1: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The repository keeps what the source said; only damage inside the repository is detectable."""
    rewrite_randomly(ds1 / FAILING_FLAT, 77)
    with faulty_local_transports(monkeypatch, "rrF" + "r", only=f"*{FAILING}-flat.vmdk") as made:
        r = repo1("snapshot", str(ds1))
    (flip,) = made[0].faults_fired
    assert r.exit_code == 0, r.stdout + r.stderr
    assert repo1("verify", "--read-data").exit_code == 0

    out = tmp_path / "out"
    assert repo1("restore", "--as-of", now(), "--to", str(out)).exit_code == 0
    source = (ds1 / FAILING_FLAT).read_bytes()
    got = (out / FAILING_FLAT).read_bytes()
    expected = bytearray(source)
    expected[flip.offset : flip.offset + flip.size] = flip_bit(source[flip.offset : flip.offset + flip.size])
    assert got == bytes(expected) != source


def _restore_with_fault(
    repo1: Toolkit, out: Path, monkeypatch: pytest.MonkeyPatch, fault: str, *extra: str
) -> tuple[Result, list[Scripted]]:
    with faulty_local_transports(monkeypatch, "ww" + fault + "w", only=f"*{FAILING}-flat.vmdk") as made:
        r = repo1("restore", "--as-of", now(), "--to", str(out), *extra, json_out=True)
    return r, made


@pytest.mark.parametrize("fault", sorted(RAISING_WRITE_FAULTS))
def test_a_failed_destination_write_fails_that_volume_and_leaves_nothing(
    repo1: Toolkit, ds1: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    out = tmp_path / "out"
    r, made = _restore_with_fault(repo1, out, monkeypatch, fault)
    assert [c.action for c in made[0].faults_fired] == [fault]

    # Nothing under the final name, no partial file, and the other volumes complete.
    assert not (out / FAILING_FLAT).exists()
    assert leftovers(out) == []
    source = sha256_tree(ds1)
    restored = sha256_tree(out)
    assert {p: source[p] for p in restored} == restored
    assert {p for p in source if FAILING not in p} <= set(restored)

    assert "Traceback" not in r.stderr, r.stderr
    assert r.exit_code == 1, r.stdout + r.stderr
    status = {v["key"]: v for v in json.loads(r.stdout)["volumes"]}
    assert status[FAILING_KEY]["status"] == "failed"
    assert RAISING_WRITE_FAULTS[fault] in status[FAILING_KEY]["error"]
    assert {k: v["status"] for k, v in status.items() if k != FAILING_KEY} == {
        f"ds1/{APPS}/{n}.vmdk": "restored" for n in VOLUMES if n != FAILING
    }

    # A re-run without faults finishes the job and leaves the rest in place.
    r = repo1("restore", "--as-of", now(), "--to", str(out), json_out=True)
    assert r.exit_code == 0, r.stdout + r.stderr
    assert sha256_tree(out) == sha256_tree(ds1)


def test_disk_full_on_overwrite_keeps_the_previous_file(
    repo1: Toolkit, ds1: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    (out / APPS).mkdir(parents=True)
    (out / FAILING_FLAT).write_bytes(b"the copy already there")

    r, made = _restore_with_fault(repo1, out, monkeypatch, "D", "--overwrite")
    assert made[0].faults_fired

    assert (out / FAILING_FLAT).read_bytes() == b"the copy already there"
    assert leftovers(out) == []
    assert "Traceback" not in r.stderr, r.stderr
    assert r.exit_code == 1, r.stdout + r.stderr


@pytest.mark.parametrize("fault", SILENT_WRITE_FAULTS)
def test_bytes_lost_or_flipped_by_the_destination_are_not_put_in_place(
    repo1: Toolkit, ds1: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    """docs/format.md §7: restore checks the file digest of the bytes written before the rename."""
    out = tmp_path / "out"
    r, made = _restore_with_fault(repo1, out, monkeypatch, fault)
    assert [c.action for c in made[0].faults_fired] == [fault]

    assert leftovers(out) == []
    final = out / FAILING_FLAT
    assert not final.exists() or final.read_bytes() == (ds1 / FAILING_FLAT).read_bytes(), (
        "a damaged file was put in place under its final name"
    )
    assert r.exit_code == 1, r.stdout + r.stderr


def test_concurrent_faulty_reads_do_not_deadlock_a_snapshot(
    repo1: Toolkit, ds1: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every read of every file fails: each volume is recorded failed and the run still ends."""
    for name, seed in VOLUMES.items():
        rewrite_randomly(ds1 / f"{APPS}/{name}-flat.vmdk", seed + 200)
    done = threading.Event()
    result: dict[str, object] = {}

    def run() -> None:
        with faulty_local_transports(monkeypatch, "E", only=None):
            result["r"] = repo1("snapshot", str(ds1), json_out=True)
        done.set()

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    assert done.wait(60), "the snapshot hung on failing reads"
    r = result["r"]
    assert r.exit_code == 1  # type: ignore[attr-defined]
    states = {v["state"] for v in json.loads(r.stdout)["volumes"]}  # type: ignore[attr-defined]
    assert states == {"failed"}
    assert len(snapshot_ids(repo1)) == 2
    assert repo1("verify").exit_code == 0

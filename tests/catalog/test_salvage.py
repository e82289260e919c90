"""Salvage of damaged packs, the lost state, healing, and storage-health warnings, on repositories of real snapshots."""

from __future__ import annotations

import json
import os
import random
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import xxhash

from catalog import pack
from catalog.assemble import load_manifest
from catalog.check import LocalPackFile, PackFile, verify
from catalog.ingest import Ingester
from catalog.rebuild import rebuild_catalog
from catalog.repo import Repository
from catalog.salvage import PackNotFound, SalvageReport, _scan, find_lost, salvage
from catalog.store import Compressor, PackWriter
from catalog.types import HOLE_ID, TYPE_DATA, PackEntry
from toolkit.lab.corpus import make_volume

from ..conftest import Toolkit

APPS = "cloudvolumes/apps"
MIB = 1 << 20


def random_volume(root: Path, name: str, size_mib: int, seed: int) -> None:
    """A volume whose flat file is incompressible, so each 64 KiB chunk is one sizeable record."""
    make_volume(root, f"{APPS}/{name}.vmdk", size_mib=size_mib, seed=seed, real=False)
    rng = random.Random(seed)
    with (root / f"{APPS}/{name}-flat.vmdk").open("r+b") as f:
        for off in range(0, size_mib * MIB, MIB):
            f.seek(off)
            f.write(rng.randbytes(MIB))


@pytest.fixture
def site(toolkit: Toolkit, tmp_path: Path) -> tuple[Toolkit, Path]:
    root = tmp_path / "ds1"
    random_volume(root, "Visio", 4, seed=5)
    random_volume(root, "Project", 4, seed=6)
    assert toolkit("init", "--chunk-size", "64K").exit_code == 0
    assert toolkit("snapshot", str(root)).exit_code == 0
    return toolkit, root


@pytest.fixture
def repo_path(site: tuple[Toolkit, Path]) -> Path:
    return site[0].repo


class Opened:
    def __init__(self, path: Path) -> None:
        self.repo = Repository.open(path)

    def __enter__(self) -> Repository:
        return self.repo

    def __exit__(self, *_: object) -> None:
        self.repo.close()


def flat_chunks(repo: Repository, name: str) -> list[bytes]:
    """The data chunk ids of a volume's flat file, in file order (first version)."""
    version = next(v for v in repo.index.all_versions() if v.name == name)
    flat = next(f for f in repo.index.files(version.version_id) if f.role == "extent")
    return [c for c in load_manifest(repo.index, repo.reader, flat.manifest_id).chunk_ids if c != HOLE_ID]


def pack_of(repo_path: Path, name: str, min_records: int = 3) -> tuple[str, list[PackEntry], bytes]:
    """A pack of at least ``min_records`` data records (no manifest) holding a chunk of ``name``:
    (id, entries, that chunk)."""
    with Opened(repo_path) as repo:
        for cid in flat_chunks(repo, name):
            loc = repo.index.locate(cid)
            assert loc is not None
            entries = pack.parse_pack(loc.pack_id, repo.pack_file(loc.pack_id).read_bytes())
            if len(entries) >= min_records and all(e.type == TYPE_DATA for e in entries):
                return loc.pack_id, entries, cid
    raise AssertionError("no pack with enough records")


def pack_path(repo_path: Path, pack_id: str) -> Path:
    return repo_path / "packs" / pack_id[:2] / pack_id


def flip(path: Path, offset: int, mask: int = 0x01) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ mask]))


def run_salvage(repo_path: Path, **kwargs: Any) -> SalvageReport:
    with Opened(repo_path) as repo, repo.writing("repair --salvage"):
        return salvage(repo, **kwargs)


# -- pure: finding records in a damaged buffer ---------------------------------------------------


def _records(n: int) -> tuple[bytes, list[PackEntry]]:
    from catalog.chunker import chunk_id_of

    rng = random.Random(n)
    raws = [rng.randbytes(3000 + i) for i in range(n)]
    buf = pack.encode_pack(
        (PackEntry(chunk_id_of(r), TYPE_DATA, 0, len(r), len(r), 0, bytes(32)), r)  # type: ignore[arg-type]
        for r in raws
    )
    return buf, pack.parse_pack(xxhash.xxh3_128_hexdigest(buf), buf)


def test_scan_resumes_past_a_damaged_record_header_and_a_torn_tail() -> None:
    buf, entries = _records(5)
    damaged = bytearray(buf[: entries[4].offset + 10])  # torn inside the last record: no trailer
    damaged[entries[1].offset - pack.RECORD_HEADER_SIZE + 13] ^= 0xFF  # stored_size of record 1: walk breaks
    assert [e.chunk_id for e in pack.scan_records("x", bytes(damaged))] == [entries[0].chunk_id]
    found = [e for e in _scan(bytes(damaged)) if e.chunk_id in {x.chunk_id for x in entries}]
    assert [e.chunk_id for e in found] == [entries[0].chunk_id, entries[2].chunk_id, entries[3].chunk_id]
    assert found[1:] == entries[2:4]


# -- salvage on real snapshots ------------------------------------------------------------------


def test_a_clean_repository_needs_nothing(repo_path: Path) -> None:
    before = sorted(p.name for p in (repo_path / "packs").glob("*/*"))
    stray = next((repo_path / "packs").iterdir()) / "README.txt"  # not a pack: left alone
    stray.write_text("notes")
    report = run_salvage(repo_path)
    assert report.ok and not report.damaged and not report.new_packs
    assert report.packs_checked == len(before) > 3
    assert sorted(p.name for p in (repo_path / "packs").glob("*/*")) == sorted([*before, stray.name])
    assert not (repo_path / "quarantine").exists()


def test_a_flipped_bit_loses_one_chunk_and_recovers_the_rest(repo_path: Path) -> None:
    pack_id, entries, cid = pack_of(repo_path, "Visio")
    bad = next(e for e in entries if e.chunk_id == cid)
    original = pack_path(repo_path, pack_id).read_bytes()
    flip(pack_path(repo_path, pack_id), bad.offset + bad.stored_size // 2)

    report = run_salvage(repo_path)

    assert not report.ok
    (outcome,) = report.damaged
    assert outcome.pack_id == pack_id
    assert "fail their check" in outcome.reason
    assert outcome.chunks_lost == [cid.hex()]
    assert outcome.chunks_recovered + outcome.chunks_elsewhere == len(entries) - 1
    assert outcome.bytes_recovered == sum(e.raw_size for e in entries if e.chunk_id != cid)
    # Never deleted: moved, byte for byte, with a note saying what happened.
    assert outcome.quarantined == f"quarantine/{pack_id}"
    assert not pack_path(repo_path, pack_id).exists()
    moved = repo_path / "quarantine" / pack_id
    assert moved.read_bytes() != original and len(moved.read_bytes()) == len(original)
    note = json.loads((repo_path / "quarantine" / f"{pack_id}.json").read_text())
    assert note["pack_id"] == pack_id and note["chunks_lost"] == [cid.hex()]
    assert set(note["new_packs"]) == set(report.new_packs)
    # The lost chunk names exactly the versions that need it, with the size of what is lost.
    (lost,) = report.lost_files
    assert (lost.volume, lost.path) == (f"ds1/{APPS}/Visio.vmdk", f"{APPS}/Visio-flat.vmdk")
    assert (lost.chunks, lost.bytes, lost.manifest_lost) == (1, bad.raw_size, False)
    assert report.lost_chunks == 1
    with Opened(repo_path) as repo:
        assert set(repo.index.lost_chunks()) == {cid}
        assert repo.index.lost_chunks()[cid].pack_id == pack_id
        assert pack_id not in repo.index.pack_ids()
        for e in entries:  # every other record now lives in a new sealed pack
            if e.chunk_id != cid:
                loc = repo.index.locate(e.chunk_id)
                assert loc is not None and loc.pack_id in report.new_packs
                assert repo.reader.read(loc) is not None
        (row,) = repo.index.quarantined()
        assert (row.pack_id, row.chunks_lost, row.moved_at is not None) == (pack_id, 1, True)
        checked = verify(repo, read_data=True)
    assert [p.kind for p in checked.problems] == ["lost"]
    assert checked.problems[0].pack_id == pack_id
    assert {a.volume for a in checked.problems[0].affected} == {f"ds1/{APPS}/Visio.vmdk"}
    # Running it again finds nothing more to do, and still reports the loss.
    again = run_salvage(repo_path)
    assert not again.damaged and [f.path for f in again.lost_files] == [lost.path]


def test_a_truncated_trailer_loses_nothing(repo_path: Path) -> None:
    pack_id, entries, _ = pack_of(repo_path, "Project")
    path = pack_path(repo_path, pack_id)
    os.truncate(path, path.stat().st_size - 10)  # the footer is gone, every record intact
    report = run_salvage(repo_path)
    assert report.ok, report.to_json()
    (outcome,) = report.damaged
    assert "footer" in outcome.reason or "truncated" in outcome.reason
    assert outcome.chunks_recovered + outcome.chunks_elsewhere == len(entries)
    assert not outcome.chunks_lost
    assert (repo_path / "quarantine" / pack_id).exists()
    with Opened(repo_path) as repo:
        assert verify(repo, read_data=True).ok


def test_a_torn_tail_keeps_the_records_before_the_tear(repo_path: Path) -> None:
    pack_id, entries, _ = pack_of(repo_path, "Visio")
    path = pack_path(repo_path, pack_id)
    os.truncate(path, entries[1].offset + entries[1].stored_size // 2)
    report = run_salvage(repo_path)
    (outcome,) = report.damaged
    torn = {e.chunk_id.hex() for e in entries[1:]}
    assert set(outcome.chunks_lost) == torn
    assert outcome.chunks_recovered + outcome.chunks_elsewhere == 1
    assert not report.ok
    assert report.lost_chunks == len(torn) == sum(f.chunks for f in report.lost_files)
    assert not any(f.manifest_lost for f in report.lost_files)
    with Opened(repo_path) as repo:
        assert {c.hex() for c in repo.index.lost_chunks()} == torn


def test_a_pack_the_catalog_never_indexed_is_salvaged_from_its_record_headers(repo_path: Path) -> None:
    """A torn pack that a catalog rebuild skipped: only its record headers describe it."""
    pack_id, entries, _ = pack_of(repo_path, "Visio")
    path = pack_path(repo_path, pack_id)
    os.truncate(path, entries[-1].offset + 5)
    rebuilt = rebuild_catalog(repo_path)
    assert rebuilt["lost_chunks"] == len(entries)  # the rebuild skipped the pack: all of it counts as lost
    report = run_salvage(repo_path)
    (outcome,) = report.damaged
    assert outcome.chunks_recovered == len(entries) - 1
    with Opened(repo_path) as repo:
        assert set(repo.index.lost_chunks()) == {entries[-1].chunk_id}


def test_a_new_pack_identical_to_the_original_keeps_its_name_and_the_damaged_copy(
    toolkit: Toolkit, tmp_path: Path
) -> None:
    """One record per pack (1 MiB chunks), footer damaged: the recovered pack is the original, byte for byte."""
    root = tmp_path / "ds1"
    random_volume(root, "Solo", 4, seed=8)
    assert toolkit("init").exit_code == 0
    assert toolkit("snapshot", str(root)).exit_code == 0
    with Opened(toolkit.repo) as repo:
        cid = flat_chunks(repo, "Solo")[1]
        loc = repo.index.locate(cid)
        assert loc is not None
    path = pack_path(toolkit.repo, loc.pack_id)
    original = path.read_bytes()
    assert len(pack.parse_pack(loc.pack_id, original)) == 1
    flip(path, len(original) - 3)  # inside the footer magic
    report = run_salvage(toolkit.repo)
    assert report.ok, report.to_json()
    (outcome,) = report.damaged
    assert report.new_packs == [loc.pack_id] and outcome.quarantined == f"quarantine/{loc.pack_id}"
    assert path.read_bytes() == original  # sound again under its own name, and in use
    assert (toolkit.repo / "quarantine" / loc.pack_id).read_bytes() != original  # the damaged bytes are kept
    with Opened(toolkit.repo) as repo:
        assert loc.pack_id in repo.index.pack_ids() and not repo.index.lost_chunks()
        assert verify(repo, read_data=True).ok
    assert run_salvage(toolkit.repo).ok and not run_salvage(toolkit.repo).damaged


def test_a_missing_pack_file_is_taken_out_of_use(repo_path: Path) -> None:
    pack_id, entries, _ = pack_of(repo_path, "Visio")
    pack_path(repo_path, pack_id).unlink()
    report = run_salvage(repo_path)
    (outcome,) = report.damaged
    assert outcome.reason == "pack file is missing" and outcome.quarantined is None
    assert set(outcome.chunks_lost) == {e.chunk_id.hex() for e in entries}
    with Opened(repo_path) as repo:
        assert pack_id not in repo.index.pack_ids()
        assert [p.kind for p in verify(repo).problems] == ["lost"]


def test_dry_run_changes_nothing_and_predicts_the_real_run(repo_path: Path) -> None:
    pack_id, entries, cid = pack_of(repo_path, "Visio")
    bad = next(e for e in entries if e.chunk_id == cid)
    flip(pack_path(repo_path, pack_id), bad.offset + 3)
    before = {p: p.read_bytes() for p in repo_path.glob("packs/*/*")}
    dry = run_salvage(repo_path, dry_run=True)
    assert {p: p.read_bytes() for p in repo_path.glob("packs/*/*")} == before
    assert not (repo_path / "quarantine").exists() and not dry.new_packs
    with Opened(repo_path) as repo:
        assert not repo.index.lost_chunks() and pack_id in repo.index.pack_ids()
    real = run_salvage(repo_path)
    assert [d.to_json() | {"quarantined": None} for d in dry.damaged] == [
        d.to_json() | {"quarantined": None} for d in real.damaged
    ]
    assert dry.lost_files == real.lost_files and dry.lost_chunks == real.lost_chunks == 1


def test_only_the_named_pack_is_read(repo_path: Path) -> None:
    pack_id, _entries, _ = pack_of(repo_path, "Visio")
    report = run_salvage(repo_path, pack_ids=[pack_id[:10]])
    assert report.packs_checked == 1 and report.ok
    with pytest.raises(PackNotFound):
        run_salvage(repo_path, pack_ids=["0123456789abcdef"])
    with pytest.raises(PackNotFound):
        run_salvage(repo_path, pack_ids=[pack_id[:4]])  # too short to name one pack for sure


def test_a_lost_manifest_loses_the_whole_file(repo_path: Path) -> None:
    with Opened(repo_path) as repo:
        version = next(v for v in repo.index.all_versions() if v.name == "Visio")
        flat = next(f for f in repo.index.files(version.version_id) if f.role == "extent")
        loc = repo.index.locate(flat.manifest_id)
        assert loc is not None
    flip(pack_path(repo_path, loc.pack_id), loc.offset + loc.stored_size // 2)
    report = run_salvage(repo_path)
    lost = [f for f in report.lost_files if f.path == flat.path]
    assert len(lost) == 1 and lost[0].manifest_lost and lost[0].bytes == flat.size
    with Opened(repo_path) as repo:
        assert repo.index.has_lost(flat.manifest_id)


# -- crash safety ---------------------------------------------------------------------------------


def salvage_killed_at(repo_path: Path, monkeypatch: pytest.MonkeyPatch, step: str) -> tuple[str, list[Any], Any]:
    """Damage one record of Visio's pack, then run salvage and kill it as it reaches ``step`` (a salvage function).

    Returns the pack id, its entries and the id of the damaged chunk.
    """
    import catalog.salvage as mod

    pack_id, entries, cid = pack_of(repo_path, "Visio")
    flip(pack_path(repo_path, pack_id), next(e for e in entries if e.chunk_id == cid).offset + 1)

    def killed(*_: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(mod, step, killed)
    with pytest.raises(KeyboardInterrupt):
        run_salvage(repo_path)
    monkeypatch.undo()
    return pack_id, entries, cid


def test_interrupted_before_the_catalog_update_a_rerun_finishes(
    repo_path: Path, site: tuple[Toolkit, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed after the new packs are durable: the damaged pack is still in use, nothing is lost yet."""
    pack_id, entries, cid = salvage_killed_at(repo_path, monkeypatch, "_write_note")
    with Opened(repo_path) as repo:
        assert pack_id in repo.index.pack_ids()
        for e in entries:  # what was recovered is already read from the new packs
            loc = repo.index.locate(e.chunk_id)
            assert loc is not None and (loc.pack_id != pack_id) == (e.chunk_id != cid)
    toolkit, _root = site
    assert toolkit("verify").exit_code == 0  # usable: metadata consistent; only the damaged record is bad
    report = run_salvage(repo_path)
    (outcome,) = report.damaged
    assert outcome.chunks_lost == [cid.hex()] and not report.new_packs  # the first run stored the rest
    assert sorted(p.name for p in (repo_path / "quarantine").iterdir()) == [pack_id, f"{pack_id}.json"]


def test_interrupted_before_the_move_no_writer_uses_the_pack_again(
    repo_path: Path, site: tuple[Toolkit, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed after the catalog dropped the pack but before it was moved: a snapshot must not index it again."""
    pack_id, _entries, cid = salvage_killed_at(repo_path, monkeypatch, "_put_aside")
    assert pack_path(repo_path, pack_id).exists()
    toolkit, root = site
    random_volume(root, "Other", 4, seed=9)
    assert toolkit("snapshot", str(root)).exit_code == 0  # reconciles: must leave the damaged pack alone
    with Opened(repo_path) as repo:
        assert pack_id not in repo.index.pack_ids()
        assert repo.index.locate(cid) is not None  # the snapshot re-read Visio and stored the chunk again
    report = run_salvage(repo_path)
    assert report.finished == [pack_id] and report.ok
    assert (repo_path / "quarantine" / pack_id).exists() and not pack_path(repo_path, pack_id).exists()


def test_a_rebuild_after_an_interrupted_move_quarantines_the_pack(
    repo_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pack_id, _entries, _cid = salvage_killed_at(repo_path, monkeypatch, "_put_aside")
    for p in repo_path.glob("catalog.db*"):
        p.unlink()
    result = rebuild_catalog(repo_path)
    assert result["quarantined_packs"] == 1 and result["lost_chunks"] == 1
    assert (repo_path / "quarantine" / pack_id).exists() and not pack_path(repo_path, pack_id).exists()


# -- the lost state: rebuild, heal, old catalogs -------------------------------------------------------


def test_the_lost_state_survives_a_catalog_rebuild(repo_path: Path) -> None:
    pack_id, entries, cid = pack_of(repo_path, "Visio")
    flip(pack_path(repo_path, pack_id), next(e for e in entries if e.chunk_id == cid).offset + 1)
    first = run_salvage(repo_path)
    for p in repo_path.glob("catalog.db*"):
        p.unlink()
    result = rebuild_catalog(repo_path)
    assert (result["quarantined_packs"], result["lost_chunks"]) == (1, 1)
    with Opened(repo_path) as repo:
        lost = repo.index.lost_chunks()
        assert set(lost) == {cid} and lost[cid].pack_id == pack_id
        assert [q.pack_id for q in repo.index.quarantined()] == [pack_id]
        problems = verify(repo, read_data=True).problems
    assert [(p.kind, p.pack_id) for p in problems] == [("lost", pack_id)]
    assert run_salvage(repo_path).lost_files == first.lost_files


def test_storing_a_lost_chunk_again_heals_every_version_that_names_it(
    repo_path: Path, site: tuple[Toolkit, Path]
) -> None:
    _, root = site
    pack_id, entries, cid = pack_of(repo_path, "Visio")
    flip(pack_path(repo_path, pack_id), next(e for e in entries if e.chunk_id == cid).offset + 1)
    run_salvage(repo_path)
    data = (root / f"{APPS}/Visio-flat.vmdk").read_bytes()
    with Opened(repo_path) as repo:
        version = next(v for v in repo.index.all_versions() if v.name == "Visio")
        flat = next(f for f in repo.index.files(version.version_id) if f.role == "extent")
        writer = PackWriter(repo.root, lambda p, s, e: repo.index.add_pack(p, s, e, "t"), 1 << 20)
        ingester = Ingester(repo.index, writer, repo.config.chunk_size, Compressor())
        try:
            assert ingester.needs_reading(flat.manifest_id)
            result = ingester.ingest(lambda off, n: data[off : off + n], len(data))
            writer.seal()
        finally:
            ingester.close()
        assert result.manifest_id == flat.manifest_id
        assert result.stats.new_chunks == 1  # only the lost chunk: the rest is deduplicated
        assert not ingester.needs_reading(flat.manifest_id)
        assert not repo.index.lost_chunks()
        assert verify(repo, read_data=True).ok
        assert not find_lost(repo)


def test_a_catalog_from_before_the_lost_state_opens_and_gains_it(repo_path: Path) -> None:
    conn = sqlite3.connect(repo_path / "catalog.db")
    conn.executescript("DROP TABLE lost_chunks; DROP TABLE lost_uses; DROP TABLE quarantine;")
    conn.close()
    ro = Repository.open(repo_path, readonly=True)
    try:
        assert ro.index.lost_chunks() == {} and ro.index.quarantined() == []
        assert not ro.index.has_lost(b"\x01" * 16)
        assert verify(ro).ok
    finally:
        ro.close()
    assert run_salvage(repo_path).ok  # a writer adds the tables
    conn = sqlite3.connect(repo_path / "catalog.db")
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    conn.close()
    assert {"lost_chunks", "lost_uses", "quarantine"} <= names


# -- storage health: a read that fails once ----------------------------------------------------------


class FlakyPack:
    """A pack file whose reads covering ``offset`` return one flipped bit, ``times`` times."""

    def __init__(self, path: Path, offset: int, state: dict[str, int]) -> None:
        self.inner = LocalPackFile(path)
        self.offset = offset
        self.state = state

    def size(self) -> int:
        return self.inner.size()

    def read(self, offset: int, size: int) -> bytes:
        data = self.inner.read(offset, size)
        if offset <= self.offset < offset + len(data) and self.state["times"] > 0:
            self.state["times"] -= 1
            i = self.offset - offset
            data = data[:i] + bytes([data[i] ^ 0x04]) + data[i + 1 :]
        return data

    def close(self) -> None:
        self.inner.close()


def flaky_opener(pack_id: str, offset: int, times: int) -> tuple[dict[str, int], object]:
    state = {"times": times}

    def open_pack(path: Path) -> PackFile:
        if path.name == pack_id:
            return FlakyPack(path, offset, state)
        return LocalPackFile(path)

    return state, open_pack


@pytest.mark.parametrize("times", [1, 1000])
def test_a_chunk_that_reads_sound_the_second_time_is_a_storage_warning(repo_path: Path, times: int) -> None:
    pack_id, entries, cid = pack_of(repo_path, "Visio")
    bad = next(e for e in entries if e.chunk_id == cid)
    state, opener = flaky_opener(pack_id, bad.offset + 17, times)
    with Opened(repo_path) as repo:
        report = verify(repo, read_data=True, open_pack=opener)  # type: ignore[arg-type]
    if times == 1:  # fails once, then reads sound: a warning, no damage
        assert report.ok and state["times"] == 0
        (warning,) = report.storage_health
        assert (warning.pack_id, warning.chunk_id) == (pack_id, cid.hex())
        assert "content does not match its id" in warning.detail
    else:  # fails every time: damage, named
        assert not report.ok and not report.storage_health
        assert any(p.kind == "chunk" and p.chunk_ids == [cid.hex()] for p in report.problems)


def test_salvage_leaves_a_pack_alone_that_reads_sound_the_second_time(repo_path: Path) -> None:
    pack_id, entries, _ = pack_of(repo_path, "Visio")
    _state, opener = flaky_opener(pack_id, entries[0].offset + 5, 1)
    report = run_salvage(repo_path, open_pack=opener)
    assert report.ok and not report.damaged
    assert [w.pack_id for w in report.storage_health] == [pack_id]
    assert pack_path(repo_path, pack_id).exists()

"""Salvage damaged packs: keep every record that still proves itself, quarantine the pack, record what is lost.

A pack is damaged when its file is missing, its trailer does not parse, a record
fails its check (decodes to bytes whose xxh3-128 is its chunk id), the trailer
disagrees with the catalog, or the file no longer hashes to its name. A pack that
fails on one read and passes on a second is sound: that is a storage-health
warning, and the pack is left alone.

From a damaged pack, every record that verifies is recovered, wherever its
description survives: the catalog's rows, the trailer index, or its own record
header (found by its magic even past a damaged record or a torn tail). Records
are self-describing, so nothing but :func:`catalog.store.check_chunk` decides
what is sound. Recovered chunks are written into new sealed packs; the damaged
pack is moved to ``quarantine/`` (never deleted).

A chunk is *lost* when a file version references it (or it is the version's
manifest) and no pack holds it. That is derived from the manifests and the packs
alone, so a catalog rebuild finds the same lost chunks; the catalog keeps them in
``lost_chunks``/``lost_uses`` so that a snapshot reads such files again (and so
stores the chunks again when the volume is still on its datastore).

Order, under the writer lock (each step durable before the next):

1. recovered chunks are written into new packs (tmp, fsync, rename) and the
   catalog points at them;
2. a note ``quarantine/<pack_id>.json`` says what was recovered and lost;
3. one catalog transaction forgets the damaged pack, lists it as quarantined but
   not yet moved (so no writer indexes it again) and sets the lost state;
4. the pack's name in ``packs/`` is dropped, and the catalog notes the move.

Step 1 starts by hard-linking the damaged file into ``quarantine/``, so its bytes
are kept even when a new pack turns out to be the pack's original content and
takes its name in ``packs/`` (then that pack is sound and stays in use).

A crash before 3 leaves the damaged pack in use for what was not recovered (the
next repair does it again, reusing the link and finding the recovered chunks
already stored); after 3 the next repair (or catalog rebuild) finishes the move.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import xxhash

from catalog import pack
from catalog.assemble import load_manifest
from catalog.check import OpenPack, StorageWarning, open_pack_file
from catalog.crypto import RepoKeys
from catalog.errors import ChunkCorrupt, Error, PackCorrupt
from catalog.index import LostChunk, QuarantineRow
from catalog.manifest import Manifest, decode_manifest
from catalog.repo import Repository, now_iso, write_atomic
from catalog.store import PackWriter, check_chunk, fsync_dir, sha256_field
from catalog.types import HOLE_ID, TYPE_DATA, TYPE_MANIFEST, ChunkId, PackEntry, PackId

log = logging.getLogger(__name__)

QUARANTINE_DIR: Final = "quarantine"
NOTE_FORMAT: Final = "appstack-toolkit-quarantine"
READ_BLOCK: Final = 4 << 20  # packs are read whole (tens of MiB); in blocks so progress moves
MAX_RAW_BYTES: Final = 1 << 30  # above any chunk or manifest written; a larger size is a damaged header
MIN_PACK_PREFIX: Final = 8  # hex digits of a pack id an operator must give (verify prints 12)
PACK_NAME: Final = re.compile(r"[0-9a-f]{32}")  # anything else under packs/ is not a pack and is left alone

Progress = Callable[[int], None]
Rows = dict[bytes, tuple[int, int, int, int, int, bytes]]  # catalog rows of a pack, as Index.chunks_in_pack


class PackNotFound(Error):
    template = "no pack {pack_id} in the repository"
    hint = "give a pack id (at least 8 hex digits) as `toolkit verify --read-data` names it"
    code = "pack_not_found"


@dataclass(slots=True)
class PackOutcome:
    """What salvage found in, and did with, one damaged pack."""

    pack_id: str
    reason: str
    chunks_recovered: int = 0
    bytes_recovered: int = 0  # raw bytes of the recovered chunks
    chunks_elsewhere: int = 0  # unreadable here, but a sound pack holds them too
    chunks_lost: list[str] = field(default_factory=list)  # hex ids the catalog or trailer knew, not recovered
    quarantined: str | None = None  # where the file went, relative to the repository

    def to_json(self) -> dict[str, Any]:
        return {
            "pack_id": self.pack_id,
            "reason": self.reason,
            "chunks_recovered": self.chunks_recovered,
            "bytes_recovered": self.bytes_recovered,
            "chunks_elsewhere": self.chunks_elsewhere,
            "chunks_lost": self.chunks_lost,
            "quarantined": self.quarantined,
        }


@dataclass(frozen=True, slots=True)
class LostFile:
    """A stored file version that cannot be restored whole: some of its chunks (or its manifest) are lost."""

    volume: str
    snapshot_id: str
    created_at: str
    path: str
    chunks: int  # chunk positions of the file whose data is lost
    bytes: int  # bytes of the file those positions cover
    manifest_lost: bool  # the whole file is lost: its list of chunks is

    def to_json(self) -> dict[str, Any]:
        return {
            "volume": self.volume,
            "snapshot": self.snapshot_id,
            "created_at": self.created_at,
            "path": self.path,
            "lost_chunks": self.chunks,
            "lost_bytes": self.bytes,
            "manifest_lost": self.manifest_lost,
        }


@dataclass(slots=True)
class SalvageReport:
    dry_run: bool
    packs_checked: int = 0
    bytes_read: int = 0
    damaged: list[PackOutcome] = field(default_factory=list)
    new_packs: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)  # quarantine moves an interrupted repair left
    storage_health: list[StorageWarning] = field(default_factory=list)
    lost_chunks: int = 0
    lost_files: list[LostFile] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Nothing any stored version needs is lost."""
        return self.lost_chunks == 0 and not self.lost_files

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "dry_run": self.dry_run,
            "packs_checked": self.packs_checked,
            "bytes_read": self.bytes_read,
            "damaged": [d.to_json() for d in self.damaged],
            "new_packs": self.new_packs,
            "finished_quarantine": self.finished,
            "storage_health": [w.to_json() for w in self.storage_health],
            "lost_chunks": self.lost_chunks,
            "lost": [f.to_json() for f in self.lost_files],
        }


@dataclass(slots=True)
class _Damaged:
    pack_id: str
    reason: str
    reads: list[bytes]  # the pack's bytes as read (twice when the reads differ); empty when missing
    rows: Rows
    indexed: bool
    outcome: PackOutcome


@dataclass(slots=True)
class _Recovered:
    entry: PackEntry
    stored: bytes
    sha256: bytes  # the record's SHA-256 field (sealed in an encrypted repository)
    raw: bytes | None  # kept for manifests only (a dry run decodes them)
    origin: str


# -- reading and judging a pack -----------------------------------------------------------------


def _read_whole(open_pack: OpenPack, path: Path, progress: Progress | None) -> bytes:
    pf = open_pack(path)
    try:
        size = pf.size()
        parts = []
        pos = 0
        while pos < size:
            part = pf.read(pos, min(READ_BLOCK, size - pos))
            if not part:
                break
            parts.append(part)
            pos += len(part)
            if progress is not None:
                progress(len(part))
        return b"".join(parts)
    finally:
        pf.close()


def _verified(keys: RepoKeys | None, pack_id: str, buf: bytes, entry: PackEntry) -> bytes | None:
    """The raw bytes of the record ``entry`` describes, if they prove to be its chunk.

    The record's SHA-256 field is not trusted (a new one is computed from the content), so
    a record whose only damage is that field is recovered whole.
    """
    if entry.type not in (TYPE_DATA, TYPE_MANIFEST) or entry.raw_size > MAX_RAW_BYTES:
        return None
    if entry.offset < pack.HEADER_SIZE or entry.offset + entry.stored_size > len(buf):
        return None
    stored = buf[entry.offset : entry.offset + entry.stored_size]
    try:
        return check_chunk(entry.chunk_id, pack_id, entry.codec, stored, entry.raw_size, keys=keys, type_=entry.type)
    except ChunkCorrupt:
        return None


def _row_entry(cid: bytes, row: tuple[int, int, int, int, int, bytes]) -> PackEntry:
    type_, offset, stored_size, raw_size, codec, sha = row
    return PackEntry(ChunkId(cid), type_, codec, raw_size, stored_size, offset, sha)


def _fault(keys: RepoKeys | None, pack_id: str, buf: bytes, rows: Rows) -> str | None:
    """Why this copy of the pack is damaged, or None when it is sound."""
    try:
        entries = pack.parse_pack(pack_id, buf)
    except PackCorrupt as exc:
        return str(exc.fields["detail"])
    bad = sum(1 for e in entries if _verified(keys, pack_id, buf, e) is None)
    if bad:
        return f"{bad} of {len(entries)} record(s) fail their check"
    by_id = {e.chunk_id: e for e in entries}
    # The catalog may index fewer of the pack's chunks (a copy in another pack came first), never other ones.
    if any(by_id.get(ChunkId(cid)) != _row_entry(cid, row) for cid, row in rows.items()):
        return "its trailer index does not match the catalog"
    if xxhash.xxh3_128_hexdigest(buf) != pack_id:
        return "content does not match its name (xxh3-128)"
    return None


def _scan(buf: bytes) -> Iterator[PackEntry]:
    """Every record header found by its magic, front to back, resuming after any damaged stretch."""
    pos = buf.find(pack.RECORD_MAGIC, pack.HEADER_SIZE)
    while pos >= 0 and pos + pack.RECORD_HEADER_SIZE <= len(buf):
        _magic, type_, codec, _res, raw_size, stored_size, chunk_id, sha = pack.RECORD.unpack_from(buf, pos)
        data_at = pos + pack.RECORD_HEADER_SIZE
        if data_at + stored_size <= len(buf):
            yield PackEntry(ChunkId(chunk_id), type_, codec, raw_size, stored_size, data_at, sha)
        pos = buf.find(pack.RECORD_MAGIC, pos + 1)


def _candidates(pack_id: str, buf: bytes, rows: Rows) -> Iterator[PackEntry]:
    """Descriptions of the records, most trusted first: the catalog, the trailer, the record headers."""
    for cid, row in rows.items():
        yield _row_entry(cid, row)
    try:
        trailer = pack.parse_pack(pack_id, buf)
    except PackCorrupt:
        trailer = []
    yield from trailer
    yield from _scan(buf)


def _trailer_ids(pack_id: str, reads: Sequence[bytes]) -> set[bytes]:
    for buf in reads:
        try:
            return {e.chunk_id for e in pack.parse_pack(pack_id, buf)}
        except PackCorrupt:
            continue
    return set()


def _examine(
    repo: Repository,
    pack_id: str,
    indexed: bool,
    open_pack: OpenPack,
    report: SalvageReport,
    progress: Progress | None,
) -> _Damaged | None:
    """Read a pack (twice if the first read fails its checks); None when it is sound."""
    rows = repo.index.chunks_in_pack(pack_id) if indexed else {}
    path = repo.pack_file(pack_id)
    report.packs_checked += 1
    try:
        first = _read_whole(open_pack, path, progress)
    except FileNotFoundError:
        return _Damaged(
            pack_id, "pack file is missing", [], rows, indexed, PackOutcome(pack_id, "pack file is missing")
        )
    report.bytes_read += len(first)
    why = _fault(repo.keys, pack_id, first, rows)
    if why is None:
        return None
    second = _read_whole(open_pack, path, progress)
    report.bytes_read += len(second)
    again = _fault(repo.keys, pack_id, second, rows)
    if again is None:
        report.storage_health.append(StorageWarning(pack_id, None, why))
        return None
    reads = [second] if second == first else [second, first]
    return _Damaged(pack_id, again, reads, rows, indexed, PackOutcome(pack_id, again))


def _recover(keys: RepoKeys | None, damaged: _Damaged, found: dict[bytes, _Recovered]) -> None:
    """Every record of a damaged pack that verifies, into ``found`` (first sound copy of each chunk wins).

    Stored bytes are kept as they are (compressed, and encrypted in an encrypted repository);
    the SHA-256 field is made afresh from the content (sealed when encrypted).
    """
    for buf in damaged.reads:
        for entry in _candidates(damaged.pack_id, buf, damaged.rows):
            if entry.chunk_id in found:
                continue
            raw = _verified(keys, damaged.pack_id, buf, entry)
            if raw is None:
                continue
            stored = buf[entry.offset : entry.offset + entry.stored_size]
            keep = raw if entry.type == TYPE_MANIFEST else None
            sha = sha256_field(keys, entry.chunk_id, hashlib.sha256(raw).digest())
            found[entry.chunk_id] = _Recovered(entry, stored, sha, keep, damaged.pack_id)


# -- what is lost -------------------------------------------------------------------------------


def find_lost(
    repo: Repository,
    *,
    gone_packs: Iterable[str] = (),
    recovered: Mapping[bytes, bytes | None] | None = None,
) -> dict[bytes, set[bytes]]:
    """manifest id -> the chunks it needs that no pack holds (its own id when the manifest itself is lost).

    A chunk is held when the catalog places it in a pack not in ``gone_packs``, or it is in
    ``recovered`` (chunk id -> raw bytes for manifests, None for data: what a dry run would store).
    A manifest that is stored but does not decode is damaged, not lost: verify names it.
    """
    index = repo.index
    gone = set(gone_packs)
    extra = recovered or {}
    out: dict[bytes, set[bytes]] = {}

    def held(cid: bytes, pack_id: str | None) -> bool:
        return cid in extra or (pack_id is not None and pack_id not in gone)

    for mid in index.manifests_in_use(set()):
        loc = index.locate(ChunkId(mid))
        if not held(mid, loc.pack_id if loc else None):
            out[mid] = {mid}
            continue
        try:
            raw = extra.get(mid)
            manifest = decode_manifest(mid.hex(), raw) if raw is not None else load_manifest(index, repo.reader, mid)
        except Error:
            continue
        ids: set[bytes] = {c for c in manifest.chunk_ids if c != HOLE_ID}
        where = index.locate_many(ChunkId(c) for c in ids)
        missing = {c for c in ids if not held(c, where[c].pack_id if c in where else None)}
        if missing:
            out[mid] = missing
    return out


def lost_files(
    repo: Repository, uses: Mapping[bytes, set[bytes]], recovered: Mapping[bytes, bytes | None] | None = None
) -> list[LostFile]:
    """Every file version that needs a lost chunk: how many of its chunks, and how many bytes, are lost."""
    index = repo.index
    out = []
    for mid, cids in uses.items():
        versions = index.versions_using_manifests([mid])
        if not versions:
            continue
        if mid in cids:
            size = index.file_size_of(mid) or 0
            info = index.manifest_info(mid)
            chunks = info[1] - info[2] if info else -(-size // repo.config.chunk_size)
            lost_bytes, whole = size, True
        else:
            raw = (recovered or {}).get(mid)
            try:
                manifest: Manifest = (
                    decode_manifest(mid.hex(), raw) if raw is not None else load_manifest(index, repo.reader, mid)
                )
            except Error:
                continue
            spans = [size for _off, size, cid in manifest.entries() if cid in cids]
            chunks, lost_bytes, whole = len(spans), sum(spans), False
        out += [LostFile(v, s, t, p, chunks, lost_bytes, whole) for v, s, t, p in versions]
    return sorted(out, key=lambda f: (f.volume, f.created_at, f.path))


def _lost_rows(
    uses: Mapping[bytes, set[bytes]], origins: Mapping[bytes, tuple[str, str]], when: str
) -> list[LostChunk]:
    rows: dict[bytes, LostChunk] = {}
    for mid, cids in uses.items():
        for cid in cids:
            pack_id, why = origins.get(cid, ("", "no pack holds it"))
            type_ = TYPE_MANIFEST if cid == mid else TYPE_DATA
            rows[cid] = LostChunk(ChunkId(cid), type_, pack_id or None, when, why)
    return list(rows.values())


def _pairs(uses: Mapping[bytes, set[bytes]]) -> list[tuple[bytes, bytes]]:
    return [(mid, cid) for mid, cids in uses.items() for cid in cids]


# -- quarantine ---------------------------------------------------------------------------------


def quarantine_dir(root: Path) -> Path:
    return root / QUARANTINE_DIR


def _destination(root: Path, pack_id: str) -> Path:
    """A free name in quarantine/ for this pack (the same pack id can be quarantined twice)."""
    qdir = quarantine_dir(root)
    qdir.mkdir(mode=0o700, exist_ok=True)
    dest, n = qdir / pack_id, 1
    while dest.exists():
        n += 1
        dest = qdir / f"{pack_id}.{n}"
    return dest


def _linked(root: Path, src: Path, pack_id: str) -> Path | None:
    """The name in quarantine/ that is the same file as ``src`` (a link made earlier), if any."""
    qdir = quarantine_dir(root)
    for cand in sorted(qdir.glob(f"{pack_id}*")):
        if cand.suffix != ".json" and cand.samefile(src):
            return cand
    return None


def _link_aside(repo: Repository, pack_id: str) -> Path:
    """Give the damaged pack file a second name in quarantine/ (a hard link: no bytes copied).

    Made before new packs are written: a new pack that happens to be byte for byte the
    pack's original content gets the same name in ``packs/`` and replaces the damaged
    file there, which must still be kept.
    """
    src = repo.pack_file(pack_id)
    existing = _linked(repo.root, src, pack_id)
    if existing is not None:
        return existing
    dest = _destination(repo.root, pack_id)
    dest.hardlink_to(src)
    fsync_dir(dest.parent)
    return dest


def _put_aside(repo: Repository, pack_id: str, dest: Path | None = None) -> Path | None:
    """Take the damaged pack file out of ``packs/``: drop that name when ``quarantine/`` already has
    the file (``dest`` or an earlier link), else rename it there. None when it is not in ``packs/``,
    or when ``packs/`` holds another file by now (a sound pack of the same content)."""
    src = repo.pack_file(pack_id)
    if not src.exists():
        return None
    kept = dest if dest is not None and dest.exists() else _linked(repo.root, src, pack_id)
    if kept is not None:
        if not kept.samefile(src):
            return None
        src.unlink()
    else:
        kept = _destination(repo.root, pack_id)
        src.replace(kept)
        fsync_dir(kept.parent)
    fsync_dir(src.parent)
    return kept


def _write_note(repo: Repository, dest: Path, outcome: PackOutcome, new_packs: list[str], when: str) -> None:
    note = {
        "format": NOTE_FORMAT,
        "version": 1,
        "pack_id": outcome.pack_id,
        "quarantined_at": when,
        "reason": outcome.reason,
        "chunks_recovered": outcome.chunks_recovered,
        "chunks_elsewhere": outcome.chunks_elsewhere,
        "chunks_lost": outcome.chunks_lost,
        "new_packs": new_packs,
    }
    data = json.dumps(note, sort_keys=True, indent=1).encode() + b"\n"
    write_atomic(repo.root, dest.parent / f"{dest.name}.json", data)


def read_notes(root: Path) -> list[dict[str, Any]]:
    """The quarantine notes, oldest first (unreadable ones are skipped with a log line)."""
    notes = []
    for path in sorted(quarantine_dir(root).glob("*.json")):
        try:
            note = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            log.warning("quarantine note %s is unreadable: %s", path.name, exc)
            continue
        if isinstance(note, dict) and note.get("format") == NOTE_FORMAT and isinstance(note.get("pack_id"), str):
            notes.append(note | {"file": path.name.removesuffix(".json")})
    return sorted(notes, key=lambda n: str(n.get("quarantined_at", "")))


def finish_quarantine(repo: Repository) -> list[str]:
    """Move the packs an interrupted repair took out of use but did not move yet; their ids."""
    done = []
    for q in repo.index.quarantined():
        if q.moved_at is not None:
            continue
        _put_aside(repo, q.pack_id)
        repo.index.quarantine_moved(q.pack_id, now_iso())
        done.append(q.pack_id)
    return done


def restore_quarantine_state(repo: Repository) -> int:
    """After a catalog rebuild: finish moves the notes ask for, list the quarantined packs, set the lost state.

    A pack that has a note but is still in ``packs/`` was taken out of use by a repair
    that stopped before moving it, unless it hashes to its name (a sound copy was put
    back, or a snapshot wrote the same records again), in which case it stays and is
    indexed as usual. Call before
    :meth:`Repository.reconcile`; call :func:`record_lost` after it. Returns the
    number of quarantined packs listed.
    """
    listed = 0
    for note in read_notes(repo.root):
        pack_id = note["pack_id"]
        src = repo.pack_file(pack_id)
        if src.exists() and xxhash.xxh3_128_hexdigest(src.read_bytes()) != pack_id:
            _put_aside(repo, pack_id)
        repo.index.add_quarantine(
            QuarantineRow(
                pack_id,
                str(note.get("quarantined_at", "")),
                str(note.get("reason", "")),
                int(note.get("chunks_recovered", 0)),
                len(note.get("chunks_lost", [])),
                now_iso(),
            )
        )
        listed += 1
    return listed


def record_lost(repo: Repository) -> int:
    """Derive the lost chunks from manifests and packs and store that state; how many chunks are lost."""
    origins: dict[bytes, tuple[str, str]] = {}
    for note in read_notes(repo.root):
        for chex in note.get("chunks_lost", []):
            try:
                origins[bytes.fromhex(chex)] = (note["pack_id"], f"pack {note['pack_id']} damaged: {note['reason']}")
            except (ValueError, TypeError):
                continue
    uses = find_lost(repo)
    rows = _lost_rows(uses, origins, now_iso())
    repo.index.set_lost(rows, _pairs(uses))
    return len(rows)


# -- the job ------------------------------------------------------------------------------------


def _select(repo: Repository, pack_ids: Sequence[str] | None) -> list[tuple[str, bool]]:
    """(pack id, indexed) of the packs to check: catalog packs and pack files the catalog could not index."""
    indexed = repo.index.pack_ids()
    on_disk = {pid for pid, path in repo.iter_pack_files() if PACK_NAME.fullmatch(pid) and path.parent.name == pid[:2]}
    every = sorted(indexed | on_disk)
    if not pack_ids:
        return [(pid, pid in indexed) for pid in every]
    chosen = []
    for want in pack_ids:
        w = want.strip().lower()
        hits = [pid for pid in every if pid.startswith(w)] if len(w) >= MIN_PACK_PREFIX else []
        if len(hits) != 1:
            raise PackNotFound(pack_id=want)
        chosen.append((hits[0], hits[0] in indexed))
    return sorted(set(chosen))


def salvage(
    repo: Repository,
    *,
    pack_ids: Sequence[str] | None = None,
    dry_run: bool = False,
    open_pack: OpenPack | None = None,
    progress: Progress | None = None,
) -> SalvageReport:
    """Check packs (all, or ``pack_ids``), salvage the damaged ones and report what is lost.

    The caller holds the writer lock with the catalog reconciled (``repo.writing``).
    With ``dry_run`` nothing is written: the report says what would be recovered and lost.
    """
    report = SalvageReport(dry_run)
    index = repo.index
    if not dry_run:
        report.finished = finish_quarantine(repo)
    opener = open_pack or open_pack_file
    damaged = [
        d
        for pid, is_indexed in _select(repo, pack_ids)
        if (d := _examine(repo, pid, is_indexed, opener, report, progress)) is not None
    ]
    gone = {d.pack_id for d in damaged}

    found: dict[bytes, _Recovered] = {}
    for d in damaged:
        _recover(repo.keys, d, found)
    where = index.locate_many(ChunkId(c) for c in found)
    # Store what no sound pack holds; a chunk a sound pack also holds needs nothing.
    to_store = {cid: r for cid, r in found.items() if cid not in where or where[cid].pack_id in gone}
    for d in damaged:
        claimed = set(d.rows) | _trailer_ids(d.pack_id, d.reads)
        claimed_where = index.locate_many(ChunkId(c) for c in claimed)
        for cid in sorted(claimed):
            if cid in to_store and to_store[cid].origin == d.pack_id:
                d.outcome.chunks_recovered += 1
                d.outcome.bytes_recovered += to_store[cid].entry.raw_size
            elif cid in found or (cid in claimed_where and claimed_where[cid].pack_id not in gone):
                d.outcome.chunks_elsewhere += 1
            else:
                d.outcome.chunks_lost.append(cid.hex())
        # Records only their own headers describe (a pack the catalog never indexed).
        for cid, r in to_store.items():
            if r.origin == d.pack_id and cid not in claimed:
                d.outcome.chunks_recovered += 1
                d.outcome.bytes_recovered += r.entry.raw_size
        report.damaged.append(d.outcome)

    origins = {
        bytes.fromhex(c): (d.pack_id, f"pack {d.pack_id} damaged: {d.reason}")
        for d in damaged
        for c in d.outcome.chunks_lost
    }
    if dry_run:
        held = {cid: r.raw for cid, r in found.items()}
        uses = find_lost(repo, gone_packs=gone, recovered=held)
        report.lost_chunks = len({c for cids in uses.values() for c in cids})
        report.lost_files = lost_files(repo, uses, held)
        return report

    # 1. the damaged files get a second name in quarantine/; recovered chunks go into new sealed
    # packs, and the catalog points at them
    repo.check_writer_lock()
    destinations = {d.pack_id: _link_aside(repo, d.pack_id) for d in damaged if d.reads}
    new_packs: dict[str, list[str]] = {}
    rewritten: set[str] = set()  # a new pack that is some damaged pack's original content, under its name

    def on_seal(pid: PackId, size: int, entries: list[PackEntry]) -> None:
        index.add_pack(pid, size, entries, now_iso(), replace=True)
        report.new_packs.append(pid)
        if pid in gone:
            rewritten.add(pid)
        for e in entries:
            new_packs.setdefault(to_store[e.chunk_id].origin, []).append(pid)

    writer = PackWriter(repo.root, on_seal, repo.config.pack_target_bytes, background=False)
    try:
        for cid, r in to_store.items():
            e = r.entry
            writer.add(ChunkId(cid), e.type, e.codec, e.raw_size, r.sha256, r.stored)
        writer.seal()
    except BaseException:
        writer.abort()
        raise
    finally:
        writer.close()

    # 2. notes; 3. one transaction: damaged packs out of use, lost state set
    when = now_iso()
    for d in damaged:
        if d.pack_id in destinations:
            _write_note(repo, destinations[d.pack_id], d.outcome, sorted(set(new_packs.get(d.pack_id, []))), when)
    uses = find_lost(repo, gone_packs=gone - rewritten)
    rows = [
        QuarantineRow(
            d.pack_id,
            when,
            d.reason,
            d.outcome.chunks_recovered,
            len(d.outcome.chunks_lost),
            None if d.pack_id in destinations and d.pack_id not in rewritten else when,
        )
        for d in damaged
    ]
    repo.check_writer_lock()
    index.retire_packs([q for q in rows if q.pack_id not in rewritten], _lost_rows(uses, origins, when), _pairs(uses))
    for q in rows:
        if q.pack_id in rewritten:  # sound again under its name: only listed as quarantined
            index.add_quarantine(q)

    # 4. the damaged files leave packs/ (their bytes stay in quarantine/)
    for d in damaged:
        dest = destinations.get(d.pack_id)
        if dest is not None:
            _put_aside(repo, d.pack_id, dest)
            d.outcome.quarantined = str(dest.relative_to(repo.root))
            if d.pack_id not in rewritten:
                index.quarantine_moved(d.pack_id, now_iso())

    report.lost_chunks = len({c for cids in uses.values() for c in cids})
    report.lost_files = lost_files(repo, uses)
    return report

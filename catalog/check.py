"""Verify a repository: gather every problem, never stop at the first.

Levels:
- ``metadata``: snapshot documents match their names and the catalog; every pack
  the catalog names exists with its recorded size; every version's manifest is
  readable, every chunk it names is indexed, and the per-chunk SHA-256 values put
  together in manifest order give the digest recorded at capture.
- ``data`` (``read_data``): additionally every selected pack is read end to end:
  its xxh3-128 must equal its name, every record must decode to bytes whose
  xxh3-128 is the chunk id, and the trailer index must match the catalog.
  A pack that fails any of this is read a second time: what fails once and reads
  sound the second time is a storage-health warning (the medium or the path to it
  returned wrong bytes once), not damage; what fails both times is damage.

Chunks that repair found lost (their pack was damaged and quarantined, see
:mod:`catalog.salvage`) are problems of kind ``lost`` naming every version that
needs them, until a snapshot stores them again.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

import xxhash

from catalog import pack
from catalog.assemble import digest_from_catalog, load_manifest
from catalog.errors import ChunkCorrupt, Error, PackCorrupt
from catalog.index import LostChunk
from catalog.repo import Repository, now_iso
from catalog.store import check_chunk
from catalog.types import HOLE_ID

READ_BLOCK: Final = 1 << 20

Progress = Callable[[int], None]


class PackFile(Protocol):
    """One pack file opened for reading."""

    def size(self) -> int: ...

    def read(self, offset: int, size: int) -> bytes: ...

    def close(self) -> None: ...


OpenPack = Callable[[Path], PackFile]  # raises FileNotFoundError for a missing pack


class LocalPackFile:
    """A pack file read with ``pread`` (the only kind there is; tests wrap it to inject read faults)."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_RDONLY)

    def size(self) -> int:
        return os.fstat(self._fd).st_size

    def read(self, offset: int, size: int) -> bytes:
        return os.pread(self._fd, size, offset)

    def close(self) -> None:
        os.close(self._fd)


def open_pack_file(path: Path) -> PackFile:
    return LocalPackFile(path)


@dataclass(frozen=True, slots=True)
class Affected:
    volume: str
    snapshot_id: str
    created_at: str
    path: str


@dataclass(slots=True)
class Problem:
    kind: str  # pack | chunk | manifest | digest | snapshot
    message: str
    pack_id: str | None = None
    chunk_ids: list[str] = field(default_factory=list)
    affected: list[Affected] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "message": self.message,
            "pack_id": self.pack_id,
            "chunk_ids": self.chunk_ids,
            "affected": [
                {"volume": a.volume, "snapshot": a.snapshot_id, "created_at": a.created_at, "path": a.path}
                for a in self.affected
            ],
        }


@dataclass(frozen=True, slots=True)
class StorageWarning:
    """A check that failed on one read of a pack and passed on the other: the stored bytes are sound."""

    pack_id: str
    chunk_id: str | None  # None: the pack as a whole (its header or its xxh3-128)
    detail: str  # what the failing read showed

    @property
    def message(self) -> str:
        what = f"chunk {self.chunk_id[:12]} in pack {self.pack_id[:12]}" if self.chunk_id else f"pack {self.pack_id}"
        return f"{what} failed its check on one read ({self.detail}) and read sound on the other"

    def to_json(self) -> dict[str, Any]:
        return {"pack_id": self.pack_id, "chunk_id": self.chunk_id, "detail": self.detail, "message": self.message}


@dataclass(slots=True)
class VerifyReport:
    level: str
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    storage_health: list[StorageWarning] = field(default_factory=list)
    snapshots: int = 0
    versions: int = 0
    manifests: int = 0
    packs_total: int = 0
    packs_read: int = 0
    bytes_read: int = 0
    chunks_read: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "level": self.level,
            "snapshots": self.snapshots,
            "versions": self.versions,
            "manifests": self.manifests,
            "packs_total": self.packs_total,
            "packs_read": self.packs_read,
            "bytes_read": self.bytes_read,
            "chunks_read": self.chunks_read,
            "problems": [p.to_json() for p in self.problems],
            "warnings": self.warnings,
            "storage_health": [w.to_json() for w in self.storage_health],
        }


@dataclass(slots=True)
class _PackResult:
    pack_id: str
    bytes_read: int = 0
    chunks_read: int = 0
    bad_chunks: dict[str, str] = field(default_factory=dict)  # chunk hex -> why
    pack_problem: str | None = None
    missing: bool = False
    storage_health: list[StorageWarning] = field(default_factory=list)

    @property
    def sound(self) -> bool:
        return self.pack_problem is None and not self.bad_chunks


def _check_pack(
    repo: Repository,
    pack_id: str,
    expected: dict[bytes, tuple[int, int, int, int, int, bytes]],
    open_pack: OpenPack,
) -> _PackResult:
    """Read a pack; when something fails, read it again and keep as damage only what fails both times."""
    first = _read_pack(repo, pack_id, expected, open_pack)
    if first.sound or first.missing:
        return first
    second = _read_pack(repo, pack_id, expected, open_pack)
    res = _PackResult(pack_id, first.bytes_read + second.bytes_read, second.chunks_read, missing=second.missing)
    for chex in sorted(first.bad_chunks.keys() | second.bad_chunks.keys()):
        if chex in first.bad_chunks and chex in second.bad_chunks:
            res.bad_chunks[chex] = second.bad_chunks[chex]
        else:
            why = first.bad_chunks.get(chex) or second.bad_chunks[chex]
            res.storage_health.append(StorageWarning(pack_id, chex, why))
    if first.pack_problem and second.pack_problem:
        res.pack_problem = second.pack_problem
    elif not res.storage_health and (first.pack_problem or second.pack_problem):
        res.storage_health.append(StorageWarning(pack_id, None, str(first.pack_problem or second.pack_problem)))
    return res


def _read_pack(
    repo: Repository,
    pack_id: str,
    expected: dict[bytes, tuple[int, int, int, int, int, bytes]],
    open_pack: OpenPack,
) -> _PackResult:
    """Stream one pack: hash it whole and check each record the catalog expects in it."""
    res = _PackResult(pack_id)
    path = repo.pack_file(pack_id)
    try:
        pf = open_pack(path)
    except FileNotFoundError:
        res.pack_problem = "pack file is missing"
        res.bad_chunks = {cid.hex(): "its pack is missing" for cid in expected}
        res.missing = True
        return res
    whole = xxhash.xxh3_128()
    by_offset = sorted(expected.items(), key=lambda kv: kv[1][1])
    pos = 0
    try:
        size = pf.size()

        def read_to(end: int) -> bytes:
            nonlocal pos
            parts = []
            while pos < end:
                part = pf.read(pos, min(READ_BLOCK, end - pos))
                if not part:
                    break
                whole.update(part)
                parts.append(part)
                pos += len(part)
            res.bytes_read += sum(len(p) for p in parts)
            return b"".join(parts)

        try:
            pack.check_header(pack_id, read_to(pack.HEADER_SIZE))
        except PackCorrupt as exc:
            res.pack_problem = str(exc)
        for cid, (_type, offset, stored_size, raw_size, codec, _sha) in by_offset:
            if offset < pos:
                res.bad_chunks[cid.hex()] = "overlaps another record"
                continue
            read_to(offset - pack.RECORD_HEADER_SIZE)
            header = read_to(offset)
            stored = read_to(offset + stored_size)
            if len(stored) != stored_size or len(header) != pack.RECORD_HEADER_SIZE:
                res.bad_chunks[cid.hex()] = "pack is truncated"
                continue
            magic, _t, h_codec, _r, h_raw, h_stored, h_id, _h_sha = pack.RECORD.unpack(header)
            if (
                magic != pack.RECORD_MAGIC
                or h_id != cid
                or (h_codec, h_raw, h_stored) != (codec, raw_size, stored_size)
            ):
                res.bad_chunks[cid.hex()] = "record header does not match the catalog"
                continue
            try:
                check_chunk(
                    cid,  # type: ignore[arg-type]
                    pack_id,
                    codec,
                    stored,
                    raw_size,
                    keys=repo.keys,  # encrypted: authenticated and decrypted, SHA-256 field checked too
                    type_=_type,
                    sha_field=_sha,
                )
            except ChunkCorrupt as exc:
                res.bad_chunks[cid.hex()] = str(exc.fields["detail"])
            res.chunks_read += 1
        read_to(size)
    finally:
        pf.close()
    if res.pack_problem is None and whole.hexdigest() != pack_id:
        res.pack_problem = "pack content does not match its name (xxh3-128)"
    return res


def verify(
    repo: Repository,
    *,
    read_data: bool = False,
    subset_pct: float | None = None,
    max_duration_s: float | None = None,
    workers: int = 2,
    progress: Progress | None = None,
    open_pack: OpenPack | None = None,
) -> VerifyReport:
    """Check the whole repository at the chosen level; every problem is gathered.

    With ``max_duration_s``, reading stops once the budget is spent (least
    recently verified packs go first, so successive runs still cover everything)
    and the report says how many packs were read. ``open_pack`` opens a pack
    file for the data levels (default: :func:`open_pack_file`).
    """
    opener = open_pack or open_pack_file
    started = time.monotonic()
    index = repo.index
    level = "data" if read_data else ("data-subset" if subset_pct is not None else "metadata")
    if max_duration_s is not None and level == "metadata":
        level = "data-subset"
    report = VerifyReport(level)

    # 1. snapshot documents
    on_disk = dict(repo.iter_snapshot_files())
    snaps = index.snapshots()
    report.snapshots = len(snaps)
    for s in snaps:
        if s.id not in on_disk:
            report.problems.append(Problem("snapshot", f"snapshot {s.id[:12]} has no document on disk"))
            continue
        try:
            repo.load_snapshot_doc(s.id, on_disk[s.id])
        except Error as exc:
            report.problems.append(Problem("snapshot", str(exc)))
    missing_in_catalog = set(on_disk) - {s.id for s in snaps}
    if missing_in_catalog:
        report.warnings.append(
            f"{len(missing_in_catalog)} snapshot document(s) are not in the catalog yet; the next snapshot or "
            "`toolkit repair --rebuild-catalog` indexes them"
        )

    # 2. packs: existence and size, then (optionally) a full read
    packs = index.packs()
    report.packs_total = len(packs)
    bad_chunks: dict[str, str] = {}
    chunk_pack: dict[str, str] = {}
    selected: list[str] = []
    for pack_id, size, _count, _verified in packs:
        actual = repo.pack_size(pack_id)  # -1: missing
        if actual != size:
            why = "pack file is missing" if actual < 0 else f"pack file is {actual} bytes, {size} recorded"
            report.problems.append(Problem("pack", why, pack_id=pack_id))
            for cid in index.chunks_in_pack(pack_id):
                bad_chunks[cid.hex()] = why
                chunk_pack[cid.hex()] = pack_id
            continue
        selected.append(pack_id)
    if subset_pct is not None and not read_data and max_duration_s is None:
        total = sum(size for pid, size, _c, _v in packs if pid in set(selected))
        budget = total * max(0.0, min(100.0, subset_pct)) / 100
        chosen, acc = [], 0
        sizes = {pid: size for pid, size, _c, _v in packs}
        for pid in selected:  # least recently verified first
            if acc >= budget:
                break
            chosen.append(pid)
            acc += sizes[pid]
        selected = chosen
    if level != "metadata":
        verified_ok: list[str] = []

        def one(pid: str) -> _PackResult:
            return _check_pack(repo, pid, index.chunks_in_pack(pid), opener)

        def within_budget() -> bool:
            return max_duration_s is None or time.monotonic() - started < max_duration_s

        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="verify") as pool:
            pending: deque[Future[_PackResult]] = deque()
            todo = iter(selected)
            results: list[_PackResult] = []
            while True:
                while len(pending) < workers * 2 and within_budget():
                    next_pack = next(todo, None)
                    if next_pack is None:
                        break
                    pending.append(pool.submit(one, next_pack))
                if not pending:
                    break
                results.append(pending.popleft().result())
                if progress is not None:
                    progress(results[-1].bytes_read)
            if len(results) < len(selected):
                report.warnings.append(
                    f"time budget reached: {len(results)} of {len(selected)} packs read this run; "
                    "the next runs continue with the least recently verified"
                )
            for res in results:
                report.packs_read += 1
                report.bytes_read += res.bytes_read
                report.chunks_read += res.chunks_read
                report.storage_health += res.storage_health
                if res.pack_problem:
                    report.problems.append(Problem("pack", res.pack_problem, pack_id=res.pack_id))
                for chex, why in res.bad_chunks.items():
                    bad_chunks[chex] = why
                    chunk_pack[chex] = res.pack_id
                if not res.pack_problem and not res.bad_chunks:
                    verified_ok.append(res.pack_id)
        try:
            index.mark_packs_verified(verified_ok, now_iso())
        except (Error, sqlite3.Error) as exc:  # a full or read-only file system: the check itself stands
            report.warnings.append(f"could not record which packs were read ({exc}); the rotation starts over")

    # 3. every version's manifest and digest
    bad_manifests: dict[bytes, str] = {}
    manifest_bad_chunks: dict[bytes, list[str]] = {}
    lost = index.lost_chunks()
    lost_uses = index.lost_uses() if lost else {}
    lost_manifests: dict[bytes, set[bytes]] = {}
    for manifest_id, recorded in index.distinct_manifests():
        report.manifests += 1
        if manifest_id in lost_uses:
            lost_manifests[manifest_id] = lost_uses[manifest_id]
            continue
        if manifest_id.hex() in bad_chunks:
            bad_manifests[manifest_id] = f"manifest is damaged: {bad_chunks[manifest_id.hex()]}"
            continue
        try:
            manifest = load_manifest(index, repo.reader, manifest_id)
            hits = sorted({c.hex() for c in manifest.chunk_ids if c != HOLE_ID and c.hex() in bad_chunks})
            if hits:
                manifest_bad_chunks[manifest_id] = hits
                continue
            got = digest_from_catalog(index, manifest)
        except Error as exc:
            bad_manifests[manifest_id] = str(exc)
            continue
        if got != recorded:
            bad_manifests[manifest_id] = f"reassembles to digest {got[:16]}…, {recorded[:16]}… recorded"
    report.versions = len(index.all_versions())

    def affected_by(mids: list[bytes]) -> list[Affected]:
        return [Affected(*row) for row in index.versions_using_manifests(mids)]

    # Group damaged chunks by pack so the report names the pack and the volumes it affects.
    by_pack: dict[str, list[str]] = {}
    for chex in bad_chunks:
        by_pack.setdefault(chunk_pack[chex], []).append(chex)
    for pid, cids in sorted(by_pack.items()):
        cset = set(cids)
        mids = [m for m, hits in manifest_bad_chunks.items() if cset.intersection(hits)]
        mids += [m for m in bad_manifests if m.hex() in cset]
        reasons = sorted({bad_chunks[c] for c in cids})
        report.problems.append(
            Problem(
                "chunk",
                f"{len(cids)} damaged chunk(s) in pack {pid[:12]}: {'; '.join(reasons)}",
                pack_id=pid,
                chunk_ids=sorted(cids),
                affected=affected_by(mids),
            )
        )
    for mid, why in bad_manifests.items():
        if mid.hex() in bad_chunks:
            continue
        report.problems.append(Problem("manifest", why, chunk_ids=[mid.hex()], affected=affected_by([mid])))
    report.problems += _lost_problems(lost, lost_manifests, affected_by)
    return report


def _lost_problems(
    lost: dict[bytes, LostChunk],
    lost_manifests: dict[bytes, set[bytes]],
    affected_by: Callable[[list[bytes]], list[Affected]],
) -> list[Problem]:
    """One problem per pack the lost chunks were last stored in, naming every version that needs them."""
    by_pack: dict[str, set[bytes]] = {}
    for cids in lost_manifests.values():
        for cid in cids:
            origin = lost[cid].pack_id if cid in lost else None
            by_pack.setdefault(origin or "", set()).add(cid)
    problems = []
    for origin, cids in sorted(by_pack.items()):
        when = min((lost[c].lost_at for c in cids if c in lost), default="")
        where = f"with pack {origin[:12]} (quarantined {when[:19]})" if origin else "(no pack holds them)"
        problems.append(
            Problem(
                "lost",
                f"{len(cids)} chunk(s) lost {where}; a snapshot stores them again from volumes still on "
                "their datastores",
                pack_id=origin or None,
                chunk_ids=sorted(c.hex() for c in cids),
                affected=affected_by([m for m, used in lost_manifests.items() if used & cids]),
            )
        )
    return problems


@dataclass(frozen=True, slots=True)
class FileToCheck:
    volume: str
    snapshot_id: str
    created_at: str
    path: str
    manifest_id: bytes
    digest: str


def verify_files(
    repo: Repository, files: Iterable[FileToCheck], *, workers: int = 2, progress: Progress | None = None
) -> VerifyReport:
    """Reassemble exactly these files through the restore path (every chunk read and checked), writing nothing."""
    from catalog.assemble import restore_file_blocks

    report = VerifyReport("restore-path")
    seen: dict[bytes, str | None] = {}
    versions: set[tuple[str, str]] = set()
    packs: set[str] = set()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="verify") as pool:
        for f in files:
            versions.add((f.volume, f.snapshot_id))
            if f.manifest_id not in seen:
                report.manifests += 1
                try:
                    manifest = load_manifest(repo.index, repo.reader, f.manifest_id)
                    packs.update(loc.pack_id for loc in repo.index.locate_many(manifest.chunk_ids).values())
                    # The restore path with each worker's reused buffer, writing nothing.
                    got = restore_file_blocks(
                        repo.index, repo.reader, manifest, lambda _off, _data: None, pool=pool, progress=progress
                    )
                    report.bytes_read += manifest.file_size
                    report.chunks_read += len(manifest.chunk_ids) - manifest.hole_count
                    seen[f.manifest_id] = None if got == f.digest else f"reassembles to digest {got[:16]}…"
                except Error as exc:
                    seen[f.manifest_id] = str(exc)
            why = seen[f.manifest_id]
            if why is not None:
                report.problems.append(
                    Problem(
                        "file",
                        f"{f.volume}: {f.path}: {why}",
                        chunk_ids=[f.manifest_id.hex()],
                        affected=[Affected(f.volume, f.snapshot_id, f.created_at, f.path)],
                    )
                )
    report.versions = len(versions)
    report.snapshots = len({snap for _volume, snap in versions})
    report.packs_read = report.packs_total = len(packs)
    return report

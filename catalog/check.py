"""Verify a repository: gather every problem, never stop at the first.

Levels:
- ``metadata``: snapshot documents match their names and the catalog; every pack
  the catalog names exists with its recorded size; every version's manifest is
  readable, every chunk it names is indexed, and the per-chunk SHA-256 values put
  together in manifest order give the digest recorded at capture.
- ``data`` (``read_data``): additionally every selected pack is read end to end:
  its xxh3-128 must equal its name, every record must decode to bytes whose
  xxh3-128 is the chunk id, and the trailer index must match the catalog.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final

import xxhash

from catalog import pack
from catalog.assemble import digest_from_catalog, load_manifest
from catalog.errors import ChunkCorrupt, Error, PackCorrupt
from catalog.repo import Repository, now_iso
from catalog.store import check_chunk
from catalog.types import HOLE_ID

READ_BLOCK: Final = 1 << 20

Progress = Callable[[int], None]


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


@dataclass(slots=True)
class VerifyReport:
    level: str
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
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
        }


@dataclass(slots=True)
class _PackResult:
    pack_id: str
    bytes_read: int = 0
    chunks_read: int = 0
    bad_chunks: dict[str, str] = field(default_factory=dict)  # chunk hex -> why
    pack_problem: str | None = None


def _read_pack(
    repo: Repository, pack_id: str, expected: dict[bytes, tuple[int, int, int, int, int, bytes]]
) -> _PackResult:
    """Stream one pack: hash it whole and check each record the catalog expects in it."""
    res = _PackResult(pack_id)
    path = repo.pack_file(pack_id)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        res.pack_problem = "pack file is missing"
        res.bad_chunks = {cid.hex(): "its pack is missing" for cid in expected}
        return res
    whole = xxhash.xxh3_128()
    by_offset = sorted(expected.items(), key=lambda kv: kv[1][1])
    pos = 0
    try:
        size = os.fstat(fd).st_size

        def read_to(end: int) -> bytes:
            nonlocal pos
            parts = []
            while pos < end:
                part = os.pread(fd, min(READ_BLOCK, end - pos), pos)
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
                check_chunk(cid, pack_id, codec, stored, raw_size)  # type: ignore[arg-type]
            except ChunkCorrupt as exc:
                res.bad_chunks[cid.hex()] = str(exc.fields["detail"])
            res.chunks_read += 1
        read_to(size)
    finally:
        os.close(fd)
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
) -> VerifyReport:
    """Check the whole repository at the chosen level; every problem is gathered.

    With ``max_duration_s``, reading stops once the budget is spent (least
    recently verified packs go first, so successive runs still cover everything)
    and the report says how many packs were read.
    """
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
        path = repo.pack_file(pack_id)
        try:
            actual = path.stat().st_size
        except FileNotFoundError:
            actual = -1
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
            return _read_pack(repo, pid, index.chunks_in_pack(pid))

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
            if len(results) < len(selected):
                report.warnings.append(
                    f"time budget reached: {len(results)} of {len(selected)} packs read this run; "
                    "the next runs continue with the least recently verified"
                )
            for res in results:
                report.packs_read += 1
                report.bytes_read += res.bytes_read
                report.chunks_read += res.chunks_read
                if progress is not None:
                    progress(res.bytes_read)
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
    for manifest_id, recorded in index.distinct_manifests():
        report.manifests += 1
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
    return report


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
    from catalog.assemble import restore_file

    report = VerifyReport("restore-path")
    seen: dict[bytes, str | None] = {}
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="verify") as pool:
        for f in files:
            report.versions += 1
            if f.manifest_id not in seen:
                report.manifests += 1
                try:
                    manifest = load_manifest(repo.index, repo.reader, f.manifest_id)
                    got = restore_file(
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
    return report

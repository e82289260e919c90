"""Copy snapshots from one repository into another: an off-site copy, kept up to date incrementally.

Each snapshot the destination lacks is copied volume by volume. A file whose
content the destination already holds (a committed version with the same file
digest) costs nothing; otherwise its manifest is read from the source and each
chunk is looked up in the destination by its SHA-256, so only chunks the
destination lacks are read from the source, checked, and stored again
(compressed, and encrypted when the destination is). This works whether or
not both repositories name chunks the same way (docs/format.md §11: an
encrypted repository keys its chunk ids).

Ordering is a snapshot's (docs/format.md §7): packs are sealed and indexed as
they fill, the snapshot document is written last. A killed copy leaves sealed
packs the next run finds by their SHA-256 and does not send again.

When the destination document is the source's byte for byte (two unencrypted
repositories, the whole snapshot) it has the same snapshot id. Otherwise it
records ``copied_from`` (source repository id and snapshot id), by which the
next run recognises it.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final

from catalog.assemble import load_manifest
from catalog.errors import ChunkCorrupt, ChunkMissing, Error
from catalog.index import SnapshotRow
from catalog.ingest import Ingester
from catalog.manifest import ManifestCorrupt
from catalog.repo import Repository, encode_snapshot_doc, now_iso
from catalog.store import Compressor, PackWriter, identify
from catalog.types import HOLE_ID, ChunkId, ChunkLocation

log = logging.getLogger(__name__)

Event = Callable[[str, dict[str, Any]], None]

READ_WORKERS: Final = 2  # source chunks read, decoded and checked at once (the work releases the GIL)
READ_AHEAD: Final = 8  # chunks in flight per file: memory stays at a few chunks whatever the file size
ID_PROBE: Final = b"appstack-toolkit copy: chunk id scheme probe"  # hashed by both sides to compare schemes


class ChunkSizeMismatch(Error):
    template = "{dest} has chunk size {dest_size}, {source} has {source_size}: copy needs the same chunk size"
    hint = "make the copy in a new place with: toolkit --repo NEW init --chunk-size {source_size}"
    code = "chunk_size_mismatch"


class CopyDestinationMissing(Error):
    template = "no repository at {path} to copy into"
    hint = (
        "create it first, with the source's chunk size: toolkit --repo {path} init --chunk-size {chunk_size}"
        " (add --encryption aes-256-gcm for an encrypted copy)"
    )
    code = "copy_destination_missing"


class CopyToItself(Error):
    template = "--from and --to are the same repository ({path})"
    hint = "copy into another repository, created with: toolkit --repo DEST init"
    code = "copy_to_itself"


class CopyDigestMismatch(Error):
    template = "{path}: the copied chunks give digest {got}, the snapshot recorded {expected}"
    hint = "the source catalog disagrees with its data; run there: toolkit verify --read-data"
    code = "copy_digest_mismatch"
    exit_code = 1


class _SourceProblem(Exception):
    """A volume of the source cannot be read whole: it is not copied, the others are."""

    def __init__(self, error: Error) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(slots=True)
class CopyStats:
    chunks_sent: int = 0  # data chunks stored in the destination
    raw_bytes_sent: int = 0  # their size
    stored_bytes_sent: int = 0  # their size compressed (and encrypted)
    bytes_sent: int = 0  # bytes of the packs written to the destination (chunks, manifests, pack overhead)
    bytes_read: int = 0  # chunk bytes read from the source
    chunks_present: int = 0  # chunks of the copied files the destination already held
    files_copied: int = 0
    files_present: int = 0  # files whose whole content the destination already held


@dataclass(slots=True)
class CopyReport:
    source_id: str
    dest_id: str
    dry_run: bool = False
    same_chunk_ids: bool = True  # False: chunks are stored again under the destination's ids
    snapshots: list[dict[str, Any]] = field(default_factory=list)
    problems: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    stats: CopyStats = field(default_factory=CopyStats)
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    def count(self, status: str) -> int:
        return sum(1 for s in self.snapshots if s["status"] == status)

    def to_json(self) -> dict[str, Any]:
        st = self.stats
        return {
            "ok": self.ok,
            "dry_run": self.dry_run,
            "source": self.source_id,
            "destination": self.dest_id,
            "same_chunk_ids": self.same_chunk_ids,
            "snapshots_copied": self.count("copied") + self.count("partial"),
            "snapshots_skipped": self.count("present"),
            "snapshots_failed": self.count("failed"),
            "snapshots_planned": self.count("planned"),
            "chunks_sent": st.chunks_sent,
            "bytes_sent": st.bytes_sent,
            "raw_bytes_sent": st.raw_bytes_sent,
            "stored_bytes_sent": st.stored_bytes_sent,
            "bytes_read": st.bytes_read,
            "chunks_present": st.chunks_present,
            "files_copied": st.files_copied,
            "files_present": st.files_present,
            "duration_s": round(self.duration_s, 3),
            "snapshots": self.snapshots,
            "problems": self.problems,
            "warnings": self.warnings,
        }


def same_chunk_ids(source: Repository, dest: Repository) -> bool:
    """True when both repositories give the same content the same chunk id (both unencrypted, or one id key)."""
    return identify(source.keys, ID_PROBE)[0] == identify(dest.keys, ID_PROBE)[0]


def wants(vol: dict[str, Any], patterns: Sequence[str]) -> bool:
    """The volume matches one of the globs by name, path, file name or key (as restore selects)."""
    if not patterns:
        return True
    names = (str(vol["name"]), str(vol["path"]), str(vol["path"]).rsplit("/", 1)[-1], str(vol["key"]))
    return any(fnmatch.fnmatchcase(n, p) for p in patterns for n in names)


def _origin(doc: dict[str, Any]) -> tuple[str, str] | None:
    """(repository id, snapshot id) a document was copied from, if it was."""
    origin = doc.get("copied_from")
    if (
        isinstance(origin, dict)
        and isinstance(origin.get("repository"), str)
        and isinstance(origin.get("snapshot"), str)
    ):
        return origin["repository"], origin["snapshot"]
    return None


def copied_volumes(
    source: Repository, dest: Repository, wanted: list[SnapshotRow], warn: Callable[[str], None]
) -> dict[str, set[str]]:
    """Source snapshot id -> keys of its volumes the destination holds in documents copied from it.

    A copy keeps the snapshot's time, so only destination documents at the time of a
    wanted snapshot are read.
    """
    times = {s.created_at for s in wanted}
    out: dict[str, set[str]] = {}
    for row in dest.index.snapshots():
        if row.created_at not in times:
            continue
        try:
            doc = dest.load_snapshot_doc(row.id)
        except Error as exc:
            warn(f"destination snapshot {row.id[:12]} could not be read: {exc}")
            continue
        origin = _origin(doc)
        if origin is not None and origin[0] == source.config.id:
            out.setdefault(origin[1], set()).update(str(v["key"]) for v in doc["volumes"])
    return out


class _Copier:
    """Copies the files of one snapshot's volumes into the destination's open pack writer."""

    def __init__(
        self, source: Repository, dest: Repository, writer: PackWriter | None, stats: CopyStats, emit: Event
    ) -> None:
        self.source = source
        self.dest = dest
        self.writer = writer  # None: a dry run, which only counts
        # One ingester for the whole copy: it forgets the chunks whose packs are sealed and indexed, so a
        # first copy of terabytes holds the ids of the open packs only, not one entry per chunk.
        self.ingester = self._new_ingester()
        self.stats = stats
        self.emit = emit
        self.pool = ThreadPoolExecutor(READ_WORKERS, thread_name_prefix="copy-read")
        # Contents the destination holds whole: file digest -> manifest id (sha256-blocks names the content).
        self.by_digest: dict[str, ChunkId] = {d: ChunkId(m) for m, d in dest.index.distinct_manifests()}
        self._planned: set[bytes] = set()  # dry run: chunks already counted as to be sent

    def _new_ingester(self) -> Ingester | None:
        if self.writer is None:
            return None
        config = self.dest.config
        return Ingester(self.dest.index, self.writer, config.chunk_size, Compressor(config.zstd_level))

    def seal(self) -> None:
        """Make every chunk stored so far durable and indexed."""
        if self.writer is not None:
            self.writer.seal()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        if self.ingester is not None:
            self.ingester.close()

    def _present(self, digest: str, size: int) -> ChunkId | None:
        """The destination manifest of a file with this content, when a committed version uses it, whole."""
        mid = self.by_digest.get(digest)
        if mid is None:
            return None
        info = self.dest.index.manifest_info(mid)
        if info is None or info[0] != size or self.dest.index.has_lost(mid):
            return None
        return mid

    def _plan_file(self, f: dict[str, Any]) -> tuple[list[ChunkLocation | None], list[bytes | None]]:
        """Where each chunk of a source file is stored, and its SHA-256 (None: a hole)."""
        try:
            manifest = load_manifest(self.source.index, self.source.reader, bytes.fromhex(f["manifest"]))
            if manifest.file_size != f["size"] or manifest.chunk_size != self.dest.config.chunk_size:
                raise ManifestCorrupt(manifest_id=f["manifest"], detail="it does not match the snapshot's file")
            where = self.source.index.locate_many({c for c in manifest.chunk_ids if c != HOLE_ID})
        except Error as exc:
            raise _SourceProblem(exc) from None
        except OSError as exc:
            detail = f"cannot read: {exc.strerror or exc}"
            raise _SourceProblem(ManifestCorrupt(manifest_id=f["manifest"], detail=detail)) from None
        locs: list[ChunkLocation | None] = []
        shas: list[bytes | None] = []
        for cid in manifest.chunk_ids:
            if cid == HOLE_ID:
                locs.append(None)
                shas.append(None)
                continue
            loc = where.get(cid)
            if loc is None:
                raise _SourceProblem(ChunkMissing(chunk_id=cid.hex()))
            locs.append(loc)
            shas.append(loc.sha256)
        return locs, shas

    def _read_checked(self, loc: ChunkLocation) -> bytes:
        """A chunk's raw bytes, proved by its id (or its tag) and by the SHA-256 the source catalog records."""
        try:
            raw = self.source.reader.read(loc)
        except Error as exc:
            raise _SourceProblem(exc) from None
        except OSError as exc:
            detail = f"cannot read: {exc.strerror or exc}"
            raise _SourceProblem(
                ChunkCorrupt(chunk_id=loc.chunk_id.hex(), pack_id=loc.pack_id, detail=detail)
            ) from None
        if hashlib.sha256(raw).digest() != loc.sha256:
            detail = "content does not match the SHA-256 its catalog records"
            raise _SourceProblem(ChunkCorrupt(chunk_id=loc.chunk_id.hex(), pack_id=loc.pack_id, detail=detail))
        return raw

    def _fetcher(self, locs: list[ChunkLocation | None]) -> Callable[[Sequence[int]], Iterator[tuple[int, bytes, int]]]:
        def fetch(wanted: Sequence[int]) -> Iterator[tuple[int, bytes, int]]:
            queue: deque[tuple[int, Future[bytes]]] = deque()
            try:
                for i in wanted:
                    loc = locs[i]
                    assert loc is not None  # noqa: S101 (only stored chunks are wanted)
                    queue.append((i, self.pool.submit(self._read_checked, loc)))
                    if len(queue) >= READ_AHEAD:
                        yield self._done(*queue.popleft())
                while queue:
                    yield self._done(*queue.popleft())
            finally:
                for _, fut in queue:
                    fut.cancel()

        return fetch

    def _done(self, i: int, fut: Future[bytes]) -> tuple[int, bytes, int]:
        raw = fut.result()
        self.stats.bytes_read += len(raw)
        self.emit("bytes", {"n": len(raw)})
        return i, raw, len(raw)

    def copy_file(self, f: dict[str, Any]) -> dict[str, Any]:
        """The file's entry for the destination document, its content stored there."""
        present = self._present(f["digest"], f["size"])
        if present is not None:
            self.stats.files_present += 1
            return {**f, "manifest": present.hex()}
        locs, shas = self._plan_file(f)
        if self.ingester is None:
            self._count(locs)
            return dict(f)
        result, _read = self.ingester.ingest_hashed(f["size"], shas, self._fetcher(locs), f["path"])
        st = result.stats
        if result.digest != f["digest"]:
            raise _SourceProblem(CopyDigestMismatch(path=f["path"], got=result.digest, expected=f["digest"]))
        self.stats.files_copied += 1
        self.stats.chunks_sent += st.new_chunks
        self.stats.raw_bytes_sent += st.new_raw_bytes
        self.stats.stored_bytes_sent += st.new_stored_bytes
        self.stats.chunks_present += st.chunks - st.holes - st.new_chunks
        log.debug("copied %s: %d of %d chunks sent", f["path"], st.new_chunks, st.chunks - st.holes)
        self.by_digest[f["digest"]] = result.manifest_id
        return {**f, "manifest": result.manifest_id.hex()}

    def _count(self, locs: list[ChunkLocation | None]) -> None:
        """Dry run: count the chunks the destination lacks, at their stored size in the source."""
        for loc in locs:
            if loc is None:
                continue
            if loc.chunk_id in self._planned or self.dest.index.chunk_by_sha256(loc.sha256, loc.raw_size) is not None:
                self.stats.chunks_present += 1
                continue
            self._planned.add(loc.chunk_id)
            self.stats.chunks_sent += 1
            self.stats.raw_bytes_sent += loc.raw_size
            self.stats.stored_bytes_sent += loc.stored_size
        self.stats.files_copied += 1


def _volume_label(vol: dict[str, Any], snap_id: str) -> str:
    return f"{vol['key']}@{snap_id[:12]}"


def copy(
    source: Repository,
    dest: Repository,
    *,
    as_of: str | None = None,
    patterns: Sequence[str] = (),
    dry_run: bool = False,
    event: Event | None = None,
) -> CopyReport:
    """Copy into ``dest`` the snapshots of ``source`` it lacks (taken at or before ``as_of``; only the volumes
    ``patterns`` select). Unless ``dry_run``, the caller holds the destination's writer lock."""
    started = time.monotonic()
    emit = event or (lambda _kind, _data: None)
    report = CopyReport(source.config.id, dest.config.id, dry_run=dry_run)
    if source.config.chunk_size != dest.config.chunk_size:
        raise ChunkSizeMismatch(
            source=source.root,
            dest=dest.root,
            source_size=source.config.chunk_size,
            dest_size=dest.config.chunk_size,
        )

    def warn(text: str) -> None:
        report.warnings.append(text)
        emit("message", {"text": text})

    have = dest.index.snapshot_ids()
    wanted = []
    for snap in source.index.snapshots():
        if as_of is not None and snap.created_at > as_of:
            continue
        if snap.id in have:  # copied before as it is, byte for byte
            report.snapshots.append(_entry(snap, "present", snap.id, 0))
        else:
            wanted.append(snap)
    copied = copied_volumes(source, dest, wanted, warn)
    todo: list[tuple[SnapshotRow, set[str]]] = []  # the snapshot, and the keys of its volumes already copied
    sizes: dict[str, int] = {}
    for snap in wanted:
        done = copied.get(snap.id, set())
        rows = [v for v in source.index.versions_of_snapshot(snap.id) if v.volume_key not in done]
        rows = [v for v in rows if wants({"name": v.name, "path": v.path, "key": v.volume_key}, patterns)]
        if not rows and (patterns or snap.id in copied):
            if snap.id in copied:
                report.snapshots.append(_entry(snap, "present", None, 0))
            continue
        todo.append((snap, done))
        sizes.update({f"{v.volume_key}@{snap.id[:12]}": v.size for v in rows})
    emit("plan", {"volumes": len(sizes), "sizes": sizes})
    report.same_chunk_ids = same_chunk_ids(source, dest)
    log.info("copy: %d snapshot(s) to copy, %s chunk ids", len(todo), "same" if report.same_chunk_ids else "other")

    writer: PackWriter | None = None
    packs_before = dest.index.stored_totals()[0]
    if not dry_run:
        # In an object store each sealed pack is uploaded before it is indexed, as in a snapshot.
        writer = dest.pack_writer(lambda pid, size, entries: dest.index.add_pack(pid, size, entries, now_iso()))
    copier = _Copier(source, dest, writer, report.stats, emit)
    try:
        for snap, done in todo:
            _copy_snapshot(source, dest, copier, snap, done, patterns, report, emit)
        copier.seal()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        copier.close()
        if writer is not None:
            writer.close()
    if not dry_run:
        report.stats.bytes_sent = dest.index.stored_totals()[0] - packs_before
    else:
        report.stats.bytes_sent = report.stats.stored_bytes_sent
    report.duration_s = time.monotonic() - started
    return report


def _entry(snap: SnapshotRow, status: str, copy_id: str | None, volumes: int) -> dict[str, Any]:
    return {"snapshot": snap.id, "created_at": snap.created_at, "status": status, "copy": copy_id, "volumes": volumes}


def _copy_snapshot(
    source: Repository,
    dest: Repository,
    copier: _Copier,
    snap: SnapshotRow,
    done: set[str],
    patterns: Sequence[str],
    report: CopyReport,
    emit: Event,
) -> None:
    try:
        doc = source.load_snapshot_doc(snap.id)
    except Error as exc:
        report.problems.append(
            {"snapshot": snap.id, "created_at": snap.created_at, "volume": None, "code": exc.code, "error": str(exc)}
        )
        report.snapshots.append(_entry(snap, "failed", None, 0))
        return
    selected = [v for v in doc["volumes"] if str(v["key"]) not in done and wants(v, patterns)]
    origin = _origin(doc)
    if origin is not None and origin[0] == dest.config.id and origin[1] in dest.index.snapshot_ids():
        # It was copied from the destination in the first place.
        for vol in selected:
            emit("volume", {"key": _volume_label(vol, snap.id), "state": "present", "reason": None})
        report.snapshots.append(_entry(snap, "present", origin[1], 0))
        return
    volumes: list[dict[str, Any]] = []
    failed = 0
    for vol in selected:
        label = _volume_label(vol, snap.id)
        size = sum(int(f["size"]) for f in vol["files"])
        emit("volume_start", {"key": label, "size": size})
        try:
            files = [copier.copy_file(f) for f in vol["files"]]
        except _SourceProblem as problem:
            failed += 1
            err = problem.error
            report.problems.append(
                {
                    "snapshot": snap.id,
                    "created_at": snap.created_at,
                    "volume": vol["key"],
                    "code": err.code,
                    "error": str(err),
                }
            )
            emit("volume", {"key": label, "state": "failed", "reason": str(err)})
            continue
        volumes.append({**vol, "files": files})
        emit("volume", {"key": label, "state": "planned" if copier.writer is None else "copied", "reason": None})
        st = report.stats
        emit("stats", {"new_bytes": st.raw_bytes_sent, "stored_bytes": st.stored_bytes_sent})
    if selected and not volumes:
        report.snapshots.append(_entry(snap, "failed", None, 0))
        return
    status = "partial" if failed else "copied"
    if copier.writer is None:
        report.snapshots.append(_entry(snap, "planned", None, len(volumes)))
        return
    copy_doc: dict[str, Any] = {**doc, "volumes": volumes}
    if encode_snapshot_doc(copy_doc, dest.keys)[0] != snap.id:
        # Not the source's document byte for byte (another key, or some volumes only): say where it came from.
        copy_doc["copied_from"] = {"repository": source.config.id, "snapshot": snap.id}
    copier.seal()  # every pack the document names is durable and indexed before it
    copy_id = dest.write_snapshot(copy_doc)
    report.snapshots.append(_entry(snap, status, copy_id, len(volumes)))

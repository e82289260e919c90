"""The disaster job: put volumes back as they were at a point in time."""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from catalog.assemble import load_manifest, restore_file
from catalog.chunker import FileDigest, is_zero, iter_offsets, zero_sha256
from catalog.errors import Error
from catalog.index import FileRow, VersionRow
from catalog.repo import Repository
from toolkit.errors import BadTime, DestinationExists, NothingToRestore, SnapshotAmbiguous, SnapshotNotFound
from toolkit.transports.base import Transport
from toolkit.transports.local import in_hole, safe_relpath

log = logging.getLogger(__name__)

Event = Callable[[str, dict[str, Any]], None]
STREAMS = 2  # volumes restored at once
INFLIGHT_PER_STREAM = 3  # chunks read ahead per volume: memory stays near the single-stream figure


def parse_as_of(value: str, repo: Repository) -> str:
    """An ISO 8601 time (local time when no zone is given), ``now``/``latest``, or a snapshot id → UTC ISO."""
    text = value.strip()
    if text.lower() in ("now", "latest"):
        return datetime.now(UTC).isoformat(timespec="microseconds")
    looks_like_id = len(text) >= 6 and all(c in "0123456789abcdef" for c in text.lower())
    if looks_like_id:
        matches = [s for s in repo.index.snapshots() if s.id.startswith(text.lower())]
        if len(matches) > 1:
            raise SnapshotAmbiguous(ref=value, count=len(matches))
        if matches:
            return matches[0].created_at
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        if looks_like_id:
            raise SnapshotNotFound(ref=value) from None
        raise BadTime(value=value) from None
    if when.tzinfo is None:
        when = when.astimezone()  # local time, as the operator typed it
    return when.astimezone(UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True, slots=True)
class PlannedVolume:
    version: VersionRow
    files: list[FileRow]
    note: str | None = None


@dataclass(slots=True)
class RestoreReport:
    as_of: str
    dry_run: bool
    volumes: list[dict[str, Any]] = field(default_factory=list)
    bytes_written: int = 0
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        done = ("restored", "in place", "planned", "registered", "not present")
        return all(v["status"] in done for v in self.volumes)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "as_of": self.as_of,
            "dry_run": self.dry_run,
            "bytes_written": self.bytes_written,
            "duration_s": round(self.duration_s, 3),
            "volumes": self.volumes,
        }


def plan_restore(
    repo: Repository,
    as_of: str,
    patterns: list[str],
    datastores: list[str] | None = None,
    *,
    previous: int | None = None,
    one_destination: bool = True,
) -> tuple[list[PlannedVolume], list[str]]:
    """The version of each selected volume to restore, and notes on volumes left out.

    With ``previous`` N, each volume's Nth distinct version before its newest one
    (captured at or before ``as_of``) is chosen instead: 1 is the version before the
    last change. ``one_destination`` refuses a plan where two volumes (replicas on
    different datastores) would land on the same path; verification, which writes
    nothing, turns it off.
    """
    index = repo.index
    plan: list[PlannedVolume] = []
    notes: list[str] = []
    for v in index.versions_as_of(as_of):
        if datastores and v.datastore not in datastores:
            continue
        if patterns and not any(
            fnmatch.fnmatchcase(x, p)
            for p in patterns
            for x in (v.name, v.path, v.path.rsplit("/", 1)[-1], v.volume_key)
        ):
            continue
        if v.state == "deleted":
            notes.append(f"{v.volume_key}: deleted before that time (snapshot {v.snapshot_id[:12]})")
            continue
        chosen, note = v, None
        if v.state in ("failed", "skipped"):
            good = index.newest_with_files(v.volume_key, as_of)
            if good is None:
                notes.append(f"{v.volume_key}: never captured successfully by that time ({v.reason})")
                continue
            chosen, note = good, f"capture at {v.created_at} {v.state}; using {good.created_at}"
        if previous:
            older = _previous_version(repo, chosen, as_of, previous)
            if older is None:
                notes.append(f"{v.volume_key}: has fewer than {previous + 1} distinct versions")
                continue
            chosen, note = older, f"{previous} version(s) before the newest"
        plan.append(PlannedVolume(chosen, index.files(chosen.version_id), note))
    if not plan:
        when = f"{as_of[:19].replace('T', ' ')} UTC"
        what = f"{', '.join(patterns)} as of {when}" if patterns else f"anything as of {when}"
        snaps = index.snapshots()
        if snaps and min(s.created_at for s in snaps) > as_of:
            what += f" (the oldest snapshot is from {min(s.created_at for s in snaps)[:19].replace('T', ' ')} UTC)"
        elif notes:
            what += f" ({len(notes)} volume(s) deleted or never captured)"
        raise NothingToRestore(detail=what)
    paths: dict[str, str] = {}
    for p in plan if one_destination else []:
        for f in p.files:
            other = paths.setdefault(f.path, p.version.volume_key)
            if other != p.version.volume_key:
                raise PathClash(path=p.version.path, a=other, b=p.version.volume_key)
    return plan, notes


def _previous_version(repo: Repository, newest: VersionRow, as_of: str, n: int) -> VersionRow | None:
    """The version ``n`` content changes before ``newest`` (versions with the same files are one)."""
    seen: list[tuple[tuple[str, bytes], ...]] = []
    for v in reversed(repo.index.history(newest.volume_key)):
        if v.created_at > as_of or v.volume_key != newest.volume_key:
            continue
        files = tuple(sorted((f.path, f.manifest_id) for f in repo.index.files(v.version_id)))
        if not files:
            continue
        if not seen or seen[-1] != files:  # unchanged captures in between are the same version
            seen.append(files)
            if len(seen) == n + 1:
                return v
    return None


class PathClash(Error):
    template = "{a} and {b} (copies on two datastores, e.g. storage-group replicas) would both go to {path}"
    hint = "pick the datastore to restore from with --datastore NAME"
    code = "path_clash"


def restore(
    repo: Repository,
    as_of: str,
    dest: Transport,
    *,
    patterns: list[str] | None = None,
    datastores: list[str] | None = None,
    dry_run: bool = False,
    overwrite: bool = False,
    previous: int | None = None,
    protected: Mapping[str, str] | None = None,
    workers: int = 2,
    event: Event | None = None,
) -> RestoreReport:
    """Restore the plan into ``dest``.

    ``protected`` maps descriptor paths on the destination to a reason they must
    not be replaced (the manager reports them attached to desktops): such a
    volume is only restored if nothing different is in the way, even with
    ``overwrite``.
    """
    started = time.monotonic()
    emit = event or (lambda _k, _d: None)
    plan, notes = plan_restore(repo, as_of, patterns or [], datastores, previous=previous)
    report = RestoreReport(as_of, dry_run)
    for note in notes:
        report.volumes.append({"key": note.split(":", 1)[0], "status": "not present", "reason": note.split(": ", 1)[1]})
    chunk_size = repo.config.chunk_size
    lock = threading.Lock()

    def one(item: PlannedVolume, entry: dict[str, Any], pool: ThreadPoolExecutor) -> None:
        v = item.version
        emit("volume_start", {"key": v.volume_key, "size": entry["size"]})
        try:
            in_place = 0
            for f in item.files:
                safe_relpath(f.path)
                existing = dest.stat(f.path)
                if existing is not None:
                    if existing.size == f.size and landed_digest(dest, f.path, f.size, chunk_size) == f.digest:
                        in_place += 1
                        emit("bytes", {"n": f.size})
                        continue
                    if protected and v.path in protected:
                        raise DestinationInUse(path=f"{dest.describe()}/{v.path}", reason=protected[v.path])
                    if not overwrite:
                        raise DestinationExists(path=f"{dest.describe()}/{f.path}")
                dest.clean_partials(f.path)
                manifest = load_manifest(repo.index, repo.reader, f.manifest_id)
                with dest.open_write(f.path, f.size, f.mtime_ns) as write_at:
                    # Each chunk is checked against its id as it is read; the digest is taken from what landed.
                    restore_file(
                        repo.index,
                        repo.reader,
                        manifest,
                        write_at,
                        pool=pool,
                        progress=lambda n: emit("bytes", {"n": n}),
                        digest=False,
                        inflight=INFLIGHT_PER_STREAM,
                    )
                landed = landed_digest(dest, f.path, f.size, chunk_size)
                if landed != f.digest:
                    dest.remove(f.path)
                    raise RestoredDigestMismatch(path=f.path, got=landed, expected=f.digest)
                with lock:
                    report.bytes_written += f.size
            entry["status"] = "in place" if in_place == len(item.files) else "restored"
        except Error as exc:
            entry["status"] = "failed"
            entry["error"] = str(exc)
        except OSError as exc:  # the destination refused a write (disk full, permissions, I/O error)
            entry["status"] = "failed"
            entry["error"] = f"writing to {dest.describe()} failed: {exc.strerror or exc or type(exc).__name__}"
        with lock:
            emit("volume", entry)

    entries = []
    for item in plan:
        v = item.version
        entry: dict[str, Any] = {
            "key": v.volume_key,
            "datastore": v.datastore,
            "path": v.path,
            "avm": v.avm,
            "name": v.name,
            "kind": v.kind,
            "snapshot": v.snapshot_id,
            "captured_at": v.created_at,
            "size": sum(f.size for f in item.files),
            "files": [f.path for f in item.files],
            "note": item.note,
        }
        report.volumes.append(entry)
        if dry_run:
            entry["status"] = "planned"
            emit("volume", entry)
        else:
            entries.append((item, entry))
    # Two volumes at a time: one's final fsync overlaps the other's reading and writing.
    with (
        ThreadPoolExecutor(max_workers=workers, thread_name_prefix="restore") as pool,
        ThreadPoolExecutor(max_workers=STREAMS, thread_name_prefix="volume") as volumes,
    ):
        for fut in [volumes.submit(one, item, entry, pool) for item, entry in entries]:
            fut.result()
    report.duration_s = time.monotonic() - started
    return report


class DestinationInUse(Error):
    template = "{path} is in use ({reason}); it is never replaced while desktops use it"
    hint = "restore beside it: --to another datastore or directory, then switch the assignments in the manager"
    code = "destination_in_use"
    exit_code = 1


class RestoredDigestMismatch(Error):
    template = "{path}: what landed has digest {got}, {expected} was recorded; the file was removed"
    hint = "run: toolkit verify --read-data"
    code = "restored_digest_mismatch"
    exit_code = 1


def landed_digest(dest: Transport, path: str, size: int, chunk_size: int) -> str:
    """The file digest of what is at ``path`` on the destination.

    Computed where the file is when the transport can (an SSH host), else read
    back through the transport; all-zero blocks are recognised without hashing.
    """
    on_host = getattr(dest, "file_digest", None)
    if on_host is not None:
        return str(on_host(path, chunk_size))
    ranges_of = getattr(dest, "data_ranges", None)
    ranges = ranges_of(path) if ranges_of is not None else None
    digest = FileDigest()
    with dest.open_read(path) as read_at:
        for offset, length in iter_offsets(size, chunk_size):
            if ranges is not None and in_hole(ranges, offset, length):
                digest.add_block_sha256(zero_sha256(length))  # a hole reads as zeros: no need to read it
                continue
            block = read_at(offset, length)
            digest.add_block_sha256(zero_sha256(length) if is_zero(block) else hashlib.sha256(block).digest())
    return digest.hexdigest()

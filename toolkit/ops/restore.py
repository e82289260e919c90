"""The disaster job: put volumes back as they were at a point in time."""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import logging
import posixpath
import secrets
import string
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from catalog.assemble import load_manifest, restore_file, restore_file_blocks
from catalog.chunker import FileDigest, is_zero, iter_offsets, zero_sha256
from catalog.errors import Error
from catalog.index import FileRow, VersionRow
from catalog.manifest import Manifest
from catalog.repo import Repository
from catalog.types import HOLE_ID
from toolkit.errors import BadTime, DestinationExists, NothingToRestore, SnapshotAmbiguous, SnapshotNotFound
from toolkit.transports.base import Transport
from toolkit.transports.local import LocalTransport, in_hole, safe_relpath
from toolkit.vmdk import (
    DESCRIPTOR_MAX_BYTES,
    Renaming,
    encode_name,
    metadata_guid,
    renamed_extent,
    rewrite_extent_names,
    rewrite_metadata,
    rewrite_package_json,
)

if TYPE_CHECKING:
    from toolkit.ops.vsan import VsanDestination

log = logging.getLogger(__name__)

Event = Callable[[str, dict[str, Any]], None]
STREAMS = 2  # volumes restored at once
INFLIGHT_PER_STREAM = 3  # chunks read ahead per volume: memory stays near the single-stream figure
RESTORE_WORKERS = 4  # chunk workers shared by the streams: while one waits for the disk, another decodes
BLOCKS_INFLIGHT = 8  # chunks queued per volume onto a local disk (each worker decodes into its own buffer)
VERIFY_LANDED: Final = ("written", "readback")  # what a local restore compares with the recorded digest
SPOT_CHECK_BLOCKS: Final = 8  # blocks of each file read back from the storage when the written bytes are hashed


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
    landed_check: str = "readback"  # how each landed file was proved: written (buffers + spot reads) or readback

    @property
    def ok(self) -> bool:
        done = ("restored", "in place", "planned", "registered", "not present")
        return all(v["status"] in done for v in self.volumes)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "as_of": self.as_of,
            "dry_run": self.dry_run,
            "landed_check": self.landed_check,
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
    rename: Callable[[VersionRow], NewName] | None = None,
    workers: int = RESTORE_WORKERS,
    event: Event | None = None,
    vsan: VsanDestination | None = None,
    verify_landed: str = "written",
) -> RestoreReport:
    """Restore the plan into ``dest``.

    ``protected`` maps descriptor paths on the destination to a reason they must
    not be replaced (the manager reports them attached to desktops): such a
    volume is only restored if nothing different is in the way, even with
    ``overwrite``. ``rename`` gives each volume a new name (and folder) to be
    written under, beside the live one (see :func:`plan_landings`). With ``vsan`` (``dest`` is a vSAN
    datastore) each volume goes through its staging datastore instead (toolkit/ops/vsan.py).
    """
    if verify_landed not in VERIFY_LANDED:
        raise ValueError(f"verify_landed must be one of {', '.join(VERIFY_LANDED)}")
    started = time.monotonic()
    emit = event or (lambda _k, _d: None)
    plan, notes = plan_restore(repo, as_of, patterns or [], datastores, previous=previous)
    report = RestoreReport(as_of, dry_run)
    if isinstance(dest, LocalTransport) and vsan is None:  # elsewhere the digest is read back or taken on the host
        report.landed_check = verify_landed
    for note in notes:
        report.volumes.append({"key": note.split(":", 1)[0], "status": "not present", "reason": note.split(": ", 1)[1]})
    chunk_size = repo.config.chunk_size
    lock = threading.Lock()

    def one(item: PlannedVolume, entry: dict[str, Any], pool: ThreadPoolExecutor) -> None:
        v = item.version
        emit("volume_start", {"key": v.volume_key, "size": entry["size"]})
        if vsan is not None:  # onto vSAN: written and checked on a staging datastore, then copied in
            written = vsan.restore_volume(
                repo,
                item,
                entry,
                lambda: plan_landings(repo, item, entry, pool),
                pool=pool,
                emit=emit,
                overwrite=overwrite,
                protected=protected,
            )
            with lock:
                report.bytes_written += written
                emit("volume", entry)
            return
        try:
            in_place = 0
            target = entry["path"]  # the descriptor as it lands (a new name when renamed)
            for land in plan_landings(repo, item, entry, pool):
                f = land.source
                safe_relpath(land.path)
                existing = dest.stat(land.path)
                if existing is not None:
                    if existing.size == land.size and landed_digest(dest, land.path, land.size, chunk_size) == (
                        land.digest
                    ):
                        in_place += 1
                        emit("bytes", {"n": land.size})
                        continue
                    if protected and target in protected:
                        raise DestinationInUse(path=f"{dest.describe()}/{target}", reason=protected[target])
                    if not overwrite:
                        raise DestinationExists(path=f"{dest.describe()}/{land.path}")
                dest.clean_partials(land.path)
                if land.data is not None:  # rewritten for a new name: small, written from memory
                    with dest.open_write(land.path, land.size, f.mtime_ns) as write_at:
                        if land.data:
                            write_at(0, land.data)
                    emit("bytes", {"n": land.size})
                    landed = landed_digest(dest, land.path, land.size, chunk_size)
                    if landed != land.digest:
                        dest.remove(land.path)
                        raise RestoredDigestMismatch(path=land.path, got=landed, expected=land.digest)
                    with lock:
                        report.bytes_written += land.size
                    continue
                manifest = load_manifest(repo.index, repo.reader, f.manifest_id)
                if isinstance(dest, LocalTransport):
                    restore_local(repo, dest, land, manifest, pool, emit, verify_landed)
                    with lock:
                        report.bytes_written += f.size
                    continue
                with dest.open_write(land.path, f.size, f.mtime_ns) as write_at:
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
                landed = landed_digest(dest, land.path, f.size, chunk_size)
                if landed != f.digest:
                    dest.remove(land.path)
                    raise RestoredDigestMismatch(path=land.path, got=landed, expected=f.digest)
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

    emit("plan", {"volumes": len(plan), "sizes": {p.version.volume_key: sum(f.size for f in p.files) for p in plan}})
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
            "sidecars": sorted({f.role for f in item.files} & set(SIDECAR_ROLES)),
            "warnings": sidecar_warnings(item),
        }
        if rename is not None:
            apply_rename(entry, item, rename(v))
        report.volumes.append(entry)
        if dry_run:
            entry["status"] = "planned"
            emit("volume", entry)
        else:
            entries.append((item, entry))
    if rename is not None:
        check_targets([e for e in report.volumes if "files" in e])
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
    template = (
        "{path} is in use ({reason}); it is never replaced while desktops use it: restore beside it "
        "with --rename '{{name}} restored' (add --register --restore-assignments), then move the desktops "
        "to it with toolkit switch"
    )
    hint = "see 'A corrupted AppStack' in docs/runbook.md"
    code = "destination_in_use"
    exit_code = 1


class RestoredDigestMismatch(Error):
    template = "{path}: what landed has digest {got}, {expected} was recorded; the file was removed"
    hint = "run: toolkit verify --read-data"
    code = "restored_digest_mismatch"
    exit_code = 1


def restore_local(
    repo: Repository,
    dest: LocalTransport,
    land: Landing,
    manifest: Manifest,
    pool: ThreadPoolExecutor,
    emit: Event,
    verify_landed: str,
) -> None:
    """One file onto a local file system, checked before it is renamed into place.

    The workers write chunks at their offsets themselves (direct I/O where the file system
    takes it). ``verify_landed`` says what the recorded digest is compared with: ``written``,
    the bytes each worker handed to the storage, hashed as it handed them over, plus a few
    blocks read back from the storage after fsync; ``readback``, the whole file read back from
    the storage after fsync (docs/architecture.md, "What a restore checks").
    """
    f = land.source
    chunk_size = repo.config.chunk_size
    expected, spots = spot_check_blocks(manifest, SPOT_CHECK_BLOCKS if verify_landed == "written" else 0)
    wrote: dict[int, bytes] = {}

    def keep(offset: int, sha: bytes) -> None:
        if offset in spots:
            wrote[offset] = sha

    with dest.open_blocks(land.path, f.size, f.mtime_ns) as blocks:
        blocks.reserve(data_ranges(manifest))
        written = restore_file_blocks(
            repo.index,
            repo.reader,
            manifest,
            blocks.write_block,
            pool=pool,
            inflight=BLOCKS_INFLIGHT,
            progress=lambda n: emit("bytes", {"n": n}),
            digest=verify_landed == "written",
            on_block=keep,
        )
        if blocks.bytes_accepted != expected:  # every byte of every data chunk, and nothing else, went in
            raise OSError(errno.EIO, f"{blocks.bytes_accepted} of {expected} bytes of {land.path} were written")
        blocks.sync()
        landed = written
        if verify_landed != "written" or any(
            blocks.block_sha256(offset, spots[offset], chunk_size) != sha for offset, sha in wrote.items()
        ):
            landed = blocks.read_digest(chunk_size, pool, BLOCKS_INFLIGHT)
        if landed != land.digest:
            raise RestoredDigestMismatch(path=land.path, got=landed, expected=land.digest)


def data_ranges(manifest: Manifest) -> Iterator[tuple[int, int]]:
    """(offset, length) of each run of data chunks of a file (the rest is holes), in order."""
    run: tuple[int, int] | None = None  # (start, end) of the run being extended
    for offset, size, cid in manifest.entries():
        if cid == HOLE_ID:
            continue
        if run is not None and run[1] == offset:
            run = (run[0], offset + size)
            continue
        if run is not None:
            yield run[0], run[1] - run[0]
        run = (offset, offset + size)
    if run is not None:
        yield run[0], run[1] - run[0]


def spot_check_blocks(manifest: Manifest, count: int) -> tuple[int, dict[int, int]]:
    """(bytes of data, {offset: size}): the first, the last and ``count - 2`` random data chunks.

    Every data chunk when there are ``count`` or fewer; none when ``count`` is 0. The random
    ones are a reservoir sample, so a file of any size costs ``count`` entries.
    """
    rng = secrets.SystemRandom()
    total = seen = 0
    first: tuple[int, int] | None = None
    last: tuple[int, int] | None = None
    middle: list[tuple[int, int]] = []
    room = max(count - 2, 0)
    for offset, size, cid in manifest.entries():
        if cid == HOLE_ID:
            continue
        total += size
        if first is None:
            first = (offset, size)
            continue
        if last is not None:  # the previous "last" is a middle chunk after all
            seen += 1
            if len(middle) < room:
                middle.append(last)
            elif room and (pick := rng.randrange(seen)) < room:
                middle[pick] = last
        last = (offset, size)
    if count == 0 or first is None:
        return total, {}
    return total, dict([first, *middle, *([last] if last else [])])


def landed_digest(dest: Transport, path: str, size: int, chunk_size: int) -> str:
    """The file digest of what is at ``path`` on the destination.

    Computed where the file is when the transport can (an SSH host), by a thread
    per core on a local datastore, else read back through the transport; all-zero
    blocks are recognised without hashing.
    """
    on_host = getattr(dest, "file_digest", None)
    if on_host is not None:
        return str(on_host(path, chunk_size))
    if isinstance(dest, LocalTransport):
        return dest.threaded_digest(path, chunk_size)
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


# --- restoring beside: a volume under a new name ---------------------------------------------------

RENAME_FIELDS: Final = ("name", "date")  # placeholders --rename understands
SIDECAR_MAX_BYTES: Final = 1 << 20  # sidecars are a few KiB; a bigger one is copied as it is, never parsed
SIDECAR_ROLES: Final = ("metadata", "json")
MANAGED_KINDS: Final = ("appstack", "package", "writable")


class BadRename(Error):
    template = "--rename {template!r}: {detail}"
    hint = "use {{name}} (the volume's name) and {{date}} (its capture date): --rename '{{name}} restored {{date}}'"
    code = "bad_rename"


class RenameClash(Error):
    template = "{a} and {b} would both be written to {path}"
    hint = "put {{name}} in the --rename template, or restore the volumes one at a time"
    code = "rename_clash"


class ReassembledDigestMismatch(Error):
    template = "{path}: the stored bytes reassemble to digest {got}, {expected} was recorded"
    hint = "run: toolkit verify --read-data"
    code = "reassembled_digest_mismatch"
    exit_code = 1


@dataclass(frozen=True, slots=True)
class NewName:
    """Where a volume restored under a new name goes: its folder on the destination and its display name."""

    folder: str
    name: str


def check_targets(entries: list[dict[str, Any]]) -> None:
    """Refuse a plan where two volumes would write the same file (a rename template without {name})."""
    seen: dict[str, str] = {}
    for e in entries:
        for path in e["files"]:
            other = seen.setdefault(path, e["key"])
            if other != e["key"]:
                raise RenameClash(path=path, a=other, b=e["key"])


def rename_template(template: str) -> Callable[[VersionRow], NewName]:
    """``--rename TEMPLATE`` as a function of the version: same folder, a name made from the template."""
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as exc:
        raise BadRename(template=template, detail=str(exc)) from None
    unknown = sorted(f for f in fields if f not in RENAME_FIELDS)
    if unknown:
        raise BadRename(template=template, detail=f"unknown placeholder {{{unknown[0]}}}")
    if not template.format(name="", date="").strip():
        raise BadRename(template=template, detail="the name would be empty")

    def place(v: VersionRow) -> NewName:
        return NewName(posixpath.dirname(v.path), template.format(name=v.name, date=v.created_at[:10]).strip())

    return place


def new_volume_guid(v: VersionRow, new_path: str) -> str:
    """A GUID for a renamed copy, so the manager imports it as a volume of its own beside the live one.

    Derived from the version and the new path: a re-run writes the same sidecars, so it finds them in place.
    """
    return "{" + str(uuid.uuid5(uuid.NAMESPACE_URL, f"toolkit-restore:{v.snapshot_id}:{v.volume_key}:{new_path}")) + "}"


def target_path(f: FileRow, old_descriptor: str, new_descriptor: str) -> str:
    """Where a file of a volume goes when its descriptor ``old_descriptor`` becomes ``new_descriptor``."""
    old_dir, old_file = posixpath.split(old_descriptor)
    new_dir, new_file = posixpath.split(new_descriptor)
    old_base, new_base = old_file.removesuffix(".vmdk"), new_file.removesuffix(".vmdk")
    rel = f.path[len(old_dir) + 1 :] if old_dir and f.path.startswith(old_dir + "/") else f.path
    if f.path == old_descriptor:
        name = new_file
    elif rel.startswith(old_file):  # '<base>.vmdk.metadata'
        name = new_file + rel[len(old_file) :]
    elif f.role == "extent":
        name = renamed_extent(rel, old_base, new_base)
    elif rel.startswith(old_base):  # '<base>.json'
        name = new_base + rel[len(old_base) :]
    else:
        name = f"{new_base}-{rel}"
    return posixpath.join(new_dir, name) if new_dir else name


def apply_rename(entry: dict[str, Any], item: PlannedVolume, new: NewName) -> None:
    """Point a plan entry at the new name: descriptor path, every file's path, display name, GUID."""
    v = item.version
    base = encode_name(new.name)
    new_path = posixpath.join(new.folder, base + ".vmdk") if new.folder else base + ".vmdk"
    safe_relpath(new_path)
    if new_path == v.path:
        raise BadRename(template=new.name, detail=f"{v.volume_key} would keep its own name")
    entry.update(
        renamed_from=v.path,
        path=new_path,
        name=new.name,
        guid=new_volume_guid(v, new_path),
        files=[target_path(f, v.path, new_path) for f in item.files],
    )


def sidecar_warnings(item: PlannedVolume) -> list[str]:
    """What a manager will make of a version captured without its sidecars."""
    v = item.version
    roles = {f.role for f in item.files}
    if not item.files or (v.kind not in MANAGED_KINDS and not v.avm):
        return []
    if not roles & set(SIDECAR_ROLES):
        return ["captured without sidecars (.vmdk.metadata, .json): the manager may import it as Legacy"]
    if v.kind == "package" and "json" not in roles:
        return ["captured without its .json sidecar: the manager may not re-associate it with its application"]
    return []


@dataclass(frozen=True, slots=True)
class Landing:
    """One file to write: what it comes from, where it goes, and the digest that must land."""

    source: FileRow
    path: str
    digest: str
    data: bytes | None = None  # rewritten content, written from memory; None: streamed from the store

    @property
    def size(self) -> int:
        return self.source.size if self.data is None else len(self.data)


def holds_guid(data: bytes, guid: str) -> bool:
    return bool(guid) and guid.strip("{}").lower() in data.decode("utf-8", errors="replace").lower()


def digest_of(data: bytes, chunk_size: int) -> str:
    """The file digest (sha256-blocks) of bytes held in memory."""
    digest = FileDigest()
    for offset, length in iter_offsets(len(data), chunk_size):
        digest.add_block_sha256(hashlib.sha256(data[offset : offset + length]).digest())
    return digest.hexdigest()


def read_stored(repo: Repository, f: FileRow, pool: ThreadPoolExecutor) -> bytes:
    """A small stored file reassembled in memory and checked against its recorded digest."""
    buf = bytearray(f.size)

    def write_at(offset: int, data: bytes) -> None:
        buf[offset : offset + len(data)] = data

    restore_file(repo.index, repo.reader, load_manifest(repo.index, repo.reader, f.manifest_id), write_at, pool=pool)
    data = bytes(buf)
    got = digest_of(data, repo.config.chunk_size)
    if got != f.digest:
        raise ReassembledDigestMismatch(path=f.path, got=got, expected=f.digest)
    return data


def plan_landings(
    repo: Repository, item: PlannedVolume, entry: dict[str, Any], pool: ThreadPoolExecutor
) -> list[Landing]:
    """The files of one plan entry as they land: unchanged, or renamed with their references rewritten.

    A renamed copy keeps its data extents byte for byte (checked against the recorded digests).
    Its descriptor names the new extent files, and its sidecars carry the new display name and
    GUID (where they hold them) and the new file name; those rewritten files are checked
    against the digest of the rewritten content, reported in ``entry["rewritten"]``.
    """
    if "renamed_from" not in entry:
        return [Landing(f, f.path, f.digest) for f in item.files]
    v = item.version
    old_path, new_path = v.path, entry["path"]
    old_base = posixpath.basename(old_path).removesuffix(".vmdk")
    new_base = posixpath.basename(new_path).removesuffix(".vmdk")
    small = {
        f.path: read_stored(repo, f, pool)
        for f in item.files
        if (f.role == "descriptor" and f.size < DESCRIPTOR_MAX_BYTES)
        or (f.role in SIDECAR_ROLES and f.size <= SIDECAR_MAX_BYTES)
    }
    metadata = next((small[f.path] for f in item.files if f.role == "metadata" and f.path in small), b"")
    renaming = Renaming(
        old_file=posixpath.basename(old_path),
        new_file=posixpath.basename(new_path),
        old_name=v.name,
        new_name=entry["name"],
        old_guid=str((v.avm or {}).get("guid") or "") or metadata_guid(metadata),
        new_guid=entry.get("guid") or "",
    )
    chunk_size = repo.config.chunk_size
    landings: list[Landing] = []
    rewritten: list[dict[str, str]] = []
    guid_written = False
    for f, path in zip(item.files, entry["files"], strict=True):
        data: bytes | None = None
        original = small.get(f.path)
        if original is not None and f.role == "descriptor":
            data = rewrite_extent_names(f.path, original, lambda n: renamed_extent(n, old_base, new_base))
        elif original is not None:
            if f.role == "metadata":
                data = rewrite_metadata(original, renaming)
            else:
                data = rewrite_package_json(original, renaming)
                if data is None:
                    entry.setdefault("warnings", []).append(f"{f.path} is not JSON: copied unchanged")
                    data = original
            guid_written = guid_written or holds_guid(data, renaming.new_guid)
        if data is None:
            landings.append(Landing(f, path, f.digest))
            continue
        digest = digest_of(data, chunk_size)
        landings.append(Landing(f, path, digest, data))
        rewritten.append({"path": path, "from": f.path, "recorded_digest": f.digest, "digest": digest})
    if not guid_written:
        entry["guid"] = ""  # no sidecar holds a GUID: the manager decides the copy's identity
    entry["rewritten"] = rewritten
    return landings

"""The nightly job: capture every volume of the given datastores."""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import logging
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from catalog.errors import Error, StoreFull
from catalog.index import VersionRow
from catalog.ingest import Ingester, IngestStats
from catalog.repo import Repository, now_iso
from catalog.store import Compressor
from toolkit.layout import FoundVolume, find_volumes
from toolkit.transports.base import Transport
from toolkit.transports.local import in_hole

if TYPE_CHECKING:
    from toolkit.avm import AvmVolume

log = logging.getLogger(__name__)

Event = Callable[[str, dict[str, Any]], None]


PROVISIONING_STATUSES = frozenset({"provisioning", "creating", "unprovisioned", "reserved", "canceled"})


class Stager(Protocol):
    """Reads volumes whose extents are vSAN objects through a copy on a staging datastore (toolkit/ops/vsan.py)."""

    via: str  # recorded with each volume read this way, e.g. "staging:ds1"
    warnings: list[str]  # staged copies it could not delete; the snapshot takes them over

    def capture(
        self,
        vol: FoundVolume,
        source: Source,
        read: Callable[[FoundVolume, Source], list[dict[str, Any]]],
        prev_files: Mapping[str, dict[str, Any]],
        emit: Event,
    ) -> list[dict[str, Any]]: ...


class WritableSwitch(Protocol):
    """What policy writables = "disable" asks of the manager (toolkit.avm.AvmClient)."""

    def set_writable_enabled(self, volume_id: int, enabled: bool) -> None: ...

    def writable(self, volume_id: int) -> AvmVolume: ...


@dataclass(frozen=True, slots=True)
class Source:
    datastore: str  # the name volumes are recorded under
    transport: Transport
    site: str = ""
    # What the site's App Volumes Manager lists on this datastore, by descriptor path;
    # None when no manager is configured (then nothing is flagged unmanaged).
    managed: Mapping[str, AvmVolume] | None = None
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    writables: str = "skip"  # skip | copy | disable
    host_hashing: bool = True  # let an SSH host hash extents so only missing blocks travel
    # Volumes whose extents are vSAN objects are read through a staged copy; None: they are skipped.
    stager: Stager | None = None
    manager: WritableSwitch | None = None  # disables a writable while it is read (writables = "disable")

    def wants(self, vol: FoundVolume) -> bool:
        names = (vol.name, vol.path, vol.key, vol.path.rsplit("/", 1)[-1])
        hit = any(fnmatch.fnmatchcase(n, p) for p in self.include for n in names)
        return hit and not any(fnmatch.fnmatchcase(n, p) for p in self.exclude for n in names)


def skip_reason(vol: FoundVolume, record: AvmVolume | None, policy: str) -> str | None:
    """Why a volume must not be read now (it is retried at the next snapshot), or None."""
    if record is None:
        return None
    if record.status.lower() in PROVISIONING_STATUSES:
        return f"the manager reports it {record.status}; retried at the next snapshot"
    if record.kind == "writable" and record.attached and policy in ("skip", "disable"):
        return f"writable volume attached to a desktop (policy writables = {policy})"
    return None


class WritableInUse(Error):
    template = "writable volume {name} was attached to a desktop as it was being disabled; retried at the next snapshot"
    hint = "it is enabled again; it is captured once it is detached when a snapshot runs"
    code = "writable_in_use"
    exit_code = 1


class WritableNotDisabled(Error):
    template = "writable volume {name} was not read: the manager cannot be asked to disable it"
    hint = 'check the site\'s [manager] settings; writables = "disable" never copies a writable it did not disable'
    code = "writable_not_disabled"
    exit_code = 1


@contextlib.contextmanager
def writable_disabled(
    record: AvmVolume | None, source: Source, entry: dict[str, Any], warnings: list[str]
) -> Iterator[None]:
    """With writables = "disable": the writable is disabled in the manager while it is read, then enabled again.

    It is enabled again whatever happens to the read (failure, interrupt); a writable the
    manager already had disabled is left as it was.
    """
    manager = source.manager
    if record is None or record.kind != "writable" or source.writables != "disable" or record.status == "disabled":
        yield
        return
    if manager is None:
        raise WritableNotDisabled(name=record.name)
    manager.set_writable_enabled(record.id, False)
    try:
        if manager.writable(record.id).attached:  # a desktop took it between the listing and the disable
            raise WritableInUse(name=record.name)
        entry["consistency"] = "disabled in the manager while copied"
        yield
    finally:
        try:
            manager.set_writable_enabled(record.id, True)
        except Error as exc:
            warnings.append(
                f"writable volume {record.name} (id {record.id}) is still disabled in the manager: {exc}; "
                "enable it there"
            )


@dataclass(slots=True)
class SnapshotReport:
    snapshot_id: str = ""
    created_at: str = ""
    volumes: list[dict[str, Any]] = field(default_factory=list)
    stats: IngestStats = field(default_factory=IngestStats)
    duration_s: float = 0.0
    pack_bytes_added: int = 0
    warnings: list[str] = field(default_factory=list)

    def count(self, state: str) -> int:
        return sum(1 for v in self.volumes if v["state"] == state)

    @property
    def ok(self) -> bool:
        return not self.warnings and not any(v["state"] in ("failed", "skipped") for v in self.volumes)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "snapshot": self.snapshot_id,
            "created_at": self.created_at,
            "duration_s": round(self.duration_s, 3),
            "warnings": self.warnings,
            "volumes": [
                {k: v[k] for k in ("key", "name", "kind", "state", "reason")}
                | {"size": sum(f["size"] for f in v["files"])}
                for v in self.volumes
            ],
            "stats": {
                "files_read": self.stats.files,
                "bytes_read": self.stats.read_bytes,
                "wire_bytes": self.stats.wire_bytes,
                "chunks": self.stats.chunks,
                "holes": self.stats.holes,
                "new_chunks": self.stats.new_chunks,
                "new_raw_bytes": self.stats.new_raw_bytes,
                "new_stored_bytes": self.stats.new_stored_bytes,
                "pack_bytes_added": self.pack_bytes_added,
            },
        }


def _file_entry(path: str, role: str, size: int, mtime_ns: int, manifest: str, digest: str) -> dict[str, Any]:
    return {
        "path": path,
        "role": role,
        "size": size,
        "mtime_ns": mtime_ns,
        "manifest": manifest,
        "digest": digest,
    }


def _capture(
    vol: FoundVolume,
    source: Source,
    previous: VersionRow | None,
    prev_files: dict[str, dict[str, Any]],
    ingester: Ingester,
    stats: IngestStats,
    rehash: bool,
    on_bytes: Callable[[int], None],
) -> list[dict[str, Any]]:
    files = []
    for vf in vol.files:
        info = vf.info
        prev = prev_files.get(info.path)
        if (
            prev
            and not rehash
            and prev["size"] == info.size
            and prev["mtime_ns"] == info.mtime_ns
            and not ingester.needs_reading(bytes.fromhex(prev["manifest"]))
        ):
            files.append(_file_entry(info.path, vf.role, info.size, info.mtime_ns, prev["manifest"], prev["digest"]))
            continue
        open_hashed = getattr(source.transport, "open_hashed", None)
        if open_hashed is not None and vf.role == "extent" and source.host_hashing:
            with open_hashed(info.path, ingester.chunk_size) as (blocks, fetch):
                if blocks.size != info.size:
                    raise VolumeChanged(path=info.path)
                result, wire = ingester.ingest_hashed(blocks.size, blocks.sha256s, fetch, info.path)
            result.stats.wire_bytes += wire + 33 * len(blocks.sha256s)
            on_bytes(info.size)
        else:
            ranges_of = getattr(source.transport, "data_ranges", None)
            ranges = ranges_of(info.path) if ranges_of is not None and vf.role == "extent" else None
            is_hole = None if ranges is None else (lambda off, n, r=ranges: in_hole(r, off, n))
            with source.transport.open_read(info.path) as read_at:
                result = ingester.ingest(read_at, info.size, info.path, on_bytes, is_hole)
        after = source.transport.stat(info.path)
        if after is None or (after.size, after.mtime_ns) != (info.size, info.mtime_ns):
            raise VolumeChanged(path=info.path)
        stats.add(result.stats)
        files.append(_file_entry(info.path, vf.role, info.size, info.mtime_ns, result.manifest_id.hex(), result.digest))
    return files


class VolumeChanged(Error):
    template = "{path} changed while it was read"
    hint = "the volume is being written (provisioning or an update); it is retried at the next snapshot"
    code = "volume_changed"
    exit_code = 1


def snapshot(
    repo: Repository,
    sources: list[Source],
    *,
    rehash: bool = False,
    event: Event | None = None,
    workers: int = 2,
    warnings: list[str] | None = None,
) -> SnapshotReport:
    """Capture every volume of ``sources`` into one new snapshot; the caller holds the writer lock.

    ``warnings`` found while building the sources (a manager or datastore that could not
    be reached) are recorded in the snapshot document with the run's own.
    """
    started = time.monotonic()
    report = SnapshotReport(warnings=list(warnings or []))
    emit = event or (lambda _kind, _data: None)
    index = repo.index
    packs_before = index.stored_totals()[0]
    # A repository in an object store uploads each sealed pack before it is indexed.
    writer = repo.pack_writer(lambda pid, size, entries: index.add_pack(pid, size, entries, now_iso()))
    ingester = Ingester(index, writer, repo.config.chunk_size, Compressor(repo.config.zstd_level), workers=workers)
    try:
        for source in sources:
            latest = index.latest_versions(source.datastore)
            try:
                found = [v for v in find_volumes(source.datastore, source.transport) if source.wants(v)]
            except (Error, OSError) as exc:
                # Not reachable: record nothing for it, so its volumes are not taken for deleted.
                detail = str(exc) if isinstance(exc, Error) else (exc.strerror or type(exc).__name__)
                report.warnings.append(f"datastore {source.datastore} could not be listed: {detail}")
                emit("message", {"text": report.warnings[-1]})
                continue
            if not found and any(v.state != "deleted" for v in latest.values()):
                # Everything gone at once is far more often an unmounted or emptied path than a real
                # deletion; recording it would make every volume look deleted.
                report.warnings.append(
                    f"datastore {source.datastore} could not be listed: it is empty now but held "
                    f"{sum(v.state != 'deleted' for v in latest.values())} volume(s); is it mounted?"
                )
                emit("message", {"text": report.warnings[-1]})
                continue
            sizes = {v.key: sum(f.info.size for f in v.files) for v in found}
            emit("datastore", {"datastore": source.datastore, "volumes": len(found), "sizes": sizes})
            seen = set()
            unmatched = dict(source.managed or {})
            for vol in found:
                seen.add(vol.key)
                previous = latest.get(vol.key)
                if previous is not None and previous.state == "deleted":
                    previous = None
                entry = _volume_entry(vol, source)
                record = unmatched.pop(vol.path, None)
                if record is not None:
                    entry.update(avm=record.to_json(), name=record.name or vol.name, managed=True)
                    if record.kind == "writable" and record.attached and source.writables == "copy":
                        entry["consistency"] = "crash-inconsistent: attached while copied"
                if vol.error:
                    entry.update(state="failed", reason=vol.error)
                    report.volumes.append(entry)
                    emit("volume", entry)
                    continue
                why = skip_reason(vol, record, source.writables)
                if why is None and vol.objects and source.stager is None:
                    why = (
                        f"its data is a vSAN object ({vol.objects[0]}), read only through a staged copy: "
                        f"set vsan = true and staging = DATASTORE for datastore {source.datastore}"
                    )
                if why is not None:
                    entry.update(state="skipped", reason=why)
                    report.volumes.append(entry)
                    emit("volume", entry)
                    continue
                prev_files = {}
                if previous is not None:
                    # A previous run that failed or skipped has no files: compare with the last good capture.
                    good = previous if index.files(previous.version_id) else None
                    good = good or index.newest_with_files(vol.key, previous.created_at)
                    if good is not None:
                        prev_files = {
                            f.path: _file_entry(f.path, f.role, f.size, f.mtime_ns, f.manifest_id.hex(), f.digest)
                            for f in index.files(good.version_id)
                        }
                emit("volume_start", {"key": vol.key, "size": sum(f.info.size for f in vol.files)})
                read = functools.partial(
                    _capture,
                    previous=previous,
                    prev_files=prev_files,
                    ingester=ingester,
                    stats=report.stats,
                    rehash=rehash,
                    on_bytes=lambda n: emit("bytes", {"n": n}),
                )
                try:
                    with writable_disabled(record, source, entry, report.warnings):
                        if vol.objects and source.stager is not None:  # vSAN: toolkit/ops/vsan.py
                            entry["captured_via"] = source.stager.via
                            files = source.stager.capture(vol, source, read, prev_files, emit)
                        else:
                            files = read(vol, source)
                except StoreFull:
                    raise
                except Error as exc:
                    entry.update(state="skipped" if isinstance(exc, WritableInUse) else "failed", reason=str(exc))
                    report.volumes.append(entry)
                    emit("volume", entry)
                    continue
                except OSError as exc:
                    entry.update(state="failed", reason=f"cannot read: {exc.strerror or exc}")
                    report.volumes.append(entry)
                    emit("volume", entry)
                    continue
                finally:
                    if source.stager is not None and source.stager.warnings:
                        report.warnings += source.stager.warnings
                        source.stager.warnings.clear()
                entry["files"] = files
                st = report.stats
                emit(
                    "stats",
                    {"read_bytes": st.read_bytes, "new_bytes": st.new_raw_bytes, "stored_bytes": st.new_stored_bytes},
                )
                if not prev_files:
                    entry["state"] = "new"
                elif {(f["path"], f["manifest"]) for f in files} == {(p, f["manifest"]) for p, f in prev_files.items()}:
                    entry["state"] = "unchanged"
                else:
                    entry["state"] = "changed"
                report.volumes.append(entry)
                emit("volume", entry)
            for path, record in sorted(unmatched.items()):
                missing: dict[str, Any] = {
                    "key": f"{source.datastore}/{path}",
                    "datastore": source.datastore,
                    "path": path,
                    "name": record.name,
                    "kind": record.kind,
                    "state": "failed",
                    "managed": True,
                    "reason": f"the manager lists it on [{source.datastore}] {path}, but the file is not there",
                    "avm": record.to_json(),
                    "files": [],
                    "site": source.site,
                }
                seen.add(missing["key"])
                report.volumes.append(missing)
                emit("volume", missing)
            for key, prev in sorted(latest.items()):
                if key not in seen and prev.state != "deleted":
                    gone: dict[str, Any] = {
                        "key": key,
                        "datastore": prev.datastore,
                        "path": prev.path,
                        "name": prev.name,
                        "kind": prev.kind,
                        "state": "deleted",
                        "reason": "no longer on the datastore",
                        "avm": None,
                        "files": [],
                    }
                    report.volumes.append(gone)
                    emit("volume", gone)
        writer.seal()
    except BaseException:
        writer.abort()
        raise
    finally:
        ingester.close()
    report.created_at = now_iso()
    doc = {
        "created_at": report.created_at,
        "hostname": socket.gethostname(),
        "sources": [s.datastore for s in sources],
        "warnings": report.warnings,
        "stats": {},
        "volumes": report.volumes,
    }
    report.pack_bytes_added = index.stored_totals()[0] - packs_before
    report.duration_s = time.monotonic() - started
    doc["stats"] = report.to_json()["stats"] | {"duration_s": round(report.duration_s, 3)}
    report.snapshot_id = repo.write_snapshot(doc)
    return report


def _volume_entry(vol: FoundVolume, source: Source) -> dict[str, Any]:
    return {
        "site": source.site,
        "managed": None if source.managed is None else False,
        "key": vol.key,
        "datastore": vol.datastore,
        "path": vol.path,
        "name": vol.name,
        "kind": vol.kind,
        "state": "",
        "reason": None,
        "avm": None,
        "files": [],
    }
